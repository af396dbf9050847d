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

#: subcommand modules, in the order they appear in ``rtseg --help``
COMMAND_MODULES = [
    "rtseg._cli.models",
    "rtseg._cli.eval",
    "rtseg._cli.train",
    "rtseg._cli.demo",
    "rtseg._cli.report",
    "rtseg._cli.export", "rtseg._cli.predict", "rtseg._cli.bench", "rtseg._cli.weights",
    "rtseg._cli.serve",
]


class UsageError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> ``(512, 1024)`` (H x W); argparse type with a clear message."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"malformed size {text!r}: expected HxW, e.g. 512x1024") from None
    return h, w


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage otherwise)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from rtseg import __version__

    parser = _Parser(prog="rtseg", description="Real-time semantic segmentation toolkit.")
    parser.add_argument("--version", action="version", version=f"rtseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, OSError, KeyError, ValueError) as e:  # CheckpointError/ConfigError are ValueErrors
        if os.environ.get("RTSEG_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"rtseg {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rtseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: subcommands raise rtseg.cli.UsageError,
    # which is a different class from __main__.UsageError.
    from rtseg.cli import main as _main

    sys.exit(_main())
