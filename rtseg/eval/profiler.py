"""Efficiency measurement: parameters, MACs/FLOPs, peak activation memory and eager latency.

Conventions (papers differ, so rtseg always reports both and labels them):
- ``flops`` counts a multiply and an add as two operations (``torch.utils.flop_counter``, which covers
  convolutions, transposed convolutions and matrix products; element-wise ops are not counted).
- ``macs`` = ``flops / 2``: multiply-accumulates. The ESSNet thesis' "GFLOPs" are MACs; ENet's are FLOPs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from rtseg.checkpoint import load_model
from rtseg.models import create_model, list_models
from rtseg.utils.checks import check_threads
from rtseg.utils.timing import time_calls

__all__ = ["Profile", "count_flops", "count_params", "measure_latency", "peak_activation_bytes", "profile_model"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _input(size: tuple[int, int], batch: int, device: torch.device | str) -> torch.Tensor:
    return torch.rand(batch, 3, *size, device=device) if str(device) != "meta" else torch.empty(
        batch, 3, *size, device="meta")


@torch.no_grad()
def count_flops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> dict[str, Any]:
    """FLOPs and MACs of one forward pass of a ``batch x 3 x H x W`` input, with a per-operator split.

    Counting runs on the ``meta`` device when the model allows it (no arithmetic is done, so a
    1024x2048 count costs milliseconds); otherwise on the CPU.
    """
    was_training = model.training
    model.eval()
    try:
        meta = _to_meta(model)
        target, dev = (meta, "meta") if meta is not None else (model, next(model.parameters()).device)
        with FlopCounterMode(display=False) as counter:
            target(_input(size, batch, dev))
    finally:
        model.train(was_training)
    by_op = {str(k).replace("aten.", ""): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    flops = int(counter.get_total_flops())
    return {"flops": flops, "macs": flops // 2, "by_op": by_op}


def _to_meta(model: nn.Module) -> nn.Module | None:
    """A meta-device copy of ``model`` that supports a forward pass, or None."""
    import copy

    try:
        m = copy.deepcopy(model).to("meta")
        with torch.no_grad():
            m(torch.empty(1, 3, 64, 64, device="meta"))
        return m
    except Exception:  # noqa: BLE001 -- some ops have no meta kernel: fall back to real arithmetic
        return None


class _LiveMemory(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside the mode, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                ref = StorageWeakRef(st)
                self.live.setdefault(ref.cdata, (ref, st.nbytes()))
        # drop storages freed since the last op, then record the high-water mark
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


@torch.no_grad()
def peak_activation_bytes(model: nn.Module, size: tuple[int, int], batch: int = 1) -> int:
    """Peak bytes of intermediate tensors alive during one eval forward pass (weights excluded)."""
    model.eval()
    x = _input(size, batch, next(model.parameters()).device)
    with _LiveMemory() as mem:
        model(x)
    return int(mem.peak)


@torch.inference_mode()
def measure_latency(model: nn.Module, size: tuple[int, int], batch: int = 1, warmup: int = 3, runs: int = 10,
                    threads: int | None = None) -> dict[str, float]:
    """Eager latency in ms of ``model`` on a random input: median, p90, min over ``runs`` after ``warmup``."""
    threads = check_threads(threads) or os.cpu_count() or 1  # 0/None = all cores; negative: one-line error
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        dev = next(model.parameters()).device
        x = _input(size, batch, dev)
        timing = time_calls(lambda: model(x), warmup=warmup, runs=runs,
                            sync=torch.cuda.synchronize if dev.type == "cuda" else None)
    finally:
        torch.set_num_threads(old)
    return {**timing.summary(), "threads": threads}


@dataclass
class Profile:
    """Result of :func:`profile_model` (``asdict`` gives the ``rtseg profile --json`` document)."""

    model: str
    size: tuple[int, int]
    batch: int
    params: int
    macs: int
    flops: int
    peak_activation_mb: float | None = None
    latency_ms: float | None = None
    latency: dict[str, float] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)
    torch_version: str = torch.__version__

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


def profile_model(model: nn.Module | str, size: tuple[int, int] = (512, 1024), batch: int = 1,
                  num_classes: int = 19, latency: bool = True, memory: bool = True, warmup: int = 3,
                  runs: int = 10, threads: int | None = None) -> Profile:
    """Params, MACs, FLOPs, peak activation memory and median eager latency of a model.

    ``model``: an ``nn.Module``, a registry name (built with ``num_classes``), or weights -- shipped weights by
    name (``"enet_camvid"``) or an rtseg checkpoint path (their own class count; ``num_classes`` is ignored).
    """
    name = model if isinstance(model, str) else getattr(model, "rtseg_name", type(model).__name__)
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        model = (create_model(name, num_classes=num_classes) if name in list_models() and not Path(name).exists()
                 else load_model(model))
    model.eval()
    fl = count_flops(model, size, batch)
    prof = Profile(model=name, size=tuple(size), batch=batch, params=count_params(model), macs=fl["macs"],
                   flops=fl["flops"], by_op=fl["by_op"])
    if memory:
        prof.peak_activation_mb = peak_activation_bytes(model, size, batch) / 2**20
    if latency:
        prof.latency = measure_latency(model, size, batch, warmup=warmup, runs=runs, threads=threads)
        prof.latency_ms = prof.latency["median_ms"]
    return prof
