"""Runs every ``bench/bench_*.py`` (each a module with ``main()``) in its own process, one after another.

    make bench                       # all of them
    python -m bench.run_all serving  # those whose name contains "serving"

Figures are printed, not written: this machine is shared and noisy, so every benchmark reports the ratio
against its baseline measured in the same run, and the figures worth keeping go into bench/RESULTS.md with
the machine description.
"""

import glob
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(here, "bench_*.py")))
    selected = [n for n in names if not argv or any(a in n for a in argv)]
    if not selected:
        print(f"no benchmark matches {argv}; available: {names}", file=sys.stderr)
        return 1
    failed = []
    for name in selected:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=os.path.dirname(here))
        print(f"--- {name}: exit {result.returncode}, {time.perf_counter() - started:.0f} s", flush=True)
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
