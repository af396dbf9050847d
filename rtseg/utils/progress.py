"""tqdm with log-friendly defaults: one line a minute when stderr is not a terminal.

In a terminal a bar redraws in place; redirected to a file (``nohup ... > log``) every redraw becomes
a new line, which flooded training logs with thousands of lines. Every rtseg progress bar comes from here.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm as _tqdm

__all__ = ["tqdm"]

LOG_INTERVAL_S = 60.0


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    if not getattr(sys.stderr, "isatty", lambda: False)():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S * 10)  # no forced redraw more often than this
    return _tqdm(*args, **kwargs)
