"""What every tfrecsys binary shares: ``--help`` that lists its own flags, and one-line endings.

A user mistake ends in one ``<program>: error: <message>`` line on its own line (never glued to a progress
bar), with the traceback only in the debug log (``--verbosity=1``). Exit status:

- 2: a usage error: an unknown or malformed flag, a missing required flag, a config file that does not load,
  a config override naming no field or of the wrong type, a ``config.model`` key its family does not declare
  (``tfrecsys.model_options``), unexpected arguments;
- 1: bad input found while running (unreadable data, a schema mismatch, a missing file or model);
- 130: Ctrl-C (SIGINT); a training run first finishes its step and saves a checkpoint, and says the step.
"""

import glob
import logging as std_logging
import os
import re
import sys
import traceback
from typing import Optional

import ml_collections
from absl import app, flags, logging

from tfrecsys import model_options
from tfrecsys.data.input import DataError
from tfrecsys.features.schema import SchemaError

# Errors whose message is the whole story for a user (a file, feature, flag or config field named).
USER_ERRORS = (DataError, SchemaError, FileNotFoundError, FileExistsError, ValueError, KeyError)
# What a bad config file or config override raises while flags are parsed (ml_collections' config_flags
# raises plain Python errors, not absl flag errors).
CONFIG_ERRORS = (AttributeError, KeyError, OSError, ValueError, TypeError, SyntaxError)
EXIT_USER_ERROR = 1
EXIT_USAGE_ERROR = 2
EXIT_INTERRUPTED = 130
_HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort")


class _LineTrackingStream:
    """Passes everything through to ``stream`` and remembers whether the last text written ended a line
    (a Keras progress bar leaves its line open while it redraws it with carriage returns)."""

    def __init__(self, stream):
        self._stream = stream
        self.line_open = False

    def write(self, text):
        if text:
            self.line_open = not text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _end_open_line() -> None:
    if isinstance(sys.stdout, _LineTrackingStream) and sys.stdout.line_open:
        sys.stdout.write("\n")
        sys.stdout.flush()


class _LogOnItsOwnLine(std_logging.Filter):
    """On the log handler: a log line printed while a progress bar's line is open starts a new line."""

    def filter(self, record) -> bool:
        _end_open_line()
        return True


def fail(program: str, message: str, exit_code: int) -> None:
    """Prints ``<program>: error: <message>`` on a line of its own and exits with ``exit_code``."""
    _end_open_line()
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def _innermost(error: BaseException) -> BaseException:
    """ml_collections wraps the KeyError of an unknown field in an AttributeError whose argument is it."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return error


def _config_error_message(error: BaseException, argv) -> str:
    """One line naming the command-line argument a config error came from, the problem and the fix
    (ml_collections' messages span several lines: the loader's attempts, a "Did you mean" suggestion)."""
    error = _innermost(error)
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(error, (AttributeError, KeyError)) and lines:
        # Every declared model option is a field of the config (configs/base.py fills them in), so a field
        # that is not there is unknown: ml_collections' own line suggests the closest one ("Did you mean").
        field = lines[0].strip("'\"")
        culprits = [arg for arg in argv[1:] if field in arg.split("=", 1)[0].split(".")[1:]]
        hint = " ".join(lines[1:])
        if not culprits:
            return f"--config: the config has no field {field!r}. {hint}".rstrip()
        # absl's --helpfull lists no config field (config_flags defines a flag per override given only).
        listed = (f"The model options of each family: {model_options.OPTIONS_DOC}."
                  if culprits[0].split("=", 1)[0].split(".")[1:2] == ["model"] else
                  "The fields: configs/base.py (the shared ones, with defaults) and the config file.")
        return f"{culprits[0]}: the config has no field {field!r}. {hint + ' ' if hint else ''}{listed}"
    config_files = [arg for arg in argv[1:] if arg.startswith(("--config=", "-config="))]
    where = config_files[0] if config_files else "--config"
    if isinstance(error, OSError) and config_files:
        path = config_files[0].split("=", 1)[1].split(":", 1)[0]
        if not os.path.isfile(path):
            directory = os.path.dirname(path) or "."
            known = sorted(glob.glob(os.path.join(directory, "*.py")))
            choice = f"; configs in {directory}/: {', '.join(known)}" if known else ""
            return f"{where}: no such config file{choice}"
    return f"{where}: {lines[-1] if lines else type(error).__name__}"


_CONFIG_FILE_ERROR = re.compile(r"^flag (?P<flag>--?\w+=(?P<path>[^:\s]+)(:(?P<argument>\S*))?): Error whilst parsing "
                                r"config file:", re.DOTALL)
_NO_ARGUMENT = re.compile(r"get_config\(\) takes 0 positional arguments but \d+ (was|were) given")


def _config_file_error_message(text: str) -> Optional[str]:
    """One line for a config file that raised while ml_collections loaded it (absl's message holds the whole
    traceback): the flag, then the exception's own line, or the fix when the file takes no argument after
    the colon. None for any other flag error."""
    match = _CONFIG_FILE_ERROR.match(text)
    if not match:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if _NO_ARGUMENT.search(last):
        return (f"{match.group('flag')}: {match.group('path')} takes no argument after ':' (got "
                f"{match.group('argument')!r}); use --config={match.group('path')}")
    return f"{match.group('flag')}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', last)}"


def exit_on_user_error(program: str, main):
    """Wraps an absl ``main`` so that a user error, a usage error or Ctrl-C ends in one line and the exit
    status of the module docstring; the traceback still goes to the debug log (``--verbosity=1``)."""

    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            logging.debug("%s", traceback.format_exc())
            fail(program, f"{error} (--help lists the flags)", EXIT_USAGE_ERROR)
        except USER_ERRORS as error:
            logging.debug("%s", traceback.format_exc())
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            fail(program, str(message), EXIT_USER_ERROR)
        except KeyboardInterrupt as interrupt:
            _end_open_line()
            # A training run interrupted between steps says where its checkpoint is (train/callbacks.py).
            step = getattr(interrupt, "step", None)
            if step is None:
                print(f"{program}: interrupted", file=sys.stderr, flush=True)
            else:
                print(f"{program}: interrupted at step {step}; rerun the same command to resume", file=sys.stderr,
                      flush=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapped


def parse_flags(program: str, argv):
    """absl flag parsing that ends any usage error in one ``error:`` line with exit status 2 (absl prints
    ``FATAL Flags parsing error`` and exits 1; a bad config file or override is a traceback)."""
    try:
        remaining = flags.FLAGS(argv)
        # A config file that failed to load only raises when its value is read: read every value now.
        for name in flags.FLAGS:
            load_error = getattr(flags.FLAGS[name].value, "_error", None)
            if isinstance(load_error, BaseException):
                raise load_error
        # A misspelt config.model key fails here, before any data is read (ValueError naming the closest option).
        for name in flags.FLAGS:
            value = flags.FLAGS[name].value
            if isinstance(value, ml_collections.ConfigDict) and "name" in value.get("model", {}):
                model_options.resolve(value.model)
    except flags.Error as error:
        logging.debug("%s", traceback.format_exc())
        fail(program, _config_file_error_message(str(error)) or f"{error} (--help lists the flags)",
             EXIT_USAGE_ERROR)
    except CONFIG_ERRORS as error:
        logging.debug("%s", traceback.format_exc())
        fail(program, _config_error_message(error, argv), EXIT_USAGE_ERROR)
    return remaining


def run_binary(program: str, module_name: str, doc: str, main) -> None:
    """``app.run`` for a console script.

    absl's ``--help`` lists the flags of ``sys.argv[0]``'s module, which for a console script is the
    generated wrapper that defines none; so help is answered here with the binary's docstring and the
    flags its module defines (``--helpfull`` still lists every flag of every library).
    """

    def parse(argv):
        if any(arg in _HELP_ARGS for arg in argv[1:]):
            print(doc.strip() + "\n")
            print(flags.FLAGS.module_help(module_name))
            sys.exit(0)
        return parse_flags(program, argv)

    if not isinstance(sys.stdout, _LineTrackingStream):
        sys.stdout = _LineTrackingStream(sys.stdout)
        logging.get_absl_handler().addFilter(_LogOnItsOwnLine())
    app.run(exit_on_user_error(program, main), flags_parser=parse)
