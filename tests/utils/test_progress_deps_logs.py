"""utils: log-file progress lines, optional-dependency checks, third-party log levels."""

from __future__ import annotations

import io
import logging
import time

import pytest

from rtseg.utils.deps import MissingDependency, require, require_runtime
from rtseg.utils.logs import quiet_third_party, third_party_quiet
from rtseg.utils.progress import LogProgress, tqdm


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_bar_is_a_few_full_lines_not_one_per_item() -> None:
    f = io.StringIO()
    bar = tqdm(total=101, desc="eval camvid/val", unit="img", file=f)
    assert isinstance(bar, LogProgress)
    for _ in range(101):
        bar.update(1)
        bar.set_postfix(fps="12.0")  # tqdm refreshed on every call: one redraw per image in a log
    bar.close()
    bar.close()  # idempotent
    lines = f.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in f.getvalue()
    assert lines[0].startswith("eval camvid/val: 101/101 img (100%)") and "fps=12.0" in lines[0]


def test_log_lines_follow_the_interval_and_the_counter_moves() -> None:
    f = io.StringIO()
    bar = LogProgress(range(30), desc="full 1/3", file=f, interval=0.05)
    for i in bar:
        if i % 10 == 0:
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}", refresh=False)
        time.sleep(0.01)
    lines = f.getvalue().splitlines()
    assert 2 <= len(lines) <= 12, lines  # ~one per 50 ms over ~300 ms, plus the closing one
    counts = [int(ln.split(": ")[1].split("/")[0]) for ln in lines]
    assert counts == sorted(counts) and counts[-1] == 30 and counts[0] > 0  # never stuck at 0/N


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTSEG_PROGRESS_INTERVAL", "0")
    f = io.StringIO()
    for _ in tqdm(range(5), file=f):
        pass
    assert len(f.getvalue().splitlines()) == 6  # one per item when asked for, plus the final line


def test_in_a_terminal_it_is_tqdm() -> None:
    from tqdm import tqdm as real

    bar = tqdm(total=3, file=_Tty())
    assert isinstance(bar, real)
    bar.close()


def test_require_names_the_extra_in_one_line() -> None:
    assert require("json", "plots", "x").dumps([]) == "[]"
    with pytest.raises(MissingDependency) as e:
        require("no_such_module_rtseg", "plots", "eval --plots")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("eval --plots needs no_such_module_rtseg (not installed)")
    assert msg.endswith("pip install 'rtseg[plots]'")
    assert isinstance(e.value, ImportError)


def test_require_runtime_checks_the_backend_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    require_runtime("torch", "int8")  # nothing to check
    monkeypatch.setitem(sys.modules, "openvino", None)  # import -> ImportError
    with pytest.raises(MissingDependency, match=r"rtseg\[deploy\]"):
        require_runtime("openvino", "fp32")


def test_third_party_loggers_quiet_and_restored() -> None:
    lg = logging.getLogger("nncf")
    lg.setLevel(logging.INFO)
    with third_party_quiet():
        assert lg.level == logging.WARNING
    assert lg.level == logging.INFO
    quiet_third_party(verbose=True)
    assert lg.level == logging.INFO
    quiet_third_party()
    assert logging.getLogger("nncf").level == logging.WARNING


def test_known_nncf_noise_dropped_other_warnings_kept(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-pass 'Rollback to MINMAX ... per-channel activations' warning is dropped while quiet, others pass."""
    lg = logging.getLogger("nncf")
    handler = logging.StreamHandler()  # stands in for NNCF's own stdout handler
    lg.addHandler(handler)
    try:
        with third_party_quiet(verbose=False):
            lg.warning("Rollback to MINMAX for the target point: '4' as HistogramAggregator does not support "
                       "per-channel activations.")
            lg.warning("a real problem")
        lg.warning("after the block: does not support per-channel activations")
    finally:
        lg.removeHandler(handler)
    err = capsys.readouterr().err
    assert "a real problem" in err and "after the block" in err
    assert "Rollback to MINMAX" not in err
