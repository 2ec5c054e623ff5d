"""Library log noise held back from the binaries' output, so that progress, warnings that matter and each
binary's summary are what a user reads. ``--verbosity`` (or ``-v``) on the command line gives everything back.

What is held back, all measured on the pinned stack and harmless:
- TensorFlow's Python warnings (logger ``tensorflow``), e.g. ``Function `classify` contains input name(s)
  703, 705 with unsupported characters`` for every signature of an export; errors still show.
- Apache Beam's INFO and WARNING lines (logger ``apache_beam``): runner choice, shard renames, state cache,
  ``Resource module is not available``; errors still show.
- INFO and WARNING lines logged from TensorFlow, tf-keras and Beam files under any other logger name (e.g.
  TensorFlow's checkpoint saver's ``Sharding callback duration`` at every save, Beam RunInference's
  ``Resource module is not available``); tfrecsys' own lines stay.
- Beam's ``apitools not found`` warning, which it logs on the root logger at import time when the optional
  Google Cloud client libraries are absent (they are only needed for BigQuery).
"""

import logging
import os
import sys

from absl import logging as absl_logging

_ROOT_LOGGER_NOISE = ("apitools not found",)


_LIBRARY_PATHS = (f"{os.sep}tensorflow{os.sep}", f"{os.sep}tf_keras{os.sep}", f"{os.sep}apache_beam{os.sep}")


class _DropLibraryInfo(logging.Filter):
    """For absl's log handler (every record of a binary goes through it, whatever its logger): drops records
    below ERROR logged from the library packages' own files."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(p in record.pathname for p in _LIBRARY_PATHS)


class _DropRootNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or not any(str(record.msg).startswith(p) for p in _ROOT_LOGGER_NOISE)


def verbosity_requested(argv) -> bool:
    """True when the command line sets absl's verbosity (``--verbosity=N``, ``-v N``, ``-vN`` or ``--v``)."""
    return any(arg.split("=", 1)[0] in ("--verbosity", "-verbosity", "--v", "-v") or
               (arg.startswith("-v") and arg[2:].lstrip("-").isdigit()) for arg in argv[1:])


def quiet_library_logs(argv=None) -> bool:
    """Holds back the noise listed above unless ``argv`` (default ``sys.argv``) asks for a verbosity;
    returns whether it did. Must run before apache_beam is imported (its import logs the apitools line)."""
    if verbosity_requested(sys.argv if argv is None else argv):
        return False
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    for filterer, noise_filter in ((logging.getLogger(), _DropRootNoise), (absl_logging.get_absl_handler(), _DropLibraryInfo)):
        if not any(isinstance(f, noise_filter) for f in filterer.filters):
            filterer.addFilter(noise_filter())
    return True
