"""tfrecsys-preprocess: turn a source dataset into sharded TFRecord (or Parquet) examples for a config's schema.

    tfrecsys-preprocess --config=configs/dnn_movielens_100k.py
    tfrecsys-preprocess --config=configs/two_tower_movielens.py      # + candidates.tfrecord for retrieval
    tfrecsys-preprocess --config=configs/dnn_movielens_100k.py --config.preprocess.input=/data/ml-100k \\
        --config.data.dir=runs/data/ml100k --overwrite
    tfrecsys-preprocess --config=... --runner=FlinkRunner -- --flink_master=host:8081 --environment_type=LOOPBACK

The config's ``preprocess`` block names the source format (movielens-100k, movielens-1m, amazon-beauty,
taobao-user-behavior, census-income-kdd, ali-ccp, aliexpress, criteo-display-ad, criteo-conversion-logs),
the input path, the split and the label rules; its ``features`` block says what to write. The output
directory is the config's ``data.dir`` (where training reads; the config's vocabulary paths point into it). It
gets ``<split>-SSSSS-of-NNNNN.tfrecord`` shards, ``vocabularies/``, ``item_frequency.tsv`` (event
logs), ``candidates.tfrecord`` (event logs with ``preprocess.candidate_columns``: the retrieval corpus),
``sequences-SSSSS-of-NNNNN.tfrecord`` (event logs with ``preprocess.sequence_columns``: one time-ordered
sequence per user), ``user_histories-SSSSS-of-NNNNN.parquet`` (event logs with
``preprocess.user_history_columns``: every event of each user once, the store SIM's lifelong histories are
cut from at input time; a config reading it sets ``data.user_histories.file="user_histories-*.parquet"``, and
the sequences that block fills are not written per row), ``dead_letter.jsonl`` (malformed rows with the
reason) and ``metadata.json`` (schema, vocabulary sizes, row counts). Beam pipeline options other than
--runner go after a bare ``--``.

A config with a ``delayed_feedback_stream`` block instead (configs/defuse_criteo.py) turns a click log with
conversion times into a delayed-feedback method's training stream, window files in time order
(tfrecsys/data/delayed_feedback_stream.py, docs/delayed-feedback.md):

    tfrecsys-preprocess --config=configs/defuse_criteo.py:defuse
"""

import json

from absl import flags
from ml_collections import config_flags

from tfrecsys.cli.common import run_binary

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py) with a preprocess block (source, input, split, labels, "
    "min_counts, candidate_columns, sequence_columns, user_history_columns, ...) and the features to write (those "
    "data.user_histories cuts from the per-user store are not written per row); fields can be "
    "overridden, e.g. --config.preprocess.input=/data/ml-100k.")
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Replace the output of an earlier run in the output directory instead of failing.")
_RUNNER = flags.DEFINE_string(
    "runner", "DirectRunner", "Beam runner: DirectRunner, FlinkRunner, SparkRunner, DataflowRunner, ...; give the "
    "runner's own options after a bare `--`.")
flags.mark_flag_as_required("config")


def main(argv):
    from tfrecsys.data.preprocess import PreprocessConfig, preprocess

    config = _CONFIG.value
    if "delayed_feedback_stream" in config:
        # A click log with conversion times → a delayed-feedback method's stream (docs/delayed-feedback.md).
        from tfrecsys.data.delayed_feedback_stream import SourceStream, build_source_stream

        metadata = build_source_stream(SourceStream.from_config(config.delayed_feedback_stream), config.data.dir,
                                       pipeline_args=[f"--runner={_RUNNER.value}", *argv[1:]])
        print(f"wrote the {config.delayed_feedback_stream.method} stream to {config.data.dir}: "
              f"{json.dumps({'rows': metadata['stream_rows'], 'sample_types': metadata['sample_types']})}")
        return
    if "preprocess" not in config:
        raise ValueError(f"the config has no preprocess block (it has {sorted(config.keys())})")
    output_dir = config.data.dir
    metadata = preprocess(PreprocessConfig.from_config(config.preprocess), config.features, output_dir,
                          pipeline_args=[f"--runner={_RUNNER.value}", *argv[1:]], overwrite=_OVERWRITE.value,
                          user_histories=config.data.get("user_histories"))
    summary = {"rows": {split: info["rows"] for split, info in metadata["splits"].items()},
               "dead_letter_rows": metadata["dead_letter_rows"],
               "vocabulary_sizes": {name: v["size"] for name, v in metadata["vocabularies"].items()}}
    print(f"wrote {metadata['source']} to {output_dir}: {json.dumps(summary, sort_keys=True)}")
    if metadata["dead_letter_rows"]:
        print(f"{metadata['dead_letter_rows']} malformed rows are in {output_dir}/{metadata['dead_letter_file']}")


def run():
    run_binary("tfrecsys-preprocess", __name__, __doc__, main)


if __name__ == "__main__":
    run()
