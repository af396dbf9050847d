"""``rtseg report``: one self-contained HTML page that compares trained models, thesis-style.

``rtseg.report(runs, out)`` ≡ ``rtseg report RUNS... --out DIR``. For every run folder (``best.pt`` +
``metrics.jsonl`` from ``rtseg train``), rtseg checkpoint or shipped weights name it

1. evaluates the checkpoint on its own dataset's validation split (name / root / kwargs from the
   checkpoint's config; overridable), keeping per-class IoU and the confusion matrix;
2. measures params and MACs at the evaluation size (:mod:`rtseg.eval.profiler`) and the median eager
   latency on this machine (plus ONNX Runtime latency through :class:`rtseg.Segmenter` when installed);

and writes into ``out``: ``index.html`` (plain HTML, inline CSS, images referenced relatively),
PNG figures that mirror the ESSNet thesis (accuracy vs GMACs = Fig. 3.10, qualitative grid =
Fig. 3.11, accuracy vs FPS = Fig. 3.12, per-class IoU = Fig. 3.13) plus confusion matrices and
training curves, and the results table as ``results.json`` and ``results.md``. Every file is
written atomically. See docs/report.md.

The package's modules follow the steps: :mod:`.sources` (what to report), :mod:`.measure` (one model),
:mod:`.figures` and :mod:`.page` (the outputs). The folder is ``reporting`` so that ``rtseg.reporting.report`` stays
the function without shadowing a module.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rtseg.checkpoint import load_checkpoint
from rtseg.data.registry import build_dataset
from rtseg.eval.metrics import pyplot, to_jsonable
from rtseg.reporting.figures import colors, write_figures
from rtseg.reporting.measure import BACKENDS, Entry, measure_entry, ort_available
from rtseg.reporting.page import fmt, lat_cell, markdown, render_html
from rtseg.reporting.sources import Source, assign_labels, dataset_spec, group_labels, resolve_source
from rtseg.utils.deps import require_runtime
from rtseg.utils.io import atomic_write_text
from rtseg.utils.machine import machine_info

__all__ = ["BACKENDS", "report"]


def report(
    runs: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike = "report",
    *,
    dataset: str | None = None,
    root: str | os.PathLike | None = None,
    split: str | None = None,
    dataset_kwargs: dict[str, Any] | None = None,
    max_images: int | None = None,
    size: tuple[int, int] | None = None,
    latency_runs: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    backends: Sequence[str] | None = None,
    samples: int = 4,
    names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    title: str = "rtseg report",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate, measure and compare trained models; write ``out/index.html`` with figures and tables.

    Args:
        runs: run folders of ``rtseg train`` (``best.pt`` and ``metrics.jsonl``), rtseg checkpoint files or
            shipped weights names.
        out: output folder (created); earlier report files it lists in ``results.json`` are replaced.
        dataset, root, split, dataset_kwargs: evaluate on this instead of each checkpoint's own dataset /
            folder / validation split (``config.val_split``, else ``"val"``) / dataset arguments.
        max_images: evaluate only the first N images of the split (quick looks; noted on the page).
        size: ``(H, W)`` at which params / MACs / latency are measured; default: the first evaluated
            image's size (the native resolution that evaluation uses).
        latency_runs, warmup: timed and untimed forward passes per backend (median reported).
        threads: CPU threads for evaluation and latency (default: all cores); torch's setting is
            restored afterwards.
        backends: latency backends from :data:`BACKENDS`; default ``torch`` plus ``onnxruntime`` when
            installed. A backend that fails is reported with its error.
        samples: images in the qualitative grid (spread evenly over the evaluated images).
        names: display labels, one per run (default: run folder name / checkpoint file stem).
        device: where to evaluate and time the eager model (default ``cuda`` when available).
        title: page title.
        progress: progress bars and one line per step.

    Returns:
        the ``results.json`` document: ``models`` (one dict per run: ``label``, ``model``, ``dataset``,
        ``split``, ``num_images``, ``size`` ``[H, W]``, ``params``, ``macs``, ``gmacs``, ``miou``,
        ``pixel_acc``, ``mean_class_acc``, ``per_class_iou``, ``confusion`` ``C x C``, ``latency``
        ``{backend: {median_ms, fps, ...} | {error}}``, ``train``), ``machine``, ``settings``,
        ``figures`` (paths relative to ``out``) and ``index`` (the page's path).
    """
    runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    backends = _check_args(runs, latency_runs, warmup, samples, max_images, size, backends)
    sources = [resolve_source(r) for r in runs]  # every argument is checked before anything slow runs
    assign_labels(sources, names)
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = int(threads or os.cpu_count() or 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # evaluation too: the one thread budget the caller gave
    try:
        entries, datasets = _measure_all(sources, dev, say, dataset=dataset, root=root, split=split,
                                         dataset_kwargs=dataset_kwargs, max_images=max_images, size=size,
                                         latency_runs=latency_runs, warmup=warmup, threads=threads,
                                         backends=backends, samples=samples, progress=progress)
    finally:
        torch.set_num_threads(old_threads)

    names_of = group_labels([e.dskey for e in entries])
    for e, c in zip(entries, colors(len(entries))):
        e.group, e.color = names_of[e.dskey], c
    say(f"writing figures to {out}")
    figs, written, palettes = write_figures(entries, datasets, out)
    results = {
        "title": title,
        "generated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"onnxruntime": None, **machine_info(dev, threads)},
        "settings": {"latency_runs": latency_runs, "warmup": warmup, "max_images": max_images,
                     "samples": samples, "backends": backends, "size": list(size) if size else None,
                     "dataset": dataset, "root": str(root) if root is not None else None, "split": split},
        "models": [e.record for e in entries],
        "figures": figs,
        "index": "index.html",
    }
    legends = {g: list(zip(names, pal.tolist())) for g, (names, pal) in palettes.items()}
    _remove_stale(out, written)
    atomic_write_text(out / "results.json", json.dumps(to_jsonable(results), indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "results.md", markdown(results, backends))
    atomic_write_text(out / "index.html", render_html(results, figs, backends, legends))
    say(f"wrote {out / 'index.html'}")
    results["index"] = str(out / "index.html")
    return results


def _check_args(runs: list, latency_runs: int, warmup: int, samples: int, max_images: int | None,
                size: tuple[int, int] | None, backends: Sequence[str] | None) -> list[str]:
    """Every argument checked before anything slow; returns the latency backends to measure."""
    if not runs:
        raise ValueError("report needs at least one run folder or checkpoint")
    if latency_runs < 1 or warmup < 0:
        raise ValueError(f"latency_runs must be >= 1 and warmup >= 0, got {latency_runs} and {warmup}")
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (H, W) with positive sides, got {size}")
    if backends is None:
        backends = ["torch"] + (["onnxruntime"] if ort_available() else [])
    backends = list(dict.fromkeys(["torch", *backends]))
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown latency backend {b!r}; choose from {', '.join(BACKENDS)}")
    if "onnxruntime" in backends and not ort_available():
        require_runtime("onnxruntime")  # MissingDependency naming the extra
    pyplot()  # fail before any slow work when matplotlib is missing
    return backends


def _measure_all(sources: list[Source], dev: torch.device, say: Any, *, dataset: str | None,
                 root: str | os.PathLike | None, split: str | None, dataset_kwargs: dict[str, Any] | None,
                 **measure_kw: Any) -> tuple[list[Entry], dict[str, Any]]:
    """Measure every source, building each evaluation dataset once (sources that share one share it)."""
    datasets: dict[str, Any] = {}
    entries: list[Entry] = []
    for k, src in enumerate(sources, 1):
        meta = load_checkpoint(src.checkpoint).get("meta") or {}
        spec = dataset_spec(meta, src.checkpoint, dataset, root, split, dataset_kwargs)
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in datasets:
            datasets[key] = build_dataset(spec["name"], root=spec["root"], split=spec["split"], **spec["kwargs"])
        say(f"[{k}/{len(sources)}] {src.label}: evaluating {src.checkpoint} on {spec['name']}/{spec['split']}")
        entry = measure_entry(src, datasets[key], key, dev, **measure_kw)
        r = entry.record
        say(f"    mIoU {fmt(r['miou'], '.2f', 100)}  {r['params'] / 1e6:.3f} M params  {r['gmacs']:.3f} GMACs"
            f" @ {r['size'][0]}x{r['size'][1]}  " + "  ".join(f"{b} {lat_cell(v)}" for b, v in r["latency"].items()))
        entries.append(entry)
    return entries, datasets


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete figures an earlier report in ``out`` listed but this one did not write (never anything else)."""
    old = out / "results.json"
    if not old.is_file():
        return
    try:
        figs = json.loads(old.read_text()).get("figures", {})
    except (ValueError, AttributeError):
        return
    listed: list[str] = []
    for v in figs.values():
        listed += list(v.values()) if isinstance(v, dict) else [v] if isinstance(v, str) else []
    for name in listed:
        p = out / name
        if p.name not in keep and p.parent == out and p.suffix == ".png" and p.is_file():
            p.unlink()
