"""Weights shipped with rtseg, resolvable by name (``rtseg.load_model("enet_camvid")``).

``rtseg/weights/<name>.pt`` are ordinary rtseg checkpoints; ``rtseg/weights/index.json`` holds one record
per file -- dataset, classes, validation scores measured at the labels' full resolution, parameters, MACs
at the evaluation size, the exact training command, training time, and the file's sha256, which
:func:`resolve_weights` checks before a file is used. Records are written by :func:`package_weights`
(``scripts/ship_weights.py``) from a finished run; the README's weights table and ``rtseg report`` read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from rtseg.errors import CheckpointError

__all__ = [
    "WEIGHTS_DIR",
    "available_weights",
    "package_weights",
    "record_latency",
    "resolve_weights",
    "sha256",
    "weights_info",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
INDEX = "index.json"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cpu_name() -> str:
    from rtseg.deploy.bench import machine_info

    return machine_info().get("cpu") or platform.machine()


def _index(weights_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    p = (weights_dir or WEIGHTS_DIR) / INDEX
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: unreadable weights index ({e})") from None


def _write_index(weights_dir: Path, index: dict[str, dict[str, Any]]) -> None:
    from rtseg._io import atomic_write_text

    atomic_write_text(weights_dir / INDEX, json.dumps(dict(sorted(index.items())), indent=2) + "\n")


def available_weights(weights_dir: Path | None = None) -> list[str]:
    """Names of the shipped weights (files present and listed in the index)."""
    d = weights_dir or WEIGHTS_DIR
    return sorted(n for n in _index(d) if (d / f"{n}.pt").is_file())


def weights_info(name: str | None = None, weights_dir: Path | None = None) -> Any:
    """The index record of shipped weights ``name`` (all records, name -> record, when ``name`` is None)."""
    index = {n: r for n, r in _index(weights_dir).items() if n in available_weights(weights_dir)}
    if name is None:
        return index
    if name not in index:
        resolve_weights(name, weights_dir)  # raises the helpful error
    return index[name]


def resolve_weights(name: str, weights_dir: Path | None = None) -> Path:
    """Path of shipped weights ``name`` after checking its sha256; ``FileNotFoundError`` naming the argument
    for an unknown name, :class:`CheckpointError` for a file that does not match its recorded hash."""
    d = weights_dir or WEIGHTS_DIR
    p = d / f"{name}.pt"
    record = _index(d).get(name)
    if p.is_file() and record is not None:
        digest = sha256(p)
        if digest != record["sha256"]:
            raise CheckpointError(
                f"{p}: sha256 {digest[:12]}... does not match the recorded {record['sha256'][:12]}... "
                "(corrupted or replaced file; reinstall rtseg or re-run scripts/ship_weights.py)"
            )
        return p
    from rtseg.models._registry import suggest

    have = available_weights(d)
    hint = suggest(name, have) or (f" (shipped: {', '.join(have)})" if have else " (no weights are shipped yet)")
    raise FileNotFoundError(f"{name}: no such checkpoint file or shipped weights{hint}")


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
    log: str | os.PathLike | None = None,
    weights_dir: Path | None = None,
    progress: bool = False,
    **dataset_kw: Any,
) -> dict[str, Any]:
    """Evaluate a trained checkpoint, write it as shipped weights ``name`` and record it in the index.

    A gradual-grouping checkpoint (masked convs, alpha 0) is first converted to its natively grouped model
    (:func:`rtseg.grouping.convert_to_deploy` without BN folding). ``val_miou`` etc. come from
    :func:`rtseg.evaluate` on ``split`` of the checkpoint's dataset at the labels' full resolution in
    fp32; params and MACs from :mod:`rtseg.profiler` at ``macs_size`` (default: the first label's size).
    ``dataset_kw`` go to :func:`rtseg.data.build_dataset`. ``log`` is the committed folder (relative to the
    repo) holding the run's ``config.yaml`` and ``metrics.jsonl``; ``rtseg report NAME`` draws its training
    curves from it (``run`` records where training wrote, usually an untracked ``runs/`` folder). Returns the
    record.
    """
    import torch

    from rtseg.checkpoint import load_model, save_model
    from rtseg.data import build_dataset
    from rtseg.evaluate import evaluate
    from rtseg.grouping import convert_to_deploy
    from rtseg.profiler import count_flops, count_params

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
        "eval": f"rtseg.evaluate, fp32, {len(ds)} {split} images at their full resolution ({eval_s:.0f} s)",
        "params": count_params(model),
        "macs": flops["macs"],
        "macs_size": list(size),
        "command": command,
        "train_time_s": train_time_s,
        "wall_time_s": wall_time_s,
        "epoch": meta.get("epoch"),
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "notes": notes,
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
    index = _index(d)
    index[name] = record
    _write_index(d, index)
    return record


def record_int8_keep_float(name: str, modules: list[str], evidence: dict[str, Any],
                           weights_dir: Path | None = None) -> dict:
    """Store the module paths int8 keeps in float for shipped weights ``name`` (found by accuracy-controlled
    quantization, :class:`rtseg.Segmenter` ``int8_control``) with how they were found; ``Segmenter`` uses
    them by default for these weights. The weights file itself is unchanged."""
    d = weights_dir or WEIGHTS_DIR
    index = _index(d)
    if name not in index:
        raise KeyError(f"{name}: not a shipped weights name ({', '.join(sorted(index)) or 'none shipped'})")
    index[name]["int8_keep_float"] = list(modules)
    index[name]["int8"] = dict(evidence)
    _write_index(d, index)
    return index[name]


def record_latency(name: str, rows: list[Any], machine: dict[str, Any], weights_dir: Path | None = None) -> dict:
    """Store ``rtseg.deploy.bench`` rows of shipped weights ``name`` in its index record (``latency_ms`` by
    ``backend/precision``, with size, threads and the machine); the weights file itself is unchanged."""
    d = weights_dir or WEIGHTS_DIR
    index = _index(d)
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
        "machine": {k: machine.get(k) for k in ("cpu", "cores", "load_avg", "torch", "onnxruntime", "openvino")},
        "date": time.strftime("%Y-%m-%d"),
    }
    kept = sorted({m for r in deploy for m in getattr(r, "int8_keep_float", [])})
    if kept:  # the int8 row ran with these modules in float
        rec["latency"]["int8_keep_float"] = kept
    _write_index(d, index)
    return rec
