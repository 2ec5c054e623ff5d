"""tfrecsys-export: write a trained run as a versioned SavedModel for TF Serving and Beam.

    tfrecsys-export --config=configs/dnn_simulator.py --model_dir=runs/dnn --export_base=runs/export [--checkpoint=best]
    tfrecsys-export --config=configs/esmm.py:simulator --model_dir=runs/esmm --export_base=runs/export \
        --config.export.fusion='ctr^0.8 * cvr^1.2'     # also serve "fused", one ranking score per row

Writes <export_base>/<config.export.model_name>/<version>/ atomically (temporary directory, then rename).
"""

from absl import app, flags
from ml_collections import config_flags

from tfrecsys.cli.common import run_binary

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The experiment config the run was trained with (configs/*.py, same overrides); it "
    "rebuilds the model, every weight of which must come from the checkpoint (another config's model fails, "
    "naming the weights the checkpoint lacks), and its export block names the model (export.model_name) and an "
    "optional served 'fused' output (export.fusion: 'ctr^0.8 * cvr^1.2' or '0.7*ctr + 0.3*ctcvr').")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory of tfrecsys-train; --checkpoint says which "
                                 "of its checkpoints is exported.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "last", ["last", "best"], "last: the newest checkpoint; best: the one "
                                "with the best eval config.train.best_metric (<model_dir>/best/, kept when "
                                "training evaluates every loop).")
_EXPORT_BASE = flags.DEFINE_string("export_base", None, "Export base path; the model lands in "
                                   "<export_base>/<model_name>/<version>/, the layout TF Serving polls.")
_VERSION = flags.DEFINE_integer("version", None, "Integer version to write (default: one more than the "
                                "highest existing version, 1 for the first). Existing versions are never "
                                "overwritten.", lower_bound=1)
flags.mark_flags_as_required(["config", "model_dir", "export_base"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfrecsys.export.trained import export_trained

    path = export_trained(_CONFIG.value, _MODEL_DIR.value, _EXPORT_BASE.value, version=_VERSION.value,
                          checkpoint=_CHECKPOINT.value)
    print(f"exported the {_CHECKPOINT.value} checkpoint of {_MODEL_DIR.value} to {path}")


def run():
    run_binary("tfrecsys-export", __name__, __doc__, main)


if __name__ == "__main__":
    run()
