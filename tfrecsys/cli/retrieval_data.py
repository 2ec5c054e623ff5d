"""tfrecsys-retrieval-data: write the retrieval dataset a two_tower config trains on.

    tfrecsys-retrieval-data --config=configs/two_tower_simulator.py     # the simulated world, into data.dir
    tfrecsys-retrieval-data --config=configs/two_tower_movielens.py     # MovieLens-100K, leave-one-out

Writes train-*/eval-*.tfrecord (positive interactions with histories), candidates.tfrecord (the corpus),
item_frequency.tsv (training counts for logQ and negative sampling) and metadata.json. config.data.source
picks the source: "retrieval_simulator" (config.data.simulator sets the world) or "movielens-100k" (GroupLens'
files in config.data.source_dir; their license forbids redistribution, so download them yourself).
"""

import json

from absl import app, flags
from ml_collections import config_flags

from tfrecsys.cli.common import run_binary

SOURCES = ("retrieval_simulator", "movielens-100k")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "two_tower experiment config (configs/two_tower_*.py): data.source picks the source, "
    "data.dir the output directory, data.simulator the simulated world, data.source_dir the MovieLens files, "
    "data.history_len the history length. Fields can be overridden, e.g. --config.data.simulator.seed=1.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory to write the dataset to (default: the config's "
                                  "data.dir, where training reads).")
_SOURCE_DIR = flags.DEFINE_string("source_dir", None, "For movielens-100k: the directory with u.data and u.item "
                                  "(default: the config's data.source_dir).")
flags.mark_flag_as_required("config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    source = config.data.get("source")
    output_dir = _OUTPUT_DIR.value or config.data.dir
    if source == "retrieval_simulator":
        from tfrecsys.data.retrieval_simulator import RetrievalWorldConfig, write_retrieval_world

        metadata = write_retrieval_world(RetrievalWorldConfig.from_config(config.data.simulator), output_dir)
    elif source == "movielens-100k":
        from tfrecsys.data.retrieval_data import prepare_movielens_100k

        metadata = prepare_movielens_100k(_SOURCE_DIR.value or config.data.source_dir, output_dir,
                                          history_len=config.data.history_len)
    else:
        raise ValueError(f"config.data.source must be one of {SOURCES}, got {source!r}")
    summary = {k: metadata[k] for k in ("train_rows", "eval_rows", "num_candidates")}
    print(f"wrote {source} retrieval data to {output_dir}: {json.dumps(summary)}")


def run():
    run_binary("tfrecsys-retrieval-data", __name__, __doc__, main)


if __name__ == "__main__":
    run()
