"""What machine produced a number: CPU model and ISA flags, cores, load, library versions.

The one reader of ``/proc/cpuinfo`` in rtseg; benchmarks, the report and the weights index all record
:func:`machine_info` next to the numbers they measure.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "cpu_name", "cpu_supports_bf16", "machine_info"]

#: ISA extensions that change which kernels (and so which speeds) a CPU gets
ISA_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: the model name from platform, no flags
        pass
    return name or platform.processor() or platform.machine(), flags


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` is not available)."""
    return _cpuinfo()[1]


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16). Without it bf16 is emulated:
    bf16 inference is refused and bf16 autocast training is slower than fp32 (ESSNet-D, batch 4 at 360x480
    on a 2-vCPU AMD EPYC without AVX-512: ~9.0 s a step in bf16 autocast against 2.1-3.5 s in fp32)."""
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        return True
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (ImportError, AttributeError, RuntimeError):
        return False


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a broken optional install is reported as absent
        return None


def machine_info(device: Any = None, threads: int | None = None) -> dict[str, Any]:
    """CPU model and flags of interest, cores, load, platform and library versions.

    ``device`` (a ``torch.device``) adds the accelerator's name, ``threads`` the thread count the
    measurement used. Optional runtimes (ONNX Runtime, OpenVINO, NNCF) appear only when installed.
    """
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "isa": sorted(f for f in cpu_flags() if f in ISA_OF_INTEREST),
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device is not None:
        dev = torch.device(device)
        info["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    if threads is not None:
        info["threads"] = threads
    for mod in ("onnxruntime", "openvino", "nncf"):
        v = _version(mod)
        if v is not None:
            info[mod] = v
    return info
