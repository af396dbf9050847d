"""The bottom layer: the one timing loop and the one machine reader."""

from __future__ import annotations

import pytest

from rtseg.utils.machine import cpu_flags, cpu_name, machine_info
from rtseg.utils.timing import percentile, time_calls


def test_time_calls_runs_warmup_untimed_then_times_each_call() -> None:
    calls = []
    t = time_calls(lambda: calls.append(1), warmup=2, runs=5)
    assert len(calls) == 7 and t.runs == 5 and t.warmup == 2
    assert t.times_ms == sorted(t.times_ms) and t.min_ms <= t.median_ms <= t.p90_ms
    synced = []
    time_calls(lambda: None, warmup=0, runs=3, sync=lambda: synced.append(1))
    assert len(synced) == 4  # once before the first clock read, then after each call
    with pytest.raises(ValueError, match="runs"):
        time_calls(lambda: None, runs=0)


def test_percentile_is_nearest_rank() -> None:
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(xs, 0.0) == 1.0 and percentile(xs, 0.5) == 3.0 and percentile(xs, 1.0) == 5.0


def test_machine_info_names_the_cpu_and_library_versions() -> None:
    import torch

    info = machine_info(torch.device("cpu"), threads=2)
    assert info["cpu"] == cpu_name() and info["cpu"]
    assert info["torch"] == torch.__version__ and info["device"] == "CPU" and info["threads"] == 2
    assert set(info["isa"]) <= set(cpu_flags())
