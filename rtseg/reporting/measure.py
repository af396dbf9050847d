"""Measuring one model for the report: evaluation, params / MACs, latency per backend, sample predictions."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtseg.checkpoint import load_checkpoint, load_model
from rtseg.deploy.segmenter import Segmenter
from rtseg.eval.loop import evaluate, logits_of
from rtseg.eval.profiler import count_flops, count_params, measure_latency
from rtseg.nn.grouping import convert_to_deploy, get_alpha
from rtseg.reporting.sources import Source, read_log
from rtseg.utils.timing import time_calls

__all__ = ["BACKENDS", "Entry", "architecture", "measure_entry", "ort_available", "profiled_form"]

#: latency backends the report knows; "torch" (eager) is always measured
BACKENDS = ("torch", "onnxruntime")


def profiled_form(model: nn.Module) -> tuple[nn.Module, str]:
    """The model whose cost is measured: a gradual-grouping model at alpha = 0 as its real grouped convs.

    With ``alpha > 0`` the masked convs really do the dense work, so they are measured dense.
    """
    alpha = get_alpha(model)
    if alpha is None:
        return model, "as stored"
    if alpha == 0.0:
        return convert_to_deploy(model, fold_bn=False), "grouped convs (masked model at alpha=0 converted)"
    return model, f"dense masked convs (alpha={alpha:g})"


def architecture(name: str, grouping: dict[str, Any] | None) -> str:
    """Registry name plus the checkpoint's gradual-grouping state, e.g. ``essnet_d gradual g2s (alpha=0)``."""
    if not grouping:
        return name
    g = f"g{grouping.get('groups')}{'s' if grouping.get('shuffle') else ''}"
    if grouping.get("form") == "masked":
        return f"{name} gradual {g} (alpha={grouping.get('alpha', float('nan')):g})"
    return f"{name} grouped {g}"


def ort_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


@torch.inference_mode()
def ort_latency(model: nn.Module, size: tuple[int, int], warmup: int, runs: int,
                threads: int | None) -> dict[str, Any]:
    """Median latency of the ONNX Runtime (CPU, fp32) deploy graph on a ``1 x 3 x H x W`` input."""
    div = int(getattr(model, "size_divisor", 1))
    fixed = size if size[0] % div == 0 and size[1] % div == 0 else None  # else: dynamic graph, padded input
    seg = Segmenter(model, backend="onnxruntime", size=fixed, threads=threads)
    try:
        x = torch.rand(1, 3, *size)
        timing = time_calls(lambda: seg.forward_tensor(x), warmup=warmup, runs=runs)
    finally:
        seg.close()
    return {"median_ms": timing.median_ms, "min_ms": timing.min_ms, "runs": runs, "threads": seg.threads,
            "build_s": round(seg.build_seconds, 2)}


def predict_labels(model: nn.Module, image: np.ndarray, out_hw: tuple[int, int], device: torch.device) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``H' x W'`` labels, logits upsampled to the label size as in evaluate."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255).to(device)
    out = logits_of(model(x))
    if tuple(out.shape[-2:]) != tuple(out_hw):
        out = F.interpolate(out.float(), size=out_hw, mode="bilinear", align_corners=False)
    return out.argmax(1)[0].cpu().numpy()


@dataclass
class Entry:
    """Everything measured for one model (``record`` is its results.json entry)."""

    source: Source
    record: dict[str, Any]
    eval: dict[str, Any]
    group: str  # display name of the evaluation set; per-class bars and image grids compare within one
    dskey: str  # identifies the evaluated dataset object
    picks: list[int] = field(default_factory=list)  # indices of the images shown in the qualitative grid
    samples: list[np.ndarray] = field(default_factory=list)  # predicted label maps of those images
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records
    color: Any = None  # the model's colour in every figure


def measure_entry(src: Source, ds: Any, dskey: str, dev: torch.device, *, max_images: int | None,
             size: tuple[int, int] | None, latency_runs: int, warmup: int, threads: int, backends: list[str],
             samples: int, progress: bool) -> Entry:
    """Evaluate, count and time one checkpoint; predict the qualitative images."""
    ckpt = load_checkpoint(src.checkpoint)
    meta = ckpt.get("meta") or {}
    model = load_model(src.checkpoint, map_location=dev)
    res = evaluate(model, ds, max_images=max_images, device=dev, progress=progress)
    n = res["num_images"]
    hw = tuple(size) if size is not None else tuple(ds[0][1].shape[:2])

    measured, form = profiled_form(model)
    macs = count_flops(measured, hw)["macs"]
    lat = measure_latency(measured, hw, warmup=warmup, runs=latency_runs, threads=threads)
    latency: dict[str, Any] = {"torch": {**lat, "fps": 1000.0 / lat["median_ms"], "device": str(dev)}}
    if "onnxruntime" in backends:
        try:
            cpu_model = model if dev.type == "cpu" else copy.deepcopy(model).cpu()  # ORT runs on the CPU
            o = ort_latency(cpu_model, hw, warmup, latency_runs, threads)
            latency["onnxruntime"] = {**o, "fps": 1000.0 / o["median_ms"], "device": "cpu"}
        except Exception as e:  # noqa: BLE001 -- a model that cannot be exported must not sink the report
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            latency["onnxruntime"] = {"error": f"{type(e).__name__}: {first}"}

    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(samples, n))}) if samples else []
    with torch.inference_mode():
        preds = [predict_labels(model, *image_and_shape(ds, i), dev) for i in picks]
    record = {
        "label": src.label,
        "source": src.arg,
        "checkpoint": str(src.checkpoint),
        "run_dir": str(src.run_dir) if src.run_dir is not None else None,
        "model": ckpt["model"],
        "model_kwargs": ckpt.get("model_kwargs", {}),
        "architecture": architecture(ckpt["model"], meta.get("grouping")),
        "dataset": ds.name,
        "split": ds.split,
        "root": None if getattr(ds, "root", None) is None else str(ds.root),
        "num_images": n,
        "size": list(hw),
        "params": count_params(measured),
        "macs": macs,
        "gmacs": macs / 1e9,
        "profiled_form": form,
        "miou": res["miou"],
        "pixel_acc": res["pixel_acc"],
        "mean_class_acc": res["mean_class_acc"],
        "per_class_iou": res["per_class_iou"],
        "class_names": res["class_names"],
        "confusion": res["confusion"],
        "latency": latency,
        "train": {k: meta.get(k) for k in ("stage", "epoch", "val_miou", "train_loss") if k in meta},
    }
    history = read_log(src.metrics_log) if src.metrics_log else []
    return Entry(src, record, res, f"{ds.name}/{ds.split}", dskey, picks, preds, history)


def image_and_shape(ds: Any, i: int) -> tuple[np.ndarray, tuple[int, int]]:
    img, lbl = ds[i]
    return img, tuple(lbl.shape)
