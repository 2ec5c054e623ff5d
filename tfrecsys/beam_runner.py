"""Beam pipeline options with the local runner named explicitly.

apache-beam 2.77's ``DirectRunner`` first tries the Prism runner, which it downloads from the internet on
every run (a URL and ``Falling back to DirectRunner`` in the log, and a wait where there is no network), and
then runs the pipeline on the in-process FnApiRunner. tfrecsys asks for that runner directly; a user's
``--runner=PrismRunner`` or any remote runner is passed through unchanged.

The FnApiRunner's ``--direct_running_mode=multi_threading`` with more than one worker is refused: on 2.77,
with the machine busy, its worker threads corrupt each other's bundle outputs (``Invalid PaneInfoEncoding``
crashes) or drop grouped elements without an error (223 of 12,000 events once, in tfrecsys-preprocess).
``multi_processing`` runs the same parallelism in worker processes and was not seen to lose anything.
"""

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
