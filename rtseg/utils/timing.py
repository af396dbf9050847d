"""The one timing loop: warm-up calls, then timed calls, summarised as median / percentiles.

Every latency rtseg reports (``rtseg profile``, ``rtseg bench``, ``rtseg report``) comes from
:func:`time_calls`, so their numbers are comparable: same warm-up rule, same clock, same statistics.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Timing", "percentile", "time_calls"]


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 1] of an ascending list."""
    return sorted_ms[min(len(sorted_ms) - 1, round(q * (len(sorted_ms) - 1)))]


@dataclass
class Timing:
    """Milliseconds per call over ``runs`` timed calls (after ``warmup`` untimed ones)."""

    times_ms: list[float]
    warmup: int

    @property
    def runs(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p50_ms(self) -> float:
        return percentile(self.times_ms, 0.5)

    @property
    def p90_ms(self) -> float:
        return percentile(self.times_ms, 0.9)

    @property
    def min_ms(self) -> float:
        return self.times_ms[0]

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.times_ms)

    def summary(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "min_ms": self.min_ms, "runs": self.runs}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(fn: Callable[[], Any], *, warmup: int = 3, runs: int = 10,
               sync: Callable[[], None] | None = None) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then ``runs`` times timed; ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read so asynchronous devices are timed honestly."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(max(0, warmup)):
        fn()
    if sync is not None:
        sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return Timing(sorted(times), warmup)
