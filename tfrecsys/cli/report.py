"""tfrecsys-report: the run report of a training run, as one static HTML page with its plots.

    tfrecsys-report --model_dir=runs/dnn          # writes runs/dnn/report/index.html and report/*.png

tfrecsys-train writes it at the end of training; run this to rewrite it (e.g. after a resumed run). The page
has the training and eval curves, the final metrics per task, the best checkpoint, the calibration curve of
each binary output and, for retrieval, Recall@K against K; the PNGs are embedded, so it is one file that
opens in any browser.
"""

from absl import app, flags

from tfrecsys.cli.common import run_binary

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory of tfrecsys-train (its logs/, "
                                 "eval_metrics.json, best/ and calibration.json are read); the report goes to "
                                 "<model_dir>/report/.")
flags.mark_flags_as_required(["model_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfrecsys.report import write_report

    print(f"report: {write_report(_MODEL_DIR.value)}")


def run():
    run_binary("tfrecsys-report", __name__, __doc__, main)


if __name__ == "__main__":
    run()
