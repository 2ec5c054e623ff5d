"""The absl binaries: thin wrappers that parse flags and call the library.

Importing the package holds back library log noise (tfrecsys/cli/quiet.py) before any binary imports Beam
or exports a model; ``--verbosity`` on the command line keeps everything.
"""

from tfrecsys.cli.quiet import quiet_library_logs

quiet_library_logs()
