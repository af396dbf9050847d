"""What every subcommand module shares: the user-error type and argument parsers."""

from __future__ import annotations

import argparse

__all__ = ["UsageError", "parse_size"]


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
