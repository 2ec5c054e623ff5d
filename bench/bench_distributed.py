"""Training throughput of 1 against 2 local CPU workers (MultiWorkerMirroredStrategy), same global batch.

Every variant is a full ``tfrecsys-launch --workers=N -- tfrecsys-train ...`` run of the quickstart dnn on
the same simulated click log (4 train shards, so 2 workers split it by file), with the same global batch,
so the model sees the same number of examples per step. Steps per second are taken between the chief's
second and last checkpoint log lines: the first loop (tracing, the first-fit cost) and the final evaluation
are left out. Beside the worker counts, one worker with ``--jit_compile`` and one with
``--mixed_precision=mixed_bfloat16`` show what the GPU options cost or gain on a CPU. The variants alternate
for a few rounds and the median of each is reported with its ratio to one float32 worker, because this
machine is shared and noisy.

    python -m bench.run_all distributed
    python -m bench.bench_distributed --steps=400 --batch_sizes=1024 --rounds=3
"""

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile

import tfrecsys  # noqa: F401  (Keras 2 before TensorFlow)
from tfrecsys.data.simulators.click_log import ClickLogConfig, write_click_log

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "dnn_simulator.py")
BIN = os.path.dirname(sys.executable)
CHECKPOINT_LINE = re.compile(r"^\[worker 0\] I(\d{4}) (\d\d:\d\d:\d\d\.\d+) .*step (\d+): checkpoint")
VARIANTS = {
    "1 worker, float32": (1, []),
    "2 workers, float32": (2, []),
    "1 worker, --jit_compile": (1, ["--jit_compile"]),
    "1 worker, --mixed_precision=mixed_bfloat16": (1, ["--mixed_precision=mixed_bfloat16"]),
}


def steps_per_second(log: str) -> float:
    """Steps per second between the chief's second and last checkpoint lines of a launcher log."""
    points = []
    for line in log.splitlines():
        match = CHECKPOINT_LINE.match(line)
        if match:
            clock = datetime.datetime.strptime(match.group(2), "%H:%M:%S.%f")
            points.append((int(match.group(3)), clock))
    if len(points) < 3:
        raise RuntimeError(f"expected at least 3 checkpoint lines from worker 0, got {len(points)}:\n{log[-3000:]}")
    (first_step, first_time), (last_step, last_time) = points[1], points[-1]
    return (last_step - first_step) / (last_time - first_time).total_seconds()


def run(workers: int, extra_flags: list[str], batch_size: int, data_dir: str, model_dir: str, args) -> float:
    command = [os.path.join(BIN, "tfrecsys-launch"), f"--workers={workers}", "--timeout_s=900", "--",
               f"--config={CONFIG}", f"--model_dir={model_dir}", f"--config.data.dir={data_dir}",
               f"--config.train.steps={args.steps}", f"--config.train.steps_per_loop={args.steps_per_loop}",
               f"--config.train.batch_size={batch_size}", *extra_flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1000)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed with {result.returncode}:\n{result.stdout[-5000:]}")
    return steps_per_second(result.stdout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="simulated impressions")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--steps_per_loop", type=int, default=50)
    parser.add_argument("--batch_sizes", default="512,4096", help="global batches, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as root:
        data_dir = os.path.join(root, "data")
        write_click_log(ClickLogConfig(num_events=args.events, num_shards=4), data_dir)
        rates = {(batch, name): [] for batch in batch_sizes for name in VARIANTS}
        for round_index in range(args.rounds):
            for batch in batch_sizes:
                for variant_index, (name, (workers, flags)) in enumerate(VARIANTS.items()):
                    model_dir = os.path.join(root, f"run-{round_index}-{batch}-{variant_index}")
                    rates[batch, name].append(run(workers, flags, batch, data_dir, model_dir, args))
                    print(f"round {round_index + 1}, global batch {batch}: {name}: "
                          f"{rates[batch, name][-1]:.1f} steps/s", flush=True)

    print(f"\n{args.steps} steps, median of {args.rounds} rounds, {os.cpu_count()} CPU cores")
    print(f"{'global batch':>12}  {'variant':<46} {'steps/s':>8} {'examples/s':>11} {'vs 1 worker':>12}")
    for batch in batch_sizes:
        baseline = statistics.median(rates[batch, "1 worker, float32"])
        for name in VARIANTS:
            median = statistics.median(rates[batch, name])
            print(f"{batch:>12}  {name:<46} {median:8.1f} {median * batch:11.0f} {median / baseline:11.2f}x")


if __name__ == "__main__":
    main()
