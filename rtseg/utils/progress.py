"""Progress bars that behave both in a terminal and in a log file. Every rtseg progress bar comes from here.

In a terminal (stderr is a TTY) :func:`tqdm` is plain tqdm: one bar redrawn in place. Redirected to a file
(CI, ``nohup ... > log``) tqdm's redraws are ``\\r``-separated rewrites of one line, and every forced refresh
(``set_postfix`` refreshes on each call unless told otherwise) is one more copy: an evaluation of 101 images
wrote 104 of them, and a training bar sat at ``0/37`` while its postfix was rewritten. So off a terminal
:func:`tqdm` returns a :class:`LogProgress` instead -- the same calls (iterate, ``update``, ``set_postfix``,
``set_description``, ``close``) -- which prints one complete line (``desc: n/total pct elapsed rate postfix``)
at most every :data:`LOG_INTERVAL_S` seconds and one final line on close, whatever the number of items and
however often the postfix changes. ``RTSEG_PROGRESS_INTERVAL`` (seconds) changes the interval.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm as _tqdm

__all__ = ["LOG_INTERVAL_S", "LogProgress", "is_terminal", "tqdm"]

#: seconds between two lines of a progress bar written to a file (CI logs, nohup)
LOG_INTERVAL_S = 10.0


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("RTSEG_PROGRESS_INTERVAL", LOG_INTERVAL_S)))
    except ValueError:
        return LOG_INTERVAL_S


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class LogProgress:
    """A progress reporter for log files: full lines, time-limited, never one per item (see the module doc).

    Accepts tqdm's constructor arguments; those that only matter for drawing (``dynamic_ncols``, ``leave``,
    ``ncols``, ...) are ignored.
    """

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: float | None = None,
                 unit: str = "it", disable: bool = False, file: Any = None, initial: float = 0,
                 interval: float | None = None, **_drawing: Any) -> None:
        self.iterable, self.desc, self.unit, self.disable = iterable, desc or "", unit, bool(disable)
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.total, self.n = total, initial
        self.file = file
        self.interval = _interval() if interval is None else float(interval)
        self.start_t = time.monotonic()
        self._last_line = self.start_t  # the first line comes after one interval, not at n=0
        self._postfix = ""
        self._closed = False
        self.lines = 0  # lines written so far (tests and callers may read it)

    # -- tqdm's interface -------------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress was built without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LogProgress:  # noqa: PYI034  (Self needs 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_print()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())
        self._maybe_print()  # `refresh` is ignored: a postfix change alone never forces a line

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = str(s)
        self._maybe_print()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        self._maybe_print()

    def write(self, s: str) -> None:
        print(s, file=self._out(), flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n or self.total:  # a closing summary line (nothing for a bar that never started)
            self._print()

    # -- output -----------------------------------------------------------------------------------

    def _out(self) -> Any:
        return self.file if self.file is not None else sys.stderr

    def _maybe_print(self) -> None:
        if time.monotonic() - self._last_line >= self.interval:
            self._print()

    def __str__(self) -> str:
        el = time.monotonic() - self.start_t
        n = int(self.n) if float(self.n).is_integer() else round(self.n, 2)
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            count = f"{n}/{int(self.total)} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            count = f"{n} {self.unit}"
        rate = f", {self.n / el:.2f} {self.unit}/s" if el > 0 and self.n else ""
        post = f", {self._postfix}" if self._postfix else ""
        return f"{head}{count} {_fmt_time(el)}{rate}{post}"

    def _print(self) -> None:
        if self.disable:
            return
        self._last_line = time.monotonic()
        self.lines += 1
        print(str(self), file=self._out(), flush=True)


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar in a terminal, a :class:`LogProgress` (same calls) anywhere else (files, pipes, CI)."""
    file = kwargs.get("file")
    if is_terminal(file):
        return _tqdm(*args, **kwargs)
    if args:
        kwargs["iterable"] = args[0]
        if len(args) > 1:
            kwargs["desc"] = args[1]
        if len(args) > 2:
            kwargs["total"] = args[2]
    return LogProgress(**kwargs)
