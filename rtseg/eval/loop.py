"""The one evaluation loop: :func:`evaluate_batches` scores a model over batches into a metric object.

Two faces use it: :func:`evaluate` (``rtseg.eval.loop`` / ``rtseg eval``: a dataset split at full native
resolution, Cityscapes instance maps included) and the training engine's validation (padded batches from
its loader, optionally the encoder's 1/8 scores, reduced over ranks).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rtseg.checkpoint import load_model
from rtseg.data.base import SegDataset
from rtseg.data.cityscapes import Cityscapes
from rtseg.data.registry import build_dataset
from rtseg.data.transforms import downsample_label
from rtseg.eval.metrics import CityscapesMetrics, SegMetrics, pyplot, save_plots, to_jsonable
from rtseg.utils.checks import check_device, plain_worker_errors
from rtseg.utils.io import atomic_write_text, check_outputs_not_inputs
from rtseg.utils.progress import tqdm

__all__ = ["autocast", "evaluate", "evaluate_batches", "logits_of", "to_input"]


def logits_of(out: Any) -> torch.Tensor:
    """The ``B x C x h x w`` logits of a model's output (a tensor, ``{"out": ...}`` or a tuple's first item)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "out" in out:
        return out["out"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected a B x C x H x W logits tensor")


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """``B x 3 x H x W`` uint8 -> float in [0, 1] on ``device`` (uint8 over the wire: 4x less copying)."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CPU, fp16 on CUDA; a no-op context when disabled."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def _stride(model: nn.Module) -> int:
    return int(getattr(getattr(model, "module", model), "output_stride", 8))


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple],
    metrics: SegMetrics,
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
    encoder_only: bool = False,
    encoder_target: str = "nearest",
    channels_last: bool = False,
    distributed: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score ``model`` over ``batches`` into ``metrics`` and return :meth:`SegMetrics.compute`'s dict.

    Each batch is ``(B x 3 x H x W uint8, B x H x W int64)`` or, for Cityscapes instance scores,
    ``(images, labels, B x H x W instance ids)``. Logits smaller than the labels are upsampled by the
    metric. With ``encoder_only`` the encoder's ``ceil(H/8) x ceil(W/8)`` scores are scored against labels
    downsampled the way stage-one training sees them. ``distributed`` reduces the counts over ranks (a no-op
    in one process); ``on_batch(n)`` is told the size of every finished batch (progress bars).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            images, labels = batch[0], batch[1]
            x = to_input(images, device, channels_last)
            y = labels.to(device, non_blocking=True)
            with autocast(device, amp):
                out = logits_of(model(x, encoder_only=True) if encoder_only else model(x))
            if encoder_only:
                y = downsample_label(y, _stride(model), encoder_target, metrics.ignore_index, metrics.num_classes)
            if len(batch) > 2 and batch[2] is not None:
                metrics.update(out.float(), y, batch[2])  # type: ignore[call-arg]
            else:
                metrics.update(out.float(), y)
            if on_batch is not None:
                on_batch(int(x.shape[0]))
    finally:
        model.train(was_training)
    if distributed:
        metrics.all_reduce()
    return metrics.compute()


class _Indexed(torch.utils.data.Dataset):
    """``(image, label, instances-or-None)`` so that Cityscapes instance maps travel along."""

    def __init__(self, ds: SegDataset, n: int, instances: bool) -> None:
        self.ds, self.n, self.instances = ds, n, instances

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image, label = self.ds[i]
        inst = self.ds.load_instances(i) if self.instances else None  # type: ignore[attr-defined]
        return image, label, inst


def _same_size_batches(loader: Iterable[list]) -> Iterator[tuple]:
    """Consecutive samples of one size as one tensor batch: datasets like SUN RGB-D mix frame sizes."""
    for batch in loader:
        groups: list[list] = []
        for item in batch:
            if groups and groups[-1][0][0].shape == item[0].shape:
                groups[-1].append(item)
            else:
                groups.append([item])
        for g in groups:
            x = torch.from_numpy(np.stack([it[0] for it in g])).permute(0, 3, 1, 2)
            y = torch.from_numpy(np.stack([it[1] for it in g]))
            inst = torch.from_numpy(np.stack([it[2] for it in g])) if g[0][2] is not None else None
            yield x, y, inst


def _resolve(model_or_weights: nn.Module | str | os.PathLike, dataset: str | SegDataset,
             root: str | os.PathLike | None, split: str, dev: torch.device,
             dataset_kw: dict[str, Any]) -> tuple[nn.Module, str | None, SegDataset]:
    """The model (loaded when given as a checkpoint or shipped name) and the dataset, checked against each other."""
    weights = None
    if isinstance(model_or_weights, nn.Module):
        model = model_or_weights
    else:
        weights = str(model_or_weights)
        model = load_model(model_or_weights, map_location=dev)
    ds = dataset if isinstance(dataset, SegDataset) else build_dataset(dataset, root=root, split=split, **dataset_kw)
    n_model = getattr(model, "num_classes", None)
    if isinstance(n_model, int) and n_model < ds.num_classes:
        raise ValueError(f"model predicts {n_model} classes but dataset {ds.name!r} has {ds.num_classes}")
    names = (getattr(model, "rtseg_meta", None) or {}).get("class_names")
    if names and list(names)[: ds.num_classes] != list(ds.class_names):
        warnings.warn(f"model was trained on classes {list(names)}, evaluating on {list(ds.class_names)}")
    return model, weights, ds


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
        progress: show a progress bar.

    Returns:
        the :meth:`rtseg.eval.metrics.SegMetrics.compute` dict (plus Cityscapes iIoU/category scores
        on Cityscapes) with ``dataset``, ``split``, ``num_images``, ``model``, ``weights``,
        ``device``, ``seconds`` and ``images_per_s``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = check_device(device, "device")  # one this machine has, before the weights and data are read
    if json_out is not None and not isinstance(model_or_weights, nn.Module) and Path(model_or_weights).is_file():
        check_outputs_not_inputs([model_or_weights], json_out, [json_out], what="json_out")  # --json best.pt
    if plots_dir is not None:
        pyplot()  # a missing matplotlib fails now, not after the whole evaluation
    model, weights, ds = _resolve(model_or_weights, dataset, root, split, dev, dataset_kw)
    is_cs = isinstance(ds, Cityscapes)
    metrics = CityscapesMetrics(ds.ignore_index) if is_cs else SegMetrics(ds.num_classes, ds.ignore_index,
                                                                           ds.class_names)
    n = len(ds) if max_images is None else min(len(ds), int(max_images))
    if n < 1:
        raise ValueError(f"nothing to evaluate: dataset {ds.name!r} split {ds.split!r} has {len(ds)} images")
    loader = torch.utils.data.DataLoader(_Indexed(ds, n, is_cs), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=list)
    model.to(dev)
    bar = tqdm(total=n, desc=f"eval {ds.name}/{ds.split}", unit="img") if progress else None
    start = time.perf_counter()
    try:
        with torch.inference_mode(), plain_worker_errors():
            res = evaluate_batches(model, _same_size_batches(loader), metrics, device=dev, distributed=False,
                                   on_batch=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    res.update(dataset=ds.name, split=ds.split, num_images=n,
               model=getattr(model, "rtseg_name", type(model).__name__), weights=weights, device=str(dev),
               resolution="native", seconds=round(seconds, 3),
               images_per_s=round(n / seconds, 3) if seconds > 0 else None)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(to_jsonable(res), indent=2, allow_nan=False) + "\n")
    if plots_dir is not None:
        res["plots"] = [str(p) for p in save_plots(res, Path(plots_dir))]
    return res
