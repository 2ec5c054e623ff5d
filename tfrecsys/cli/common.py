"""What every tfrecsys binary shares: ``--help`` that lists its own flags, and one-line user errors."""

import sys
import traceback

from absl import app, flags, logging

from tfrecsys.data.input import DataError
from tfrecsys.features.schema import SchemaError

# Errors whose message is the whole story for a user (a file, feature, flag or config field named).
USER_ERRORS = (DataError, SchemaError, FileNotFoundError, FileExistsError, ValueError, KeyError)
_HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort")


def exit_on_user_error(program: str, main):
    """Wraps an absl ``main`` so a user error prints ``<program>: error: <message>`` and exits 1; the
    traceback still goes to the debug log (``--verbosity=1``)."""

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            logging.debug("%s", traceback.format_exc())
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"{program}: error: {message}", file=sys.stderr)
            sys.exit(1)

    return wrapped


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
        return app.parse_flags_with_usage(argv)

    app.run(exit_on_user_error(program, main), flags_parser=parse)
