"""Optional dependencies: check for one before any slow work, and name the extra that installs it.

``require("matplotlib", "plots", "eval --plots")`` returns the module, or raises
:class:`MissingDependency` (an ``ImportError``) whose one-line message says what needs it and the
``pip install 'rtseg[<extra>]'`` that fixes it. The CLI prints that line and exits 2 -- so call
``require`` at the top of the work (before a model is built, a dataset read or an evaluation run),
not where the module is first used after minutes of work.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependency", "require"]


class MissingDependency(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency`: ``<what> needs <pkg>: pip install 'rtseg[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = module.split(".")[0]
        why = "not installed" if isinstance(e, ModuleNotFoundError) else f"import failed: {e}"
        raise MissingDependency(f"{what} needs {pkg} ({why}): pip install 'rtseg[{extra}]'") from None


def require_runtime(backend: str = "torch", precision: str = "fp32") -> None:
    """Check the packages a Segmenter/bench backend and precision need (before any model is built or exported).

    ``onnxruntime`` and ``openvino`` backends run an ONNX export first (``onnx``); OpenVINO int8 is NNCF.
    """
    if backend in ("onnxruntime", "openvino"):
        require("onnx", "deploy", f"backend {backend!r} (ONNX export)")
        require(backend, "deploy", f"backend {backend!r}")
        if backend == "openvino" and precision == "int8":
            require("nncf", "deploy", "int8 with openvino")


def require_export(fmt: str) -> None:
    """Check the packages ``export(format=fmt)`` needs: ``onnx`` for ONNX, plus ``openvino`` for IR."""
    if fmt in ("onnx", "openvino"):
        require("onnx", "deploy", f"export to {fmt}")
    if fmt == "openvino":
        require("openvino", "deploy", "export to openvino")
