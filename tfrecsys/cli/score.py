"""tfrecsys-score: batch-score TFRecord or Parquet rows with exported SavedModels on Apache Beam.

Reads the rows matching --input (TFRecord files of tf.train.Example, or Parquet files whose columns are the
model's features), feeds them as serialized examples to each model's --signature_name signature through Beam
RunInference, and writes keyed rows tagged with the model's name and version to sharded files
<output>-SSSSS-of-NNNNN.<jsonl|parquet|tfrecord>:

  --mode=score     one row per input row and model: <key_feature>, model_name, model_version, <output>...
  --mode=retrieve  one row per input row, model and candidate of a retrieval model (outputs item_ids and
                   scores [batch, K], best first): <key_feature>, model_name, model_version, item_id, score, rank

Rows that cannot be scored (not a tf.train.Example, no key, a missing feature, a wrong dtype, a null Parquet
value) go with the reason to <dead_letter_output>-SSSSS-of-NNNNN.jsonl; the job still finishes and prints the
rows read, scored (per model), rejected and written, then exits with status 1 when more than
--max_rejected_fraction (default 0: any) of the rows read were rejected.

Score one model, or several in one pass over the input (champion and challenger):

  tfrecsys-score --input='data/eval-*.tfrecord' --model_base_path=models/dnn --output=out/scores
  tfrecsys-score --input='users/*.parquet' --input_format=parquet --mode=retrieve --top_k=50 \\
      --model=two_tower=models/two_tower --output=out/top50 --output_format=parquet
  tfrecsys-score --input='data/eval-*.tfrecord' --model=champion=models/dnn@3 --model=challenger=models/dnn@4 \\
      --output=out/ab

Beam pipeline options other than --runner go after a bare `--`, verbatim (docs/batch-scoring.md has complete
Flink, Spark and Dataflow commands), e.g.

  tfrecsys-score ... -- --direct_num_workers=2 --direct_running_mode=multi_processing
  tfrecsys-score ... --runner=DataflowRunner -- --project=P --region=R --temp_location=gs://B/tmp \\
      --setup_file=./setup.py   # workers need tfrecsys installed (or --sdk_container_image)
"""

from absl import flags

from tfrecsys.cli.common import run_binary
from tfrecsys.contract import SERVING_EXAMPLES
from tfrecsys.data.input import DataError
from tfrecsys.scoring import inputs, model_handler, outputs, pipeline, saved_models

FLAGS = flags.FLAGS

flags.DEFINE_string("input", None, "File pattern of the rows to score (any Beam filesystem, e.g. "
                    "'data/eval-*.tfrecord' or 'gs://bucket/users-*.parquet'); TFRecord files may be gzipped "
                    "(by extension .gz).")
flags.DEFINE_enum("input_format", "tfrecord", inputs.INPUT_FORMATS, "tfrecord: files of serialized "
                  "tf.train.Example; parquet: one row per example, columns named like the model's features "
                  "(lists for sequences), typed by what the model parses.")
flags.DEFINE_string("model_base_path", None, "One model to score with: a SavedModel directory, or a model base "
                    "path in TF Serving's layout <model_base_path>/<integer version>/, where the highest version "
                    "is used unless --model_version names one. Use --model instead for several models.")
flags.DEFINE_integer("model_version", None, "Version directory under --model_base_path to score with; "
                     "default: the highest integer version.", lower_bound=0)
flags.DEFINE_string("model_name", None, "Name that output rows of --model_base_path are tagged with; default: "
                    "the base path's directory name (TF Serving's model name).")
flags.DEFINE_multi_string("model", [], "A model to score with, as NAME=PATH or NAME=PATH@VERSION (PATH as "
                          "--model_base_path); repeat it to score several models or versions in one pass over "
                          "the input, e.g. --model=champion=models/dnn@3 --model=challenger=models/dnn@4.")
flags.DEFINE_string("signature_name", SERVING_EXAMPLES, "SavedModel signature to call; it must "
                    "take one string input of serialized tf.train.Example.")
flags.DEFINE_enum("mode", "score", outputs.MODES, "score: one output row per input row and model with every "
                  "output of the signature; retrieve: one output row per input row, model and candidate "
                  "(item_id, score, rank) from a retrieval model's item_ids and scores.")
flags.DEFINE_integer("top_k", 0, "retrieve mode: keep the best top_k of the model's K candidates per row; 0 "
                     "keeps all K.", lower_bound=0)
flags.DEFINE_string("key_feature", None, "Feature (Parquet column) holding each row's key, one int64 or string "
                    "value, copied to its output rows; rows without it go to the dead letters. Default: "
                    f"{pipeline.DEFAULT_KEY_FEATURE['score']} in score mode, "
                    f"{pipeline.DEFAULT_KEY_FEATURE['retrieve']} in retrieve mode.")
flags.DEFINE_string("output", None, "Output path prefix; rows go to <output>-SSSSS-of-NNNNN.<format suffix>.")
flags.DEFINE_enum("output_format", "jsonl", outputs.OUTPUT_FORMATS, "jsonl: one JSON object per line; parquet: "
                  "one column per field ([K] outputs as lists); tfrecord: one tf.train.Example per row.")
flags.DEFINE_integer("num_output_shards", 0, "Number of output files; 0 lets the runner decide.", lower_bound=0)
flags.DEFINE_string("dead_letter_output", None, "Path prefix of the rows that could not be scored, as JSON lines "
                    "with source file, key, model, reason and the row itself; default: "
                    f"<output>{pipeline.DEAD_LETTER_SUFFIX}.")
flags.DEFINE_integer("batch_size", model_handler.DEFAULT_BATCH_SIZE, "Rows per signature call (the last rows of "
                     "each input file may make a smaller batch).", lower_bound=1)
flags.DEFINE_float("max_rejected_fraction", 0.0, "Fail (exit status 1, after the summary) when more than this "
                   "fraction of the rows read went to the dead letters; 0 fails on any rejected row, 1 never "
                   "fails, so a scheduled job notices damaged input.", lower_bound=0.0)
flags.DEFINE_string("runner", "DirectRunner", "Beam runner: DirectRunner, FlinkRunner, SparkRunner, "
                    "DataflowRunner, ...; give the runner's own options after a bare `--`.")
flags.mark_flags_as_required(["input", "output"])


def main(argv: list[str]) -> None:
    # absl stops parsing at a bare `--` and drops it, so what is left are the Beam pipeline options.
    beam_options = argv[1:]
    summary = pipeline.score(
        FLAGS.input, saved_models.model_specs(FLAGS.model_base_path, FLAGS.model_version, FLAGS.model_name,
                                              FLAGS.model), FLAGS.output, input_format=FLAGS.input_format,
        output_format=FLAGS.output_format, mode=FLAGS.mode, key_feature=FLAGS.key_feature, top_k=FLAGS.top_k,
        signature_name=FLAGS.signature_name, batch_size=FLAGS.batch_size,
        dead_letter_prefix=FLAGS.dead_letter_output, num_output_shards=FLAGS.num_output_shards,
        pipeline_args=[f"--runner={FLAGS.runner}", *beam_options])
    for model in summary.models:
        print(f"Scored {summary.scored_by_model[model.tag]} of {summary.rows_read} rows with {model.model_dir} "
              f"({model.tag})")
    print(f"Wrote {summary.rows_written} rows into {len(summary.output_files)} file(s): "
          f"{', '.join(summary.output_files)}")
    print(f"Rejected {summary.rows_rejected} rows into {', '.join(summary.dead_letter_files)}")
    # A job that reads nothing but rejects (a damaged file tail) counts as fully rejected.
    rejected_fraction = summary.rows_rejected / summary.rows_read if summary.rows_read else float(
        summary.rows_rejected > 0)
    if rejected_fraction > FLAGS.max_rejected_fraction:
        raise DataError(f"{summary.rows_rejected} of {summary.rows_read} rows ({rejected_fraction:.2%}) went to the "
                        f"dead letters, more than --max_rejected_fraction={FLAGS.max_rejected_fraction:g}; their "
                        f"reasons are in {', '.join(summary.dead_letter_files)}")


def run() -> None:
    run_binary("tfrecsys-score", __name__, __doc__, main)


if __name__ == "__main__":
    run()
