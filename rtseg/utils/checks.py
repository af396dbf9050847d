"""Checks every layer shares: a device that exists, a thread count, an optional dependency, worker errors.

Each raises a one-line error naming the argument, so that the CLI can print it as ``rtseg CMD: error: ...``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["check_device", "check_threads", "parse_device", "plain_worker_errors", "worker_error_line"]

_DEVICE_RE = re.compile(r"^(cpu|cuda|mps|xpu)(:\d+)?$")


def parse_device(name: object, what: str = "device") -> str:
    """Syntax only (no hardware look-up): ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu[:N]``."""
    if not isinstance(name, str) or not (name == "auto" or _DEVICE_RE.match(name)):
        raise ValueError(f"{what}: {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)")
    return name


def check_device(name: str | torch.device | None, what: str = "device") -> torch.device:
    """The ``torch.device`` for ``name`` (``None``/``auto``: cuda when available, else cpu), refusing one that
    this machine does not have with a message naming ``what``."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(parse_device(name, what))
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"{what}={name}: torch sees no CUDA device on this machine (use cpu)")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{what}={name}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{what}={name}: MPS is not available on this machine (use cpu)")
    elif dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ValueError(f"{what}={name}: no XPU device on this machine (use cpu)")
    return dev


def check_threads(n: int | None, what: str = "threads") -> int | None:
    """``None`` or ``0`` -> ``None`` (all cores); ``>= 1`` as given; anything else a one-line ``ValueError``."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be >= 1 (or 0 = all cores), got {n!r}")
    if n > 4096:
        raise ValueError(f"{what}={n}: more threads than any machine has cores (this one: {os.cpu_count()})")
    return n or None


def worker_error_line(exc: BaseException) -> str | None:
    """The original one-line message of an exception re-raised by a ``DataLoader`` worker (whose message torch
    prefixes with ``Caught X in DataLoader worker process N`` and the worker's traceback); ``None`` otherwise."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    if not text.startswith("Caught ") or "DataLoader worker" not in text.splitlines()[0]:
        return None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1].strip()
    name = type(exc).__name__
    for prefix in (f"{name}: ", f"{type(exc).__module__}.{name}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.replace(".", "").replace("_", "").isalnum() else last


@contextmanager
def plain_worker_errors() -> Iterator[None]:
    """Re-raise a ``DataLoader`` worker's error as the same one-line error it would have been in-process."""
    try:
        yield
    except Exception as e:
        line = worker_error_line(e)
        if line is None:
            raise
        try:
            new = type(e)(line)
        except Exception:  # noqa: BLE001  (a type whose constructor wants other arguments)
            new = RuntimeError(line)
        raise new from None
