"""What every subcommand module shares: the user-error type and argument parsers."""

from __future__ import annotations

import argparse

__all__ = ["UsageError", "nonnegative_int", "parse_size", "positive_int", "threads_int"]


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


def _int_type(lo: int, hi: int | None, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"must be {rng}{what}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


#: argparse types with a range: a bad value is ``rtseg CMD: error: argument --x: must be >= 1, got 0``
positive_int = _int_type(1, None, "")
nonnegative_int = _int_type(0, None, "")
threads_int = _int_type(0, 4096, " (0 = all cores)")
