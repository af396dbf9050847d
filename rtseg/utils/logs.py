"""Third-party chatter off unless asked for: NNCF's INFO lines and rich progress bars, OpenVINO/ONNX logs.

NNCF logs at INFO to stdout and draws its own (rich) bars during calibration, interleaved with rtseg's
output and multiplied by every statistics pass. :func:`quiet_third_party` raises those loggers to WARNING
and mutes rich's global console (rtseg itself never uses rich), process-wide; the CLI calls it unless
``--verbose``. :func:`third_party_quiet` does the same for a ``with`` block and restores the levels after it
(for library calls such as the Segmenter's int8 calibration).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["NOISY_LOGGERS", "quiet_third_party", "third_party_quiet"]

#: loggers of the libraries rtseg drives that log at INFO by default
NOISY_LOGGERS = ("nncf", "openvino", "onnxruntime", "onnxscript", "torch.onnx", "torch.export")
_VERBOSE = [False]  # set by the CLI's --verbose: library calls then leave the chatter on too


class _KnownNoise(logging.Filter):
    """Drops NNCF warnings that rtseg's own settings cause on purpose and that repeat on every calibration
    pass: the histogram range estimator (docs/deploy.md) falls back to min/max at per-channel activation
    points ("Rollback to RangeEstimatorParametersSet.MINMAX ... per-channel activations") -- expected, and
    printed dozens of times by accuracy-controlled quantization."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not support per-channel activations" not in record.getMessage()


_NOISE = _KnownNoise()


def _rich_console():  # rich is an NNCF dependency; absent -> nothing to mute
    try:
        from rich import get_console
    except ImportError:
        return None
    return get_console()


def quiet_third_party(verbose: bool = False) -> None:
    """Process-wide: third-party loggers at WARNING (``verbose``: INFO) and rich's console muted (unmuted)."""
    _VERBOSE[0] = verbose
    level = logging.INFO if verbose else logging.WARNING
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for h in logger.handlers:  # NNCF sets its handler's own level to INFO
            h.setLevel(level)
            if verbose:
                h.removeFilter(_NOISE)
            else:
                h.addFilter(_NOISE)
    console = _rich_console()
    if console is not None:
        console.quiet = not verbose
    if not verbose:
        os.environ.setdefault("ORT_LOGGING_LEVEL", "3")  # onnxruntime's C++ log: errors only


@contextmanager
def third_party_quiet(verbose: bool | None = None) -> Iterator[None]:
    """:func:`quiet_third_party` for a block; the previous levels and console state come back after it.
    ``verbose=None``: as the process was set (``rtseg --verbose``)."""
    verbose = _VERBOSE[0] if verbose is None else verbose
    outer = _VERBOSE[0]
    saved = {}
    for name in NOISY_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = (lg.level, [(h, h.level, _NOISE in h.filters) for h in lg.handlers])
    console = _rich_console()
    was_quiet = console.quiet if console is not None else None
    quiet_third_party(verbose)
    try:
        yield
    finally:
        for name, (lvl, hs) in saved.items():
            logging.getLogger(name).setLevel(lvl)
            for h, hl, had in hs:
                h.setLevel(hl)
                if not had:
                    h.removeFilter(_NOISE)
        if console is not None:
            console.quiet = was_quiet
        _VERBOSE[0] = outer
