"""Time to first step of the peer-benchmarked families, clocked as the peer benchmarks clock it, in fresh
processes; two source trees alternating (this branch and ``git archive main``) give ratios per round.

    .venv/bin/python -m bench.bench_first_step                       # this tree, every family, one round
    mkdir -p /tmp/main && git archive main | tar -x -C /tmp/main
    .venv/bin/python -m bench.bench_first_step --trees=/tmp/main,. --rounds=3 --families=mmoe,dien
    TF_USE_LEGACY_KERAS=1 .venv-peers/bin/python -m bench.bench_first_step --families=dien,peer_dien --rounds=3
    .venv/bin/python -m bench.bench_first_step --trees=/tmp/main,.,.@model.fused_embeddings=true --families=mmoe

Each run is a fresh process whose ``tfrecsys`` and ``bench`` packages are the tree's (the same environment):
it imports TensorFlow, builds the data, then clocks what ``bench_multitask_peers.train_ours`` (mmoe, ple,
shared_bottom, esmm: Census-Income, the census configs, batch 256) and ``bench_sequence_peers.run_one``
(dien: our DIEN + auxiliary loss on the Taobao protocol; peer_dien: DeepCTR 0.9.4's DIEN + auxiliary loss there,
in TF1 graph mode as that bench runs it, so only from ``.venv-peers``) clock: model construction + compile,
``create_variables`` (ours), the input set-up and the first ``fit`` call, up to Keras' first
``on_train_batch_end``.
It prints one JSON line per run: CPU seconds (``time.process_time``, every thread: what a loaded machine
changes least) and wall seconds to the first step, the CPU seconds of each phase (``fit`` split at the train
function's first call: what Keras does before it, for DIEN mostly putting the in-memory arrays into tensors,
and the first call: tracing the train function, grappler, instantiation, the step; DeepCTR's graph-mode ``fit``
is one phase), the traced train function's nodes
(its graph and function library) and the 1-minute load; then per family the median over rounds and, with two
trees, the ratio second ÷ first of each round. Census-Income is preprocessed into ``--data_dir`` by the first
run that needs it; families whose dataset is absent from ../shared/datasets are skipped with a message.
``--xla_compilations``: each run also reports the XLA compilations up to its first step (count, and each one's
LLVM time as XLA's CPU compiler logs it; the child then logs at INFO level, a little extra work), e.g. DIEN's
compiled GRU loops. A tree may carry config overrides for the census families after ``@``
(``.@model.fused_embeddings=true``, several as ``@k=v@k2=v2``; values ``true``/``false``, Python literals,
else strings): one tree then appears as several variants, each its own column of the rounds.
"""

import argparse
import ast
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CENSUS_FAMILIES = ("mmoe", "ple", "shared_bottom", "esmm")
FAMILIES = (*CENSUS_FAMILIES, "dien", "peer_dien")
DATASETS = {"census": os.path.join(ROOT, os.pardir, "shared", "datasets", "census-income-kdd"),
            "taobao": os.path.join(ROOT, os.pardir, "shared", "datasets", "taobao-user-behavior",
                                   "UserBehavior_head84474.csv")}


def split_tree(spec: str) -> tuple:
    """``"path@k=v@k2=v2"`` → ``(absolute path, {k: v, k2: v2})``: a tree and its config overrides."""
    path, *assignments = spec.split("@")
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"tree {spec!r}: override {assignment!r} is not key=value")
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
        overrides[key] = value
    return os.path.abspath(path), overrides


def first_step(spec: str, family: str, data_dir: str) -> dict:
    """Runs in the child: ``family``'s first step from the code of the tree of ``spec`` (see the module
    docstring)."""
    tree, overrides = split_tree(spec)
    if overrides and family not in CENSUS_FAMILIES:
        raise ValueError(f"tree {spec!r}: config overrides apply to the census families {CENSUS_FAMILIES} only")
    sys.path.insert(0, tree)
    import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    if not os.path.realpath(tfrecsys.__file__).startswith(os.path.realpath(tree) + os.sep):
        raise RuntimeError(f"tfrecsys came from {tfrecsys.__file__}, not from the tree {tree}")
    from tfrecsys.train.loop import create_variables

    phases, first = {}, {}

    class FirstStep(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not first:
                first.update(wall=time.perf_counter() - started[0], cpu=time.process_time() - started[1])
                phase("first train call", called[0])
                self.model.stop_training = True

    def phase(name, since):
        now = time.process_time()
        phases[name] = round(now - since, 3)
        return now

    called = []

    def clock_first_call(model, since: str):
        """Splits ``fit`` at the train function's first call: ``since`` (what ``fit`` did before it: Keras' input
        set-up, callbacks) and the first call (tracing the train function, grappler, instantiation, the step)."""
        make_train_function = model.make_train_function

        def clocked_make_train_function(force=False):
            function = make_train_function(force=force)

            def first_call(iterator):
                if not called:
                    called.append(phase(since, fit_started[0]))
                return function(iterator)

            return first_call

        model.make_train_function = clocked_make_train_function

    if family == "dien":
        from bench.bench_sequence_peers import BATCH, BENCH_DEFAULTS, LEARNING_RATE, our_model, taobao_rows
        from tfrecsys.train.adam import Adam

        train, _, vocabulary = taobao_rows(DATASETS["taobao"])
        inputs = {k: v for k, v in train.items() if k not in ("label", "seq_length")}
        inputs["hist_item_id_length"] = train["seq_length"]
        tf.keras.utils.set_random_seed(0)
        started = time.perf_counter(), time.process_time()
        # The peer bench's model with its default settings (ours, chosen on validation), as run_one builds it.
        model = our_model("dien", vocabulary, BENCH_DEFAULTS)
        model.compile(optimizer=Adam(LEARNING_RATE), steps_per_execution=20)
        cpu = phase("construction + compile", started[1])
        create_variables(model, model.schema)
        fit_started = [phase("create_variables", cpu)]
        # Keras' set-up of the in-memory arrays is inside fit here, as in the peer benchmark.
        clock_first_call(model, "fit before the first call (the arrays into tensors)")
        model.fit(inputs, {"label": train["label"]}, batch_size=BATCH, epochs=1, verbose=0, shuffle=True,
                  callbacks=[FirstStep()])
    elif family == "peer_dien":
        # DeepCTR 0.9.4's DIEN + aux as bench_sequence_peers.run_one clocks it (TF1 graph mode, its shim, the
        # legacy Adam): construction + compile, then fit on the same arrays up to the first step.
        from bench.bench_sequence_peers import BATCH, LEARNING_RATE, deepctr_dien_shim, peer_model, taobao_rows

        train, _, vocabulary = taobao_rows(DATASETS["taobao"])
        deepctr_dien_shim()
        tf.compat.v1.disable_eager_execution()
        tf.keras.utils.set_random_seed(0)
        started = time.perf_counter(), time.process_time()
        model = peer_model("dien", vocabulary, 0)
        model.compile(tf.keras.optimizers.legacy.Adam(LEARNING_RATE), "binary_crossentropy")
        fit_started = [phase("construction + compile", started[1])]
        called.append(fit_started[0])  # graph mode has no train function to split fit at
        model.fit({k: train[k] for k in model.input_names}, train["label"], batch_size=BATCH, epochs=1, verbose=0,
                  shuffle=True, callbacks=[FirstStep()])
    else:
        from bench.bench_multitask_peers import CONFIGS, census_rows, in_memory_batches
        from tfrecsys.config import load_config
        from tfrecsys.features.schema import FeatureSchema
        from tfrecsys.train.loop import build_and_compile

        _, train, _ = census_rows(data_dir)
        config = load_config(os.path.join(CONFIGS, f"{family}.py:census"),
                             {"data.dir": data_dir, "train.ema_momentum": 0.0, **overrides})
        schema = FeatureSchema.from_config(config.features)
        inputs, labels = [f.name for f in schema.inputs], [f.name for f in schema.labels]
        tf.keras.utils.set_random_seed(0)
        started = time.perf_counter(), time.process_time()
        model = build_and_compile(config, schema)
        cpu = phase("construction + compile", started[1])
        create_variables(model, schema)
        cpu = phase("create_variables", cpu)
        batches = in_memory_batches({k: train[k] for k in inputs}, {k: train[k] for k in labels},
                                    config.train.batch_size, 0)
        fit_started = [phase("input set-up", cpu)]
        clock_first_call(model, "fit before the first call")
        model.fit(batches, epochs=1, verbose=0, callbacks=[FirstStep()])
    nodes = None
    if family != "peer_dien":
        [function] = model.train_tf_function._list_all_concrete_functions()
        graph = function.graph.as_graph_def()
        nodes = len(graph.node) + sum(len(f.node_def) for f in graph.library.function)
    return {"tree": spec, "family": family, "cpu_s": round(first["cpu"], 3), "wall_s": round(first["wall"], 3),
            "phases_cpu_s": phases, "train_function_nodes": nodes, "load_1min": round(os.getloadavg()[0], 1)}


# XLA's CPU compiler logs each compilation's LLVM time (VLOG 1 of cpu_compiler.cc).
XLA_COMPILATION = re.compile(r"Compiling \[\S+\] for CPU using JIT time: ([0-9.]+) (ms|s)")


def run(tree: str, family: str, data_dir: str, timeout: float, xla_compilations: bool = False) -> dict:
    """``first_step`` in a fresh process (working directory: this repository, for the datasets' paths)."""
    env = dict(os.environ)
    if xla_compilations:
        env.update(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="cpu_compiler=1")
    done = subprocess.run([sys.executable, os.path.abspath(__file__), f"--one={family}", f"--tree={tree}",
                           f"--data_dir={data_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{family} from {tree} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if xla_compilations:  # the child prints its JSON after its first step: every compilation logged is before it
        result["xla_llvm_ms"] = [round(float(value) * (1000.0 if unit == "s" else 1.0), 1)
                                 for value, unit in XLA_COMPILATION.findall(done.stderr)]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default=ROOT,
                        help="comma-separated source trees (repository roots) to time, alternating in each round; "
                             "ratios are of each tree to the first; path@key=value adds config overrides (census "
                             "families)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {FAMILIES}")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; each runs every family from every tree")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "runs", "data", "census"),
                        help="preprocessed Census-Income (written by the first run that needs it)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to each run")
    parser.add_argument("--xla_compilations", action="store_true",
                        help="also report each run's XLA compilations to its first step (count, LLVM ms each)")
    parser.add_argument("--one", default="", help="internal: time this family in this process, print JSON")
    parser.add_argument("--tree", default="", help="internal: the source tree of --one (with its @overrides)")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(first_step(args.tree, args.one, os.path.abspath(args.data_dir))))
        return 0
    trees = []
    for spec in args.trees.split(","):
        path, _ = split_tree(spec)
        trees.append(path + spec[len(spec.split("@")[0]):])
    families = args.families.split(",")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--families: unknown {unknown}; known: {FAMILIES}")
    for name, path in DATASETS.items():
        needs = [f for f in families if f.endswith("dien") == (name == "taobao")]
        if needs and not os.path.exists(path):
            print(f"skipping {needs}: {path} is absent (see data/ for where to download it)")
            families = [f for f in families if f not in needs]
    results = {}
    for round_ in range(args.rounds):
        for family in families:
            for tree in trees:
                result = run(tree, family, os.path.abspath(args.data_dir), args.timeout, args.xla_compilations)
                print(json.dumps({"round": round_, **result}), flush=True)
                results.setdefault((family, tree), []).append(result)
    print("\n| family | tree | CPU s per round | wall s per round | median CPU s | ÷ first tree, per round | load "
          "| median CPU s per phase |")
    print("|---|---|---|---|---:|---|---|---|")
    for family in families:
        for tree in trees:
            runs = results[(family, tree)]
            ratios = [r["cpu_s"] / base["cpu_s"] for r, base in zip(runs, results[(family, trees[0])])]
            cells = [" / ".join(f"{r['cpu_s']:.2f}" for r in runs), " / ".join(f"{r['wall_s']:.2f}" for r in runs),
                     f"{statistics.median(r['cpu_s'] for r in runs):.2f}", " / ".join(f"{x:.2f}" for x in ratios),
                     " / ".join(str(r["load_1min"]) for r in runs),
                     "; ".join(f"{name} {statistics.median(r['phases_cpu_s'][name] for r in runs):.2f}"
                               for name in runs[0]["phases_cpu_s"])]
            print(f"| {family} | {tree} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
