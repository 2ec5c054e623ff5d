"""Beam pipeline options with the local runner named explicitly.

apache-beam 2.77's ``DirectRunner`` first tries the Prism runner, which it downloads from the internet on
every run (a URL and ``Falling back to DirectRunner`` in the log, and a wait where there is no network), and
then runs the pipeline on the in-process FnApiRunner. tfrecsys asks for that runner directly; a user's
``--runner=PrismRunner`` or any remote runner is passed through unchanged.
"""

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

LOCAL_RUNNER = "FnApiRunner"
_SWITCHING_RUNNER_NAMES = ("DirectRunner", "SwitchingDirectRunner")


def pipeline_options(pipeline_args) -> PipelineOptions:
    """``PipelineOptions(pipeline_args)`` with ``DirectRunner`` (the default when no runner is given) replaced
    by the runner it would fall back to."""
    options = PipelineOptions(list(pipeline_args or []))
    standard = options.view_as(StandardOptions)
    if standard.runner is None or standard.runner in _SWITCHING_RUNNER_NAMES:
        standard.runner = LOCAL_RUNNER
    return options
