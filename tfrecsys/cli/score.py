"""tfrecsys-score: batch-score TFRecords of tf.train.Example with an exported SavedModel on Apache Beam.

Reads the records matching --input, feeds them serialized to the SavedModel's --signature_name signature
through Beam RunInference, and writes one JSON line per row, {"<key_feature>": key, "<output>": value, ...},
to sharded files <output>-SSSSS-of-NNNNN.jsonl. Prints the rows scored and the files written.

Beam pipeline options other than --runner go after a bare `--`, verbatim, e.g.

  tfrecsys-score --input='data/eval-*.tfrecord' --model_base_path=models/dnn --output=out/scores \\
      -- --direct_num_workers=2 --direct_running_mode=multi_processing

  tfrecsys-score ... --runner=DataflowRunner -- --project=P --region=R --temp_location=gs://B/tmp \\
      --setup_file=./setup.py   # workers need tfrecsys installed (or --sdk_container_image)
"""

from absl import flags

from tfrecsys.cli.common import run_binary
from tfrecsys.scoring import model_handler, pipeline

FLAGS = flags.FLAGS

flags.DEFINE_string("input", None, "TFRecord file pattern of serialized tf.train.Example to score (any Beam "
                    "filesystem, e.g. 'data/eval-*.tfrecord' or 'gs://bucket/eval-*'); gzip files by extension.")
flags.DEFINE_string("model_base_path", None, "A SavedModel directory, or a model base path in TF Serving's "
                    "layout <model_base_path>/<integer version>/, where the highest version is used unless "
                    "--model_version names one.")
flags.DEFINE_integer("model_version", None, "Version directory under --model_base_path to score with; "
                     "default: the highest integer version.", lower_bound=0)
flags.DEFINE_string("signature_name", model_handler.DEFAULT_SIGNATURE_NAME, "SavedModel signature to call; it "
                    "must take one string input of serialized tf.train.Example.")
flags.DEFINE_string("key_feature", pipeline.DEFAULT_KEY_FEATURE, "Feature holding each row's key (one int64 or "
                    "bytes value), copied to its output line; a row without it fails the job.")
flags.DEFINE_string("output", None, "Output path prefix; rows go to <output>-SSSSS-of-NNNNN.jsonl.")
flags.DEFINE_integer("min_batch_size", model_handler.DEFAULT_MIN_BATCH_SIZE, "Smallest batch Beam's adaptive "
                     "batching sends to one signature call (the last batch of a bundle may be smaller).",
                     lower_bound=1)
flags.DEFINE_integer("max_batch_size", model_handler.DEFAULT_MAX_BATCH_SIZE, "Largest batch Beam's adaptive "
                     "batching sends to one signature call.", lower_bound=1)
flags.DEFINE_string("runner", "DirectRunner", "Beam runner: DirectRunner, FlinkRunner, SparkRunner, "
                    "DataflowRunner, ...; give the runner's own options after a bare `--`.")
flags.mark_flags_as_required(["input", "model_base_path", "output"])


def main(argv: list[str]) -> None:
    # absl stops parsing at a bare `--` and drops it, so what is left are the Beam pipeline options.
    beam_options = argv[1:]
    summary = pipeline.score(
        input_pattern=FLAGS.input, model_path=FLAGS.model_base_path, output_prefix=FLAGS.output,
        key_feature=FLAGS.key_feature, signature_name=FLAGS.signature_name, model_version=FLAGS.model_version,
        min_batch_size=FLAGS.min_batch_size, max_batch_size=FLAGS.max_batch_size,
        pipeline_args=[f"--runner={FLAGS.runner}", *beam_options])
    print(f"Scored {summary.rows_scored} rows with {summary.model_dir} into {len(summary.output_files)} "
          f"file(s): {', '.join(summary.output_files)}")


def run() -> None:
    run_binary("tfrecsys-score", __name__, __doc__, main)


if __name__ == "__main__":
    run()
