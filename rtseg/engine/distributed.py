"""Distributed set-up: join the torchrun process group, pick each rank's device, average BN statistics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rtseg.engine.config import ConfigError
from rtseg.utils.checks import check_device

__all__ = ["DistInfo", "all_ranks_true", "init_distributed", "pick_device", "sync_buffers"]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    owns = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def pick_device(pref: str, d: DistInfo) -> torch.device:
    try:
        dev = check_device(pref, "device")  # one that exists on this machine, before any data is read
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", d.local_rank if d.world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def all_ranks_true(ok: torch.Tensor, world: int) -> bool:
    """``ok`` (a 0-dim bool tensor) on every rank: ranks must agree, or DDP's next all-reduce pairs different steps."""
    if world > 1:
        flag = ok.to(torch.float32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = flag > 0
    return bool(ok)


@torch.no_grad()
def sync_buffers(model: nn.Module, ema: Any, world: int) -> None:
    """Average BatchNorm statistics over ranks: each rank updated them on its own batches."""
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(world)
    if ema is not None:
        for e, b in zip(ema.module.buffers(), model.buffers()):
            e.copy_(b)
