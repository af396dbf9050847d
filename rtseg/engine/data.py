"""The training data path: every sample's augmentation is a function of (seed, epoch, index).

Data order is ``DistributedSampler(seed).set_epoch(global_epoch)``; augmentation draws from
``numpy.random.default_rng([seed, global_epoch, sample_index])``, so the batches of an epoch do not depend
on the worker count, the rank layout or whether the run was resumed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rtseg.data import build_dataset
from rtseg.data.base import check_dataset
from rtseg.data.transforms import pad_collate
from rtseg.engine.config import ConfigError, TrainConfig

__all__ = ["Augmented", "EpochSampler", "ShardSampler", "build_datasets", "make_loader"]


class Augmented(Dataset):
    """Wraps a SegDataset; ``ds[(index, epoch)]`` -> transformed ``(3 x h x w uint8, h x w int64)``."""

    def __init__(self, ds: Any, transform: Any, seed: int) -> None:
        self.ds, self.transform, self.seed = ds, transform, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, label = self.ds[index]
        rng = np.random.default_rng([self.seed, epoch, index])  # independent of worker and rank
        return self.transform(image, label, rng)


class EpochSampler(Sampler):
    """Tags each index of ``base`` with the epoch, so persistent workers know which epoch it is."""

    def __init__(self, base: Sampler) -> None:
        self.base, self.epoch = base, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((int(i), self.epoch) for i in self.base)

    def __len__(self) -> int:
        return len(self.base)


class ShardSampler(Sampler):
    """Rank ``r`` of ``w`` gets indices ``r, r + w, ...``: no padding, so no sample counts twice."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers do cheap per-sample work; threads would fight the model for cores


def make_loader(
    ds: Dataset,
    sampler: Sampler,
    batch_size: int,
    cfg: TrainConfig,
    device: torch.device,
    drop_last: bool,
    seed: int,
) -> DataLoader:
    workers = min(2, os.cpu_count() or 1) if cfg.workers is None else cfg.workers
    g = torch.Generator()
    g.manual_seed(seed)  # worker base seeds come from here, never from the global RNG (dropout's)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        collate_fn=functools.partial(pad_collate, ignore_index=cfg.ignore_index),
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init,
        generator=g,
        persistent_workers=cfg.persistent_workers and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def build_datasets(cfg: TrainConfig, progress: bool = False) -> tuple[Any, Any | None]:
    """The train and val datasets, every sample of both decoded once (``check_data``) before epoch 1."""
    kw = dict(cfg.dataset_kwargs)
    if cfg.cache:
        kw["cache"] = True
    train_ds = build_dataset(cfg.dataset, root=cfg.root, split=cfg.train_split, **kw)
    val_ds = build_dataset(cfg.dataset, root=cfg.root, split=cfg.val_split, **kw) if cfg.val_split else None
    for ds in (train_ds, val_ds):
        if ds is not None and len(ds) == 0:
            raise ConfigError(f"dataset {cfg.dataset!r} split {ds.split!r} has no samples (root={cfg.root})")
        if ds is not None and cfg.cache and hasattr(ds, "preload"):
            ds.preload(progress=progress)  # decode once in the parent: forked workers share the pages copy-on-write
        elif ds is not None and cfg.check_data:
            check_dataset(ds, progress=progress)  # a corrupt val image fails now, not after epoch 1
    if val_ds is not None and list(val_ds.class_names) != list(train_ds.class_names):
        raise ConfigError(
            f"{cfg.dataset}: splits {cfg.train_split!r} and {cfg.val_split!r} have different classes"
        )
    return train_ds, val_ds
