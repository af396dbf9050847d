"""``rtseg`` command line: a thin shell over the Python API, one module per subcommand group.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, adding parsers whose
``func(args) -> int`` does the work by calling the public Python API with the same words.
Errors a user can fix (bad argument, missing file, unknown model) exit with status 2 and one
line on stderr; set ``RTSEG_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rtseg._version import __version__
from rtseg.cli._common import UsageError, parse_size
from rtseg.errors import TrainingError
from rtseg.utils.checks import worker_error_line
from rtseg.utils.deps import MissingDependency
from rtseg.utils.logs import quiet_third_party

__all__ = ["COMMAND_MODULES", "UsageError", "build_parser", "main", "parse_size"]

#: subcommand modules, in the order they appear in ``rtseg --help``
COMMAND_MODULES = [
    "rtseg.cli.models",
    "rtseg.cli.eval",
    "rtseg.cli.train",
    "rtseg.cli.demo",
    "rtseg.cli.report",
    "rtseg.cli.export", "rtseg.cli.predict", "rtseg.cli.bench", "rtseg.cli.weights",
    "rtseg.cli.serve",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage otherwise)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rtseg", description="Real-time semantic segmentation toolkit.")
    parser.add_argument("--version", action="version", version=f"rtseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="let third-party libraries (NNCF, OpenVINO, ONNX) log at INFO and draw their own bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_third_party(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except (UsageError, OSError, KeyError, ValueError, ImportError, TrainingError, MissingDependency) as e:  # CheckpointError and
        if os.environ.get("RTSEG_DEBUG"):  # ConfigError are ValueErrors; ImportError: a missing optional package
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        msg = worker_error_line(e) or msg  # a DataLoader worker's error: its own line, not the worker traceback
        if isinstance(e, OSError) and e.filename and e.strerror:
            msg = f"{e.filename}: {e.strerror}"  # e.g. ENOSPC / EROFS while writing: the file first, like our own
        msg = " ".join(str(msg).split("\n")[0:1]) or type(e).__name__
        print(f"rtseg {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rtseg {args.command}: interrupted", file=sys.stderr)
        return 130
