"""Packaging trained runs as shipped weights: evaluate, profile, write the file and its index record.

``scripts/ship_weights.py`` and ``scripts/bench_weights.py`` drive these; the read side that resolves a
shipped name to a verified file is :mod:`rtseg.hub`, four layers below (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from rtseg.checkpoint import load_model, save_model
from rtseg.data import build_dataset
from rtseg.errors import CheckpointError
from rtseg.eval.loop import evaluate
from rtseg.eval.profiler import count_flops, count_params
from rtseg.hub import INDEX, WEIGHTS_DIR, read_index, sha256
from rtseg.nn.grouping import convert_to_deploy
from rtseg.utils.io import atomic_write_text
from rtseg.utils.machine import cpu_name

__all__ = ["package_weights", "record_int8_keep_float", "record_latency"]


def _write_index(weights_dir: Path, index: dict[str, dict[str, Any]]) -> None:
    atomic_write_text(weights_dir / INDEX, json.dumps(dict(sorted(index.items())), indent=2) + "\n")


def package_weights(
    checkpoint: str | os.PathLike,
    name: str,
    command: str,
    root: str | os.PathLike | None = None,
    *,
    split: str = "val",
    macs_size: tuple[int, int] | None = None,
    train_time_s: float | None = None,
    wall_time_s: float | None = None,
    notes: str = "",
    init: str = "",
    log: str | os.PathLike | None = None,
    weights_dir: Path | None = None,
    progress: bool = False,
    **dataset_kw: Any,
) -> dict[str, Any]:
    """Evaluate a trained checkpoint, write it as shipped weights ``name`` and record it in the index.

    A gradual-grouping checkpoint (masked convs, alpha 0) is first converted to its natively grouped model
    (:func:`rtseg.nn.grouping.convert_to_deploy` without BN folding). ``val_miou`` etc. come from
    :func:`rtseg.eval.loop` on ``split`` of the checkpoint's dataset at the labels' full resolution in
    fp32; params and MACs from :mod:`rtseg.eval.profiler` at ``macs_size`` (default: the first label's size).
    ``dataset_kw`` go to :func:`rtseg.data.build_dataset`. ``log`` is the committed folder (relative to the
    repo) holding the run's ``config.yaml`` and ``metrics.jsonl``; ``init`` says what training started from
    (e.g. "scratch", "author's Cityscapes ESSNet-D", "author's ImageNet DG2 encoder"); ``rtseg report NAME`` draws its training
    curves from it (``run`` records where training wrote, usually an untracked ``runs/`` folder). Returns the
    record.
    """
    d = weights_dir or WEIGHTS_DIR
    model = load_model(checkpoint)
    meta = dict(getattr(model, "rtseg_meta", {}) or {})
    trained_as = model.rtseg_name
    if (meta.get("grouping") or {}).get("form") == "masked":
        model = convert_to_deploy(model, fold_bn=False)  # -> essnet_dg{g}s etc., an ordinary checkpoint
    dataset = meta.get("dataset")
    if not dataset:
        raise CheckpointError(f"{checkpoint}: no dataset recorded in its metadata; cannot evaluate it")
    ds = build_dataset(dataset, root, split=split, **dataset_kw)
    t0 = time.perf_counter()
    metrics = evaluate(model, ds, progress=progress)
    eval_s = time.perf_counter() - t0
    size = tuple(macs_size) if macs_size is not None else tuple(ds[0][1].shape[-2:])
    flops = count_flops(model, size)
    config = meta.get("config")
    record = {
        "name": name,
        "model": model.rtseg_name,
        "trained_as": trained_as,
        "dataset": dataset,
        "split": split,
        "classes": list(meta.get("class_names") or []),
        "val_miou": metrics["miou"],
        "val_pixel_acc": metrics["pixel_acc"],
        "val_mean_class_acc": metrics["mean_class_acc"],
        "per_class_iou": metrics["per_class_iou"],
        "eval": f"rtseg.eval.loop, fp32, {len(ds)} {split} images at their full resolution ({eval_s:.0f} s)",
        "params": count_params(model),
        "macs": flops["macs"],
        "macs_size": list(size),
        "command": command,
        "train_time_s": train_time_s,
        "wall_time_s": wall_time_s,
        "epoch": meta.get("epoch"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "notes": notes,
        "init": init or None,
        # the run folder (training log) when the checkpoint sits in one, as given (relative to the repo)
        "run": str(Path(checkpoint).parent) if (Path(checkpoint).parent / "metrics.jsonl").is_file() else None,
        "log": None if log is None else str(log),
    }
    d.mkdir(parents=True, exist_ok=True)
    path = save_model(
        model,
        d / f"{name}.pt",
        class_names=record["classes"],
        dataset=dataset,
        epoch=meta.get("epoch"),
        val_miou=record["val_miou"],
        trained_as=trained_as,
        command=command,
        **({"config": config} if config is not None else {}),
    )
    record["sha256"] = sha256(path)
    record["file_bytes"] = path.stat().st_size
    index = read_index(d)
    index[name] = record
    _write_index(d, index)
    return record


def record_int8_keep_float(name: str, modules: list[str], evidence: dict[str, Any],
                           weights_dir: Path | None = None) -> dict:
    """Store the module paths int8 keeps in float for shipped weights ``name`` (found by accuracy-controlled
    quantization, :class:`rtseg.Segmenter` ``int8_control``) with how they were found; ``Segmenter`` uses
    them by default for these weights. The weights file itself is unchanged."""
    d = weights_dir or WEIGHTS_DIR
    index = read_index(d)
    if name not in index:
        raise KeyError(f"{name}: not a shipped weights name ({', '.join(sorted(index)) or 'none shipped'})")
    index[name]["int8_keep_float"] = list(modules)
    index[name]["int8"] = dict(evidence)
    _write_index(d, index)
    return index[name]


def record_latency(name: str, rows: list[Any], machine: dict[str, Any], weights_dir: Path | None = None,
                   repeat: int = 1) -> dict:
    """Store ``rtseg.deploy.bench`` rows of shipped weights ``name`` in its index record (``latency_ms`` by
    ``backend/precision``, with size, threads, the machine and ``repeat``: how many runs the rows are the
    median of); the weights file itself is unchanged."""
    d = weights_dir or WEIGHTS_DIR
    index = read_index(d)
    if name not in index:
        raise FileNotFoundError(f"{name}: not in {d / INDEX}")
    rec = index[name]
    deploy = [r for r in rows if r.setting.startswith("deploy")]
    rec["latency_ms"] = {f"{r.backend}/{r.precision}": round(r.p50_ms, 2) for r in deploy}
    argmax = any(r.setting == "deploy+argmax" for r in deploy)
    rec["latency"] = {
        "size": list(rows[0].size),
        "threads": rows[0].threads,
        "batch": 1,
        "statistic": "p50 after warm-up, deploy form" + (" with the argmax in the graph" if argmax else ""),
        "repeat": repeat,
        "machine": {k: machine.get(k) for k in ("cpu", "isa", "cores", "load_avg", "torch", "onnxruntime", "openvino")},
        "date": time.strftime("%Y-%m-%d"),
    }
    kept = sorted({m for r in deploy for m in getattr(r, "int8_keep_float", [])})
    if kept:  # the int8 row ran with these modules in float
        rec["latency"]["int8_keep_float"] = kept
    _write_index(d, index)
    return rec
