"""Evaluate a model on a dataset split at full native resolution: ``rtseg.evaluate(...)`` / ``rtseg eval``."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rtseg.data.base import SegDataset

__all__ = ["evaluate"]


class _Indexed(torch.utils.data.Dataset):
    """``(index, image, label, instances-or-None)`` so that Cityscapes instance maps travel along."""

    def __init__(self, ds: SegDataset, n: int, instances: bool) -> None:
        self.ds, self.n, self.instances = ds, n, instances

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
        image, label = self.ds[i]
        inst = self.ds.load_instances(i) if self.instances else None  # type: ignore[attr-defined]
        return i, image, label, inst


def _collate(batch: list) -> list:
    return batch


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "out" in out:
        return out["out"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected a B x C x H x W logits tensor")


def evaluate(
    model_or_weights: nn.Module | str | os.PathLike,
    dataset: str | SegDataset = "camvid",
    root: str | os.PathLike | None = None,
    split: str = "val",
    batch_size: int = 1,
    json_out: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    plots_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    progress: bool = True,
    **dataset_kw: Any,
) -> dict[str, Any]:
    """Run a segmentation model over a dataset split and return its metrics.

    Args:
        model_or_weights: an ``nn.Module`` mapping ``B x 3 x H x W`` float RGB in [0, 1] to
            ``B x C x h x w`` logits (``C >= num_classes``; upsampled to ``H x W`` if smaller), or
            an rtseg checkpoint path / shipped weights name for :func:`rtseg.load_model`.
        dataset: a dataset name for :func:`rtseg.data.build_dataset` or a ``SegDataset``.
        root, split, dataset_kw: passed to ``build_dataset`` when ``dataset`` is a name.
        batch_size: images per forward pass (consecutive images of equal size are batched).
        json_out: write the results here as JSON (atomically; NaN written as ``null``).
        device: default ``"cuda"`` when available, else ``"cpu"``.
        num_workers: ``DataLoader`` worker processes for decoding.
        plots_dir: also save ``confusion.png`` and ``per_class_iou.png`` here (needs matplotlib).
        max_images: evaluate only the first N images (quick checks).
        progress: show a tqdm progress bar.

    Returns:
        the :meth:`rtseg.metrics.SegMetrics.compute` dict (plus Cityscapes iIoU/category scores
        on Cityscapes) with ``dataset``, ``split``, ``num_images``, ``model``, ``weights``,
        ``device``, ``seconds`` and ``images_per_s``.
    """
    from rtseg.data.cityscapes import Cityscapes
    from rtseg.data.registry import build_dataset
    from rtseg.metrics import CityscapesMetrics, SegMetrics, save_plots, to_jsonable

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    weights = None
    if isinstance(model_or_weights, nn.Module):
        model = model_or_weights
    else:
        from rtseg.checkpoint import load_model

        weights = str(model_or_weights)
        model = load_model(model_or_weights, map_location=dev)
    ds = (
        dataset
        if isinstance(dataset, SegDataset)
        else build_dataset(dataset, root=root, split=split, **dataset_kw)
    )
    n_model = getattr(model, "num_classes", None)
    if isinstance(n_model, int) and n_model < ds.num_classes:
        raise ValueError(f"model predicts {n_model} classes but dataset {ds.name!r} has {ds.num_classes}")
    names = (getattr(model, "rtseg_meta", None) or {}).get("class_names")
    if names and list(names)[: ds.num_classes] != list(ds.class_names):
        warnings.warn(f"model was trained on classes {list(names)}, evaluating on {list(ds.class_names)}")

    is_cs = isinstance(ds, Cityscapes)
    metrics: SegMetrics = CityscapesMetrics(ds.ignore_index) if is_cs else SegMetrics(
        ds.num_classes, ds.ignore_index, ds.class_names)  # fmt: skip
    n = len(ds) if max_images is None else min(len(ds), int(max_images))
    if n < 1:
        raise ValueError(f"nothing to evaluate: dataset {ds.name!r} split {ds.split!r} has {len(ds)} images")
    loader = torch.utils.data.DataLoader(
        _Indexed(ds, n, is_cs),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    was_training = model.training
    model.to(dev).eval()
    bar = None
    if progress:
        from rtseg._progress import tqdm

        bar = tqdm(total=n, desc=f"eval {ds.name}/{ds.split}", unit="img")
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for batch in loader:
                # group consecutive samples of one size: datasets like SUN RGB-D mix frame sizes
                groups: list[list] = []
                for item in batch:
                    if groups and groups[-1][0][1].shape == item[1].shape:
                        groups[-1].append(item)
                    else:
                        groups.append([item])
                for g in groups:
                    x = torch.from_numpy(np.stack([it[1] for it in g])).to(dev)
                    x = x.permute(0, 3, 1, 2).float().div_(255.0)
                    y = torch.from_numpy(np.stack([it[2] for it in g])).to(dev)
                    out = _logits(model(x))
                    if is_cs:
                        inst = torch.from_numpy(np.stack([it[3] for it in g]))
                        metrics.update(out, y, inst)  # type: ignore[call-arg]
                    else:
                        metrics.update(out, y)
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix(miou=f"{100 * metrics.compute()['miou']:.1f}")
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    res = metrics.compute()
    res.update(
        dataset=ds.name,
        split=ds.split,
        num_images=n,
        model=getattr(model, "rtseg_name", type(model).__name__),
        weights=weights,
        device=str(dev),
        resolution="native",
        seconds=round(seconds, 3),
        images_per_s=round(n / seconds, 3) if seconds > 0 else None,
    )
    if json_out is not None:
        from rtseg._io import atomic_write_text

        atomic_write_text(json_out, json.dumps(to_jsonable(res), indent=2, allow_nan=False) + "\n")
    if plots_dir is not None:
        res["plots"] = [str(p) for p in save_plots(res, Path(plots_dir))]
    return res
