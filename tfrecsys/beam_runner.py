"""Beam pipeline options with the local runner named explicitly.

apache-beam 2.77's ``DirectRunner`` first tries the Prism runner, which it downloads from the internet on
every run (a URL and ``Falling back to DirectRunner`` in the log, and a wait where there is no network), and
then runs the pipeline on the in-process FnApiRunner. tfrecsys asks for that runner directly; a user's
``--runner=PrismRunner`` or any remote runner is passed through unchanged.

The FnApiRunner's ``--direct_running_mode=multi_threading`` with more than one worker is refused: on 2.77,
with the machine busy, its worker threads corrupt each other's bundle outputs (``Invalid PaneInfoEncoding``
crashes) or drop grouped elements without an error (223 of 12,000 events once, in tfrecsys-preprocess).
``multi_processing`` runs the same parallelism in worker processes and was not seen to lose anything.

``beam.Pipeline(...)`` makes a local temporary directory (``beam-pipeline-temp*``) that only ``Pipeline.run()``
removes, so a pipeline whose building fails (an input pattern that matches nothing, a column the model cannot
parse) would leave it behind: build pipelines inside ``temp_dir_removed``.
"""

import contextlib
import shutil
from typing import Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

LOCAL_RUNNER = "FnApiRunner"
_SWITCHING_RUNNER_NAMES = ("DirectRunner", "SwitchingDirectRunner")


def pipeline_options(pipeline_args) -> PipelineOptions:
    """``PipelineOptions(pipeline_args)`` with ``DirectRunner`` (the default when no runner is given) replaced
    by the runner it would fall back to."""
    options = PipelineOptions(list(pipeline_args or []))
    standard = options.view_as(StandardOptions)
    if standard.runner is None or standard.runner in _SWITCHING_RUNNER_NAMES:
        standard.runner = LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    if (standard.runner == LOCAL_RUNNER and direct.direct_running_mode == "multi_threading"
            and direct.direct_num_workers != 1):
        raise ValueError(
            f"--direct_running_mode=multi_threading with --direct_num_workers={direct.direct_num_workers}: "
            "apache-beam 2.77's multi-threaded local runner can lose or corrupt elements when its threads run "
            "side by side; use --direct_running_mode=multi_processing for parallel local runs")
    return options


@contextlib.contextmanager
def temp_dir_removed(pipeline: beam.Pipeline) -> Iterator[beam.Pipeline]:
    """Yields ``pipeline`` and removes its local temporary directory when the block ends, whether or not the
    pipeline ran: ``run()`` removes it too (removing it twice is harmless), but a block that raises while
    the pipeline is built never gets there.

    With a pipeline that runs when its own block ends, enter that block inside this one:
    ``with temp_dir_removed(beam.Pipeline(options=options)) as pipeline, pipeline: ...``.
    """
    try:
        yield pipeline
    finally:
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
