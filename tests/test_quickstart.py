"""``make quickstart``'s job (tfrecsys-quickstart), end to end, as the README's first command runs it: simulate,
train, export, serve over gRPC, query, Beam batch scoring, report. No other test runs the whole of it."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@pytest.mark.slow  # ~60 s on the 2-core machine: make test-slow
def test_quickstart_runs_the_main_job_end_to_end(tmp_path):
    workdir = tmp_path / "quickstart"
    result = subprocess.run([os.path.join(BIN, "tfrecsys-quickstart"), f"--workdir={workdir}"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.split("== tfrecsys quickstart summary ==")[-1]
    auc, oracle = map(float, re.search(r"eval AUC\s+([0-9.]+)\s+\(oracle ([0-9.]+)", summary).groups())
    assert 0.70 < auc < oracle, summary  # the simulator's click model is learnable, not learnt perfectly
    assert int(re.search(r"scored rows\s+(\d+)", summary).group(1)) == 12_000, summary
    served = re.search(r"served scores\s+\[([^\]]*)\]", summary).group(1).split(",")
    assert len(served) == 3 and all(0.0 < float(score) < 1.0 for score in served), summary
    assert (workdir / "model" / "report" / "index.html").is_file()
    assert sorted(os.listdir(workdir / "export" / "dnn")) == ["1"]
