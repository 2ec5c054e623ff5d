"""HSTU layer speed (tfrecsys/layers/hstu.py): forward + backward of the attention paths, in one run.

    python -m bench.run_all hstu
    python -m bench.bench_hstu                                   # the RESULTS.md figures (CPU, float32)
    python -m bench.bench_hstu --device=gpu --dtype=bfloat16     # on a machine with a GPU

1. Paths, at each ``--lengths`` with ``--tokens_per_batch`` tokens (batch = tokens / L, every sequence full):
   one HSTU layer's forward + backward (gradients of the input and every weight) on the XLA path, against
   the same padded computation in a ``tf.function`` without XLA and run eagerly (every method traced for
   the batch's static shape, so all of them compute the same causal blocks of ``attention_block_size``
   query rows, ``--block``; ``--block=0``: the full ``L × L``), and against a Keras
   ``MultiHeadAttention`` transformer block of the same width (pre-LayerNorm, causal softmax attention with
   the same heads, residual, pre-LayerNorm 4x feed-forward, residual: the work one HSTU layer replaces) in a
   ``tf.function``. Methods alternate for ``--repeats`` rounds after a warm-up (XLA compiles there); medians.
2. Jagged against padded at ``--jagged_fill`` mean fill: ``--jagged_batch`` sequences padded to
   ``--jagged_length``, lengths uniform in [1, 2 · fill · L − 1]; forward + backward, both in a
   ``tf.function`` without XLA (the XLA path is timed too, for reference).
3. Achieved FLOP/s: the matmul FLOPs the XLA path's forward + backward needs (3x the forward's: projection,
   output, and ``Q Kᵀ`` and ``A V`` over the causal triangle, the ``L (L + 1) / 2`` query-key pairs with
   ``j <= i``; elementwise work not counted) per second, as a fraction of a plain ``tf.matmul`` of two square
   matrices with the same FLOPs, timed alternately with it in a ``tf.function`` with and without XLA (the
   faster of the two is the reference). The FLOPs the causal blocks execute (their diagonal tiles whole) are
   printed beside them, and so is the ceiling of the fraction: the same FLOPs over the time of the layer's
   matmuls alone (``matmuls_alone``: the same shapes and blocks, every other op left out).

4. Matmul rates (``--sections=dots``, not run by default): each matmul shape of section 3's step alone, with
   and without XLA, in GFLOP per CPU second beside the square reference: how fast the layer's dots can be.

Sections 1 and 3 also print their figures in process CPU time (all threads): on this shared 2-core machine
other processes stretch wall times by 2-3x from one minute to the next, CPU time much less. A wall-time ratio
is what a user gets on idle cores; the CPU-time one is the work per core and hides a method that leaves a
core idle.

``--device=gpu`` places everything on the first GPU (the run stops if TensorFlow sees none);
``--dtype=bfloat16`` runs the layers under the ``mixed_bfloat16`` Keras policy (float32 weights, bfloat16
compute) and the matmul reference in bfloat16. On the 2-core CPU of this project bfloat16 only checks the
code path: its figures are not a speed claim. Print the load (``uptime``) beside any figure you keep.
"""

import argparse
import os
import statistics
import time

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from tfrecsys.layers.hstu import HSTULayer

tf.get_logger().setLevel("ERROR")  # the per-length tf.functions of section 1 are built on purpose


def hstu_layer(args, path: str, max_seq_len: int) -> HSTULayer:
    return HSTULayer(num_heads=args.num_heads, attention_dim=args.model_dim // args.num_heads,
                     max_seq_len=max_seq_len, attention_path=path, jagged_groups=args.jagged_groups,
                     attention_block_size=args.block)


class TransformerBlock(tf.keras.layers.Layer):
    """Pre-LN causal softmax self-attention (Keras ``MultiHeadAttention``) and 4x feed-forward, residuals."""

    def __init__(self, model_dim: int, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.attention = tf.keras.layers.MultiHeadAttention(num_heads, model_dim // num_heads)
        self.feed_forward_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.feed_forward = tf.keras.Sequential([tf.keras.layers.Dense(4 * model_dim, activation="relu"),
                                                 tf.keras.layers.Dense(model_dim)])

    def call(self, x, lengths, timestamps, training=None):
        width = tf.shape(x)[1]
        valid_keys = tf.sequence_mask(lengths, width)[:, None, :]
        causal = tf.linalg.band_part(tf.ones([width, width], tf.bool), -1, 0)[None]
        normed = self.attention_norm(x)
        x = x + self.attention(normed, normed, attention_mask=valid_keys & causal, training=training)
        return x + self.feed_forward(self.feed_forward_norm(x), training=training)


def forward_backward(layer, compiled: bool, inputs):
    """``(x, lengths, timestamps) -> scalar`` that runs the layer and all its gradients (returned as a sum,
    so that graph pruning cannot drop them); ``compiled``: a ``tf.function`` traced for the padded length of
    ``inputs``, static as in a model's fixed-length batches (the batch size stays unknown: traced with a static
    batch of 1, XLA's CPU step at L = 4096 took a minute instead of about a second)."""
    def step(x, lengths, timestamps):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, lengths, timestamps, training=True)
            loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32)))
        gradients = tape.gradient(loss, [x] + layer.trainable_variables)
        return loss + tf.add_n([tf.reduce_sum(tf.cast(tf.convert_to_tensor(g), tf.float32))
                                for g in gradients if g is not None])
    if not compiled:
        return step
    return tf.function(step, input_signature=[tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype)
                                              for tensor in inputs])


def batch_of(batch: int, width: int, model_dim: int, lengths=None, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, width, model_dim)).astype(np.float32))
    lengths = np.full([batch], width) if lengths is None else lengths
    timestamps = 1_700_000_000 + np.cumsum(rng.integers(0, 3_600, (batch, width)), axis=1)
    return x, tf.constant(lengths, tf.int32), tf.constant(timestamps, tf.int64)


def timed_rounds(methods: dict, repeats: int) -> tuple[dict, dict]:
    """``{name: (fn, inputs)}`` → (median wall seconds, median process CPU seconds) per call of each, as two
    dicts; one warm-up call each, then they alternate. The CPU seconds (every thread of the process) do not
    grow when other processes take the cores, so they compare methods on a loaded machine; they do not show
    how well a method uses idle cores (the wall time does)."""
    def run(fn, inputs):  # waits for every output (a scalar, or the list of products of matmuls_alone)
        return [tensor.numpy() for tensor in tf.nest.flatten(fn(*inputs))]

    for fn, inputs in methods.values():
        run(fn, inputs)
    wall, cpu = {name: [] for name in methods}, {name: [] for name in methods}
    for _ in range(repeats):
        for name, (fn, inputs) in methods.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            run(fn, inputs)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return ({name: statistics.median(values) for name, values in wall.items()},
            {name: statistics.median(values) for name, values in cpu.items()})


def hstu_forward_matmul_flops(batch: int, width: int, model_dim: int, num_heads: int, query_key_pairs: int) -> float:
    """Matmul FLOPs of one layer's forward over ``query_key_pairs`` attention pairs per sequence."""
    head_dim = model_dim // num_heads
    tokens, heads_dim = batch * width, num_heads * head_dim
    projection = 2 * tokens * model_dim * 4 * heads_dim
    attention = 2 * 2 * batch * num_heads * query_key_pairs * head_dim
    output = 2 * tokens * heads_dim * model_dim
    return float(projection + attention + output)


def built(layer, model_dim: int):
    layer.build(tf.TensorShape([None, None, model_dim]))
    return layer


def xla_available(args) -> bool:
    """XLA's CPU backend in TensorFlow 2.16 has no bfloat16 dot ("unsupported operand type BF16 in op dot")."""
    return not (args.device == "cpu" and args.dtype == "bfloat16")


def paths_section(args) -> None:
    base = "xla" if xla_available(args) else "function"
    print(f"1. forward + backward, one layer, D={args.model_dim}, H={args.num_heads}, "
          f"{args.tokens_per_batch} tokens per batch; median ms of {args.repeats} rounds; ratios to {base}"
          + ("" if base == "xla" else " (no XLA: see xla_available)") + "; [CPU]: the same in process CPU time")
    print(f"{'L':>6} {'batch':>5} {'XLA':>9} {'tf.function':>12} {'eager':>9} {'MHA block':>10} "
          f"{'no-XLA/XLA':>10} {'eager/XLA':>9} {'MHA/XLA':>8} {'[CPU] XLA':>10} {'no-XLA/XLA':>10}")
    for width in args.lengths:
        batch = max(1, args.tokens_per_batch // width)
        inputs = batch_of(batch, width, args.model_dim)
        padded = built(hstu_layer(args, "padded", width), args.model_dim)
        mha = built(TransformerBlock(args.model_dim, args.num_heads), args.model_dim)
        methods = {"function": (forward_backward(padded, True, inputs), inputs),
                   "eager": (forward_backward(padded, False, inputs), inputs),
                   "mha": (forward_backward(mha, True, inputs), inputs)}
        if base == "xla":
            xla = built(hstu_layer(args, "xla", width), args.model_dim)
            methods["xla"] = (forward_backward(xla, True, inputs), inputs)
        wall, cpu = timed_rounds(methods, args.repeats)
        ms, cpu_ms = ({name: 1e3 * s for name, s in times.items()} for times in (wall, cpu))
        ms.setdefault("xla", float("nan"))
        cpu_ms.setdefault("xla", float("nan"))
        print(f"{width:>6} {batch:>5} {ms['xla']:>9.1f} {ms['function']:>12.1f} {ms['eager']:>9.1f} "
              f"{ms['mha']:>10.1f} {ms['function'] / ms[base]:>9.2f}x {ms['eager'] / ms[base]:>8.2f}x "
              f"{ms['mha'] / ms[base]:>7.2f}x {cpu_ms['xla']:>10.1f} {cpu_ms['function'] / cpu_ms[base]:>9.2f}x",
              flush=True)


def jagged_section(args) -> None:
    rng = np.random.default_rng(1)
    width, batch = args.jagged_length, args.jagged_batch
    lengths = rng.integers(1, max(2, int(2 * args.jagged_fill * width)), batch)
    inputs = batch_of(batch, width, args.model_dim, lengths=lengths)
    paths = ("jagged", "padded", "xla") if xla_available(args) else ("jagged", "padded")
    layers = {path: built(hstu_layer(args, path, width), args.model_dim) for path in paths}
    methods = {path: (forward_backward(layer, True, inputs), inputs) for path, layer in layers.items()}
    ms = {name: 1e3 * s for name, s in timed_rounds(methods, args.repeats)[0].items()}
    ms.setdefault("xla", float("nan"))
    print(f"\n2. jagged vs padded: batch {batch}, L={width}, mean fill {lengths.mean() / width:.1%} "
          f"({args.jagged_groups} length groups); forward + backward, median ms")
    print(f"   jagged {ms['jagged']:.1f}, padded tf.function {ms['padded']:.1f}, padded XLA {ms['xla']:.1f}; "
          f"padded/jagged {ms['padded'] / ms['jagged']:.2f}x, XLA/jagged {ms['xla'] / ms['jagged']:.2f}x",
          flush=True)


def matmuls_alone(args, batch: int, width: int, blocks: list, dtype) -> tuple:
    """``(fn, inputs)``: the matmuls one layer's forward + backward executes, with the layer's shapes and
    causal ``blocks`` and nothing else (random operands; the products are returned, not reduced): projection
    and output with their two gradients each, and per block ``Q Kᵀ``, ``A V``, ``dA = dO Vᵀ``, ``dQ = dS K``,
    ``dK = dSᵀ Q``, ``dV = Aᵀ dO``. Their time bounds the layer's FLOP/s fraction from above."""
    heads_dim, tokens = args.num_heads * (args.model_dim // args.num_heads), batch * width

    def normal(seed, *shape):
        return tf.random.stateless_normal(shape, seed=[seed, 0], dtype=dtype)

    per_head = [batch, args.num_heads, width, args.model_dim // args.num_heads]
    inputs = (normal(1, tokens, args.model_dim), normal(2, tokens, 4 * heads_dim), normal(3, tokens, heads_dim),
              normal(4, args.model_dim, 4 * heads_dim), normal(5, heads_dim, args.model_dim),
              *(normal(seed, *per_head) for seed in (6, 7, 8, 9)),
              *(normal(10 + i, batch, args.num_heads, stop - start, stop) for i, (start, stop) in enumerate(blocks)))

    def matmuls(x, d_projected, gated, projection, output, q, k, v, d_out, *scores):
        products = [x @ projection, tf.matmul(x, d_projected, transpose_a=True),
                    tf.matmul(d_projected, projection, transpose_b=True), gated @ output,
                    tf.matmul(gated, x, transpose_a=True), tf.matmul(x, output, transpose_b=True)]
        for (start, stop), block_scores in zip(blocks, scores):
            q_block, d_block = q[:, :, start:stop], d_out[:, :, start:stop]
            keys, values = k[:, :, :stop], v[:, :, :stop]
            products += [tf.matmul(q_block, keys, transpose_b=True), block_scores @ values,
                         tf.matmul(d_block, values, transpose_b=True), block_scores @ keys,
                         tf.matmul(block_scores, q_block, transpose_a=True),
                         tf.matmul(block_scores, d_block, transpose_a=True)]
        return products
    return tf.function(matmuls, jit_compile=xla_available(args)), inputs


def flops_section(args) -> None:
    width = args.flops_length
    batch = max(1, args.tokens_per_batch // width)
    path = "xla" if xla_available(args) else "padded"
    layer = built(hstu_layer(args, path, width), args.model_dim)
    causal_pairs = width * (width + 1) // 2
    executed_pairs = sum(((stop or width) - start) * (stop or width) for start, stop in layer.causal_blocks(width))
    flops = 3 * hstu_forward_matmul_flops(batch, width, args.model_dim, args.num_heads, causal_pairs)
    executed = 3 * hstu_forward_matmul_flops(batch, width, args.model_dim, args.num_heads, executed_pairs)
    side = int(round((flops / 2) ** (1 / 3)))
    dtype = tf.bfloat16 if args.dtype == "bfloat16" else tf.float32
    a = tf.random.stateless_normal([side, side], seed=[1, 2], dtype=dtype)
    b = tf.random.stateless_normal([side, side], seed=[3, 4], dtype=dtype)
    def matmul(a, b):
        return tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32))

    inputs = batch_of(batch, width, args.model_dim)
    blocks = [(start, stop or width) for start, stop in layer.causal_blocks(width)]
    methods = {"hstu": (forward_backward(layer, True, inputs), inputs), "matmul": (tf.function(matmul), (a, b)),
               "matmuls alone": matmuls_alone(args, batch, width, blocks, dtype)}
    if xla_available(args):
        methods["xla matmul"] = (tf.function(matmul, jit_compile=True), (a, b))
    seconds, cpu_seconds = timed_rounds(methods, args.repeats)
    matmul_seconds = min(seconds["matmul"], seconds.get("xla matmul", float("inf")))
    hstu_rate, matmul_rate = flops / seconds["hstu"], 2 * side ** 3 / matmul_seconds
    cpu_rate = flops / cpu_seconds["hstu"]
    matmul_cpu_rate = 2 * side ** 3 / min(cpu_seconds["matmul"], cpu_seconds.get("xla matmul", float("inf")))
    print(f"\n3. achieved FLOP/s, {path} path, L={width}, batch {batch}: {flops / 1e9:.2f} GFLOP of matmuls needed "
          f"per forward + backward (causal; {executed / 1e9:.2f} executed in {len(layer.causal_blocks(width))} "
          f"causal blocks) at {hstu_rate / 1e9:.1f} GFLOP/s; plain {side}x{side} matmul at "
          f"{matmul_rate / 1e9:.1f} GFLOP/s (without XLA {2 * side ** 3 / seconds['matmul'] / 1e9:.1f}); "
          f"fraction {hstu_rate / matmul_rate:.2f} "
          f"({executed / seconds['hstu'] / matmul_rate:.2f} counting the executed FLOPs); per CPU second "
          f"{cpu_rate / 1e9:.1f} against {matmul_cpu_rate / 1e9:.1f} GFLOP, fraction {cpu_rate / matmul_cpu_rate:.2f}",
          flush=True)
    print(f"   the layer's matmuls alone (same shapes and blocks, no other op): "
          f"{1e3 * seconds['matmuls alone']:.1f} ms against the layer's {1e3 * seconds['hstu']:.1f} "
          f"({1e3 * cpu_seconds['matmuls alone']:.1f} against "
          f"{1e3 * cpu_seconds['hstu']:.1f} CPU ms): ceiling of the fraction with every other op free "
          f"{flops / seconds['matmuls alone'] / matmul_rate:.2f}, per CPU second "
          f"{flops / cpu_seconds['matmuls alone'] / matmul_cpu_rate:.2f}", flush=True)


def dots_section(args) -> None:
    """Each matmul shape of the XLA path's step at ``--flops_length`` (projection, output, and the attention's
    per causal block), alone, XLA-compiled and in a plain ``tf.function``: CPU ms per matmul and GFLOP per CPU
    second, against the square matmul of section 3. Each call runs ``per_call`` matmuls on distinct operands
    (XLA cannot merge them) and returns the products; the CPU time of an empty call is subtracted."""
    width = args.flops_length
    batch = max(1, args.tokens_per_batch // width)
    heads, head_dim = args.num_heads, args.model_dim // args.num_heads
    tokens, heads_dim, per_call = batch * width, args.num_heads * head_dim, 4
    blocks = [(start, stop or width) for start, stop in built(hstu_layer(args, "xla", width), args.model_dim)
              .causal_blocks(width)]
    shapes = {  # name: (operand shapes, matmul, contraction length)
        "projection x W": (([tokens, args.model_dim], [args.model_dim, 4 * heads_dim]), tf.matmul, args.model_dim),
        "projection dW = xᵀ dP": (([tokens, args.model_dim], [tokens, 4 * heads_dim]),
                                  lambda a, b: tf.matmul(a, b, transpose_a=True), tokens),
        "projection dx = dP Wᵀ": (([tokens, 4 * heads_dim], [args.model_dim, 4 * heads_dim]),
                                  lambda a, b: tf.matmul(a, b, transpose_b=True), 4 * heads_dim),
        "output g Wo": (([tokens, heads_dim], [heads_dim, args.model_dim]), tf.matmul, heads_dim),
        "output dWo = gᵀ dY": (([tokens, heads_dim], [tokens, args.model_dim]),
                               lambda a, b: tf.matmul(a, b, transpose_a=True), tokens)}
    for start, stop in sorted({blocks[0], blocks[-1]}):
        rows = stop - start
        shapes[f"Q Kᵀ, dO Vᵀ; {rows} x {stop}"] = (([batch, heads, rows, head_dim], [batch, heads, stop, head_dim]),
                                                  lambda a, b: tf.matmul(a, b, transpose_b=True), head_dim)
        shapes[f"A V, dS K; {rows} x {stop}"] = (([batch, heads, rows, stop], [batch, heads, stop, head_dim]),
                                                tf.matmul, stop)
        shapes[f"dSᵀ Q, Aᵀ dO; {rows} x {stop}"] = (([batch, heads, rows, stop], [batch, heads, rows, head_dim]),
                                                   lambda a, b: tf.matmul(a, b, transpose_a=True), rows)
    side = int(round((3 * hstu_forward_matmul_flops(batch, width, args.model_dim, args.num_heads,
                                                     width * (width + 1) // 2) / 2) ** (1 / 3)))
    shapes[f"square {side}x{side} (section 3's reference)"] = (([side, side], [side, side]), tf.matmul, side)
    dtype = tf.bfloat16 if args.dtype == "bfloat16" else tf.float32
    methods, flops = {"empty": (tf.function(lambda a: a[:1]), (tf.zeros([1], dtype),))}, {}
    if xla_available(args):
        methods["empty xla"] = (tf.function(lambda a: a[:1], jit_compile=True), (tf.zeros([1], dtype),))
    for index, (name, (operand_shapes, matmul, contraction)) in enumerate(shapes.items()):
        operands = tuple(tf.random.stateless_normal(shape, seed=[index, i], dtype=dtype)
                         for i in range(per_call) for shape in operand_shapes)
        flops[name] = 2 * contraction * int(np.prod(matmul(*operands[:2]).shape))

        def products(*operands, matmul=matmul):
            return [matmul(operands[2 * i], operands[2 * i + 1]) for i in range(per_call)]
        methods[name] = (tf.function(products), operands)
        if xla_available(args):
            methods[name + " xla"] = (tf.function(products, jit_compile=True), operands)
    cpu = timed_rounds(methods, args.repeats)[1]
    print(f"\n4. each matmul of the XLA path's step alone (L={width}, batch {batch}; {per_call} per call, an empty "
          f"call's CPU time subtracted): CPU ms per matmul and GFLOP per CPU second, XLA | tf.function")
    for name in shapes:
        cells = []
        for suffix, empty in ((" xla", "empty xla"), ("", "empty")):
            if name + suffix in cpu:
                seconds = max((cpu[name + suffix] - cpu[empty]) / per_call, 1e-9)
                cells.append(f"{1e3 * seconds:7.2f} ms {flops[name] / seconds / 1e9:6.1f}")
        print(f"   {name:<40} " + " | ".join(cells), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")], default=[256, 1024, 4096],
                        help="comma-separated sequence lengths L of section 1")
    parser.add_argument("--tokens_per_batch", type=int, default=4096,
                        help="batch × L in sections 1 and 3 (the batch is this divided by L, at least 1)")
    parser.add_argument("--model_dim", type=int, default=128, help="model width D (HSTU and the MHA block)")
    parser.add_argument("--num_heads", type=int, default=2, help="attention heads; head dim = model_dim / heads")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per method after the warm-up")
    parser.add_argument("--jagged_length", type=int, default=1024, help="padded length L of section 2")
    parser.add_argument("--jagged_batch", type=int, default=16, help="sequences per batch in section 2")
    parser.add_argument("--jagged_fill", type=float, default=0.25, help="mean fill (length / L) in section 2")
    parser.add_argument("--jagged_groups", type=int, default=8, help="length groups of the jagged path")
    parser.add_argument("--flops_length", type=int, default=1024, help="sequence length L of section 3")
    parser.add_argument("--block", type=int, default=HSTULayer().attention_block_size,
                        help="attention_block_size of every HSTU layer: query rows per causal block (0: full L x L)")
    parser.add_argument("--sections", default="paths,jagged,flops",
                        help="comma-separated sections to run: paths, jagged, flops, dots (the last not by default)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="run on the CPU or on the first GPU TensorFlow sees (stops if there is none)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="float32, or bfloat16 compute with float32 weights (Keras mixed_bfloat16 policy)")
    args = parser.parse_args(argv)
    if args.device == "gpu" and not tf.config.list_physical_devices("GPU"):
        parser.exit(2, "--device=gpu: TensorFlow sees no GPU on this machine (tf.config.list_physical_devices)\n")
    if args.dtype == "bfloat16":
        tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    print(f"device {args.device}, dtype {args.dtype}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}")
    sections = {"paths": paths_section, "jagged": jagged_section, "flops": flops_section, "dots": dots_section}
    with tf.device("/GPU:0" if args.device == "gpu" else "/CPU:0"):
        for name in args.sections.split(","):
            sections[name](args)


if __name__ == "__main__":
    main()
