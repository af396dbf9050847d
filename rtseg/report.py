"""``rtseg report``: one self-contained HTML page that compares trained models, thesis-style.

``rtseg.report(runs, out)`` ≡ ``rtseg report RUNS... --out DIR``. For every run folder (``best.pt`` +
``metrics.jsonl`` from ``rtseg train``) or rtseg checkpoint it

1. evaluates the checkpoint on its own dataset's validation split (name / root / kwargs from the
   checkpoint's config; overridable), keeping per-class IoU and the confusion matrix;
2. measures params and MACs at the evaluation size (:mod:`rtseg.profiler`) and the median eager
   latency on this machine (plus ONNX Runtime latency through :class:`rtseg.deploy.Segmenter`
   when both are installed);

and writes into ``out``: ``index.html`` (plain HTML, inline CSS, images referenced relatively),
PNG figures that mirror the ESSNet thesis (accuracy vs GMACs = Fig. 3.10, qualitative grid =
Fig. 3.11, accuracy vs FPS = Fig. 3.12, per-class IoU = Fig. 3.13) plus confusion matrices and
training curves, and the results table as ``results.json`` and ``results.md``. Every file is
written atomically. See docs/report.md.
"""

from __future__ import annotations

import copy
import datetime as _dt
import html
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtseg._io import atomic_write_text

__all__ = ["BACKENDS", "report"]

#: latency backends the report knows; "torch" (eager) is always measured
BACKENDS = ("torch", "onnxruntime")
#: smallest / largest panel width and about the widest grid (px) of the qualitative figure
_PANEL_MIN_W, _PANEL_MAX_W, _GRID_W = 200, 480, 2000
_DPI = 110


# --------------------------------------------------------------------------------------------
# inputs: run folders and checkpoints


@dataclass
class _Source:
    """One model to report: where its checkpoint and (optional) training log are."""

    arg: str  # as the user gave it
    checkpoint: Path
    run_dir: Path | None
    metrics_log: Path | None
    label: str = ""
    shipped: bool = False  # named shipped weights (rtseg/weights/index.json)


def _resolve(arg: str | os.PathLike) -> _Source:
    """A run folder or checkpoint path -> :class:`_Source`; errors name the argument."""
    from rtseg.checkpoint import load_checkpoint

    p = Path(arg)
    if not p.exists():
        from rtseg.hub import resolve_weights, weights_info

        record = weights_info().get(str(arg))
        if record is None:
            raise FileNotFoundError(f"{arg}: no such run folder, checkpoint or shipped weights")
        ckpt = resolve_weights(str(arg))  # shipped weights by name (hash checked)
        # its training log: the committed copy ("log"), else the run folder it was trained in if at hand
        repo = Path(__file__).resolve().parents[1]
        cands = [c for k in ("log", "run") if record.get(k) for c in (repo / record[k], Path(record[k]))]
        log = next((c / "metrics.jsonl" for c in cands if (c / "metrics.jsonl").is_file()), None)
        return _Source(str(arg), ckpt, None if log is None else log.parent, log, shipped=True)
    if p.is_dir():
        ckpt = p / "best.pt"
        if not ckpt.is_file():
            what = "has no best.pt"
            if (p / "last.pt").is_file():
                what = "has last.pt but no best.pt: no epoch improved the score yet"
            raise FileNotFoundError(f"{arg}: not a run folder ({what}; expected a folder written by `rtseg train`)")
        run_dir: Path | None = p
    else:
        ckpt = p
        # a checkpoint inside a run folder (e.g. runs/x/best.pt) still has that run's training log
        run_dir = p.parent if (p.parent / "config.yaml").is_file() else None
    load_checkpoint(ckpt)  # CheckpointError names the file if it is not an rtseg checkpoint
    log = run_dir / "metrics.jsonl" if run_dir is not None else None
    return _Source(str(arg), ckpt, run_dir, log if log is not None and log.is_file() else None)


def _labels(sources: list[_Source], names: Sequence[str] | None) -> None:
    """Give every source a unique display label (run folder name, else checkpoint stem)."""
    if names is not None:
        if len(names) != len(sources):
            raise ValueError(f"{len(names)} names given for {len(sources)} runs")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {list(names)}")
        for s, n in zip(sources, names):
            s.label = str(n)
        return
    for s in sources:
        if s.shipped:  # shipped weights go by their name, not by the folder their log sits in
            s.label = s.arg
        else:
            s.label = s.run_dir.resolve().name if s.run_dir is not None else s.checkpoint.stem
    seen: dict[str, int] = {}
    for s in sources:
        if sum(o.label == s.label for o in sources) > 1:  # e.g. two runs both called "train"
            parent = (s.run_dir or s.checkpoint.parent).resolve().parent.name
            s.label = f"{parent}/{s.label}" if parent else s.label
    for s in sources:
        k = seen.get(s.label, 0)
        seen[s.label] = k + 1
        if k:
            s.label = f"{s.label}#{k + 1}"


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl`` (a torn last line from a killed run is skipped)."""
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: unreadable line skipped")
            continue
        if isinstance(rec, dict):
            rows.append(rec)
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


# --------------------------------------------------------------------------------------------
# measurement


def _dataset_spec(meta: dict[str, Any], ckpt: Path, dataset: str | None, root: str | os.PathLike | None,
                  split: str | None, dataset_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Which dataset / root / split / kwargs to evaluate a checkpoint on (overrides win)."""
    cfg = meta.get("config") or {}
    trained_on = cfg.get("dataset") or meta.get("dataset")
    name = dataset or trained_on
    if not name:
        raise ValueError(f"{ckpt}: the checkpoint does not record its dataset; pass dataset= (--dataset)")
    same = trained_on is not None and name.lower() == str(trained_on).lower()
    kw = dict(cfg.get("dataset_kwargs") or {}) if same else {}
    kw.update(dataset_kwargs or {})
    return {
        "name": name,
        "root": str(root) if root is not None else (cfg.get("root") if same else None),
        "split": split or (cfg.get("val_split") if same else None) or "val",
        "kwargs": kw,
    }


def _profiled_form(model: nn.Module) -> tuple[nn.Module, str]:
    """The model whose cost is measured: a gradual-grouping model at alpha = 0 as its real grouped convs.

    With ``alpha > 0`` the masked convs really do the dense work, so they are measured dense.
    """
    from rtseg.grouping import convert_to_deploy, get_alpha

    alpha = get_alpha(model)
    if alpha is None:
        return model, "as stored"
    if alpha == 0.0:
        return convert_to_deploy(model, fold_bn=False), "grouped convs (masked model at alpha=0 converted)"
    return model, f"dense masked convs (alpha={alpha:g})"


def _architecture(name: str, grouping: dict[str, Any] | None) -> str:
    """Registry name plus the checkpoint's gradual-grouping state, e.g. ``essnet_d gradual g2s (alpha=0)``."""
    if not grouping:
        return name
    g = f"g{grouping.get('groups')}{'s' if grouping.get('shuffle') else ''}"
    if grouping.get("form") == "masked":
        return f"{name} gradual {g} (alpha={grouping.get('alpha', float('nan')):g})"
    return f"{name} grouped {g}"


def _ort_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec(
        "rtseg.deploy") is not None  # fmt: skip


@torch.inference_mode()
def _ort_latency(model: nn.Module, size: tuple[int, int], warmup: int, runs: int,
                 threads: int | None) -> dict[str, Any]:
    """Median latency of the ONNX Runtime (CPU, fp32) deploy graph on a ``1 x 3 x H x W`` input."""
    from rtseg.deploy import Segmenter

    div = int(getattr(model, "size_divisor", 1))
    fixed = size if size[0] % div == 0 and size[1] % div == 0 else None  # else: dynamic graph, padded input
    seg = Segmenter(model, backend="onnxruntime", size=fixed, threads=threads)
    try:
        x = torch.rand(1, 3, *size)
        times = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            seg.forward_tensor(x)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        seg.close()
    times.sort()
    return {"median_ms": statistics.median(times), "min_ms": times[0], "runs": runs, "threads": seg.threads,
            "build_s": round(seg.build_seconds, 2)}


def _predict(model: nn.Module, image: np.ndarray, out_hw: tuple[int, int], device: torch.device) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``H' x W'`` labels, logits upsampled to the label size as in evaluate."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255).to(device)
    out = model(x)
    if not isinstance(out, torch.Tensor):
        from rtseg.evaluate import _logits

        out = _logits(out)
    if tuple(out.shape[-2:]) != tuple(out_hw):
        out = F.interpolate(out.float(), size=out_hw, mode="bilinear", align_corners=False)
    return out.argmax(1)[0].cpu().numpy()


@dataclass
class _Entry:
    """Everything measured for one model (``record`` is its results.json entry)."""

    source: _Source
    record: dict[str, Any]
    eval: dict[str, Any]
    group: str  # display name of the evaluation set; per-class bars and image grids compare within one
    dskey: str  # identifies the evaluated dataset object
    picks: list[int] = field(default_factory=list)  # indices of the images shown in the qualitative grid
    samples: list[np.ndarray] = field(default_factory=list)  # predicted label maps of those images
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records
    color: Any = None  # the model's colour in every figure


# --------------------------------------------------------------------------------------------
# figures


def _save_fig(fig: Any, path: Path) -> Path:
    """Write a figure atomically as PNG; the tight bounding box keeps legends placed outside the axes."""
    from rtseg.metrics import save_figure

    return save_figure(fig, path, dpi=_DPI, bbox_inches="tight", pad_inches=0.12)


def _colors(n: int) -> list[Any]:
    from rtseg.metrics import _pyplot

    cmap = _pyplot().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _annotate_points(ax: Any, xs: list[float], ys: list[float], labels: list[str], colors: list[Any]) -> None:
    """Label each point right of it; labels that would overlap an earlier one are moved down a line.

    Call after the axis limits are final (positions are compared in display units)."""
    fig = ax.figure
    fig.canvas.draw()  # text extents need a renderer
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []  # bounding boxes (display units) of labels already drawn
    for i in sorted(range(len(xs)), key=lambda i: -ys[i]):  # top to bottom
        dy = 5.0
        for _ in range(12):
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(6, dy), textcoords="offset points", fontsize=9,
                            color=colors[i])
            box = t.get_window_extent(renderer).expanded(1.05, 1.15)
            if not any(box.overlaps(b) for b in placed):
                break
            t.remove()
            dy -= 10.0
        placed.append(box)


def _pad_limits(ax: Any, xs: list[float], ys: list[float], logx: bool) -> None:
    """Leave room around the points for their labels (matplotlib's defaults cut them off)."""
    lo, hi = min(ys), max(ys)
    span = max(hi - lo, 1.0)
    ax.set_ylim(max(0.0, lo - 0.25 * span), min(100.0, hi + 0.35 * span))
    if logx:  # a label is ~1/8 of the axis wide: leave that much room right of the last point
        decades = math.log10(max(xs) / min(xs))
        ax.set_xlim(min(xs) / 10 ** (0.06 * decades + 0.1), max(xs) * 10 ** (0.2 * decades + 0.1))
    else:
        xl, xh = min(xs), max(xs)
        xspan = max(xh - xl, 0.2 * max(abs(xh), 1e-9))
        ax.set_xlim(max(0.0, xl - 0.2 * xspan), xh + 0.45 * xspan)


def _fig_accuracy_vs(entries: list[_Entry], path: Path, *, what: str) -> Path:
    """Scatter of val mIoU against GMACs (``what='macs'``) or FPS on this machine (``what='fps'``)."""
    from rtseg.metrics import _pyplot

    plt = _pyplot()
    colors = [e.color for e in entries]
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    xs_all, ys_all, labelled = [], [], []
    for e, c in zip(entries, colors):
        r = e.record
        y = 100 * r["miou"] if r["miou"] is not None else float("nan")
        if what == "macs":
            pts = [(r["gmacs"], "o")]
        else:
            pts = [(lat["fps"], m) for b, m in (("torch", "o"), ("onnxruntime", "s"))
                   if (lat := r["latency"].get(b)) and lat.get("fps")]  # fmt: skip
        for x, marker in pts:
            ax.scatter([x], [y], s=60, marker=marker, color=c, edgecolor="black", linewidth=0.6, zorder=3)
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [y] * len(pts), color=c, lw=1, alpha=0.6, zorder=2)
        if pts and not math.isnan(y):
            labelled.append((max(p[0] for p in pts), y, e.source.label, c))
            xs_all += [p[0] for p in pts]
            ys_all.append(y)
    logx = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20
    if logx:
        ax.set_xscale("log")
    if xs_all:
        _pad_limits(ax, xs_all, ys_all, logx)
    sizes = sorted({f"{r.record['size'][0]}x{r.record['size'][1]}" for r in entries})
    at = f" at {', '.join(sizes)}"
    if what == "macs":
        ax.set_xlabel(f"GMACs per image{at} (the thesis' \"GFLOPs\")")
        ax.set_title("Accuracy vs computation")
    else:
        ax.set_xlabel(f"frames per second on this machine, batch 1{at}")
        ax.set_title("Accuracy vs speed")
        if any(e.record["latency"].get("onnxruntime", {}).get("fps") for e in entries):
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], ls="", marker="o", color="grey", mec="black", label="PyTorch eager"),
                       Line2D([], [], ls="", marker="s", color="grey", mec="black", label="ONNX Runtime")]
            ax.legend(handles=handles, loc="best", fontsize=9)
    ax.set_ylabel("val mIoU (%)")
    ax.grid(True, alpha=0.3, which="both")
    fig.tight_layout()
    if labelled:
        _annotate_points(ax, *(list(col) for col in zip(*labelled)))
    return _save_fig(fig, path)


def _fig_per_class(entries: list[_Entry], path: Path) -> Path:
    """Grouped bars: one group per class, one bar per model (thesis Fig. 3.13)."""
    from rtseg.metrics import _pyplot

    plt = _pyplot()
    names = list(entries[0].eval["per_class_iou"])
    n, k = len(names), len(entries)
    width = 0.8 / k
    colors = [e.color for e in entries]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.55 * n * max(1.0, k / 2) + 2), 4.4))
    x = np.arange(n)
    for j, (e, c) in enumerate(zip(entries, colors)):
        vals = [e.eval["per_class_iou"].get(nm) for nm in names]
        v = np.array([np.nan if a is None else 100 * a for a in vals], np.float64)
        miou = e.record["miou"]
        lab = e.source.label + (f" (mIoU {100 * miou:.1f})" if miou is not None else "")
        ax.bar(x - 0.4 + width * (j + 0.5), np.nan_to_num(v), width, color=c, edgecolor="black", linewidth=0.4,
               label=lab)
    ax.set_xticks(x, names, rotation=45 if max(len(s) for s in names) > 5 or n > 10 else 0, ha="right"
                  if n > 10 or max(len(s) for s in names) > 5 else "center")  # fmt: skip
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"Per-class IoU on {entries[0].group}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return _save_fig(fig, path)


def _fig_confusion(entry: _Entry, path: Path) -> Path:
    """Row-normalised confusion matrix (rows = target class), cell values in percent for <= 20 classes."""
    from rtseg.metrics import _pyplot

    plt = _pyplot()
    conf = np.asarray(entry.eval["confusion"], np.float64)
    names = entry.eval["class_names"]
    rows = conf.sum(1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    n = len(names)
    side = max(4.8, 0.42 * n + 2.4)
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    im = ax.imshow(norm * 100, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                v = 100 * norm[i, j]
                if v >= 0.5:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8 if n <= 12 else 6,
                            color="white" if v > 55 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("target class")
    ax.set_title(f"{entry.source.label}: confusion (% of target pixels)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save_fig(fig, path)


def _fig_curves(entries: list[_Entry], path: Path) -> Path:
    """Train loss, val mIoU (and gradual-grouping alpha) against the global epoch for every run."""
    from rtseg.metrics import _pyplot

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    with_alpha = any(r.get("alpha") is not None for e in entries for r in e.history)
    ncol = 3 if with_alpha else 2
    legend_w = 0.6 + 0.075 * max(len(e.source.label) + 10 for e in entries)  # inches, at fontsize 8
    fig_w = 4.6 * ncol + legend_w
    fig, axes = plt.subplots(1, ncol, figsize=(fig_w, 3.8))
    colors = [e.color for e in entries]
    stage_styles = {"encoder": ":", "full": "-"}
    for e, c in zip(entries, colors):
        for stage in dict.fromkeys(r.get("stage", "full") for r in e.history):
            rows = [r for r in e.history if r.get("stage", "full") == stage]
            ls = stage_styles.get(stage, "--")
            ep = [r.get("global_epoch", r.get("epoch")) for r in rows]
            lab = f"{e.source.label}" + (f" [{stage}]" if stage != "full" else "")
            loss = [(x, r["train_loss"]) for x, r in zip(ep, rows) if r.get("train_loss") is not None]
            if loss:
                axes[0].plot(*zip(*loss), ls=ls, marker="o", ms=3, color=c, label=lab)
            miou = [(x, 100 * r["val_miou"]) for x, r in zip(ep, rows) if r.get("val_miou") is not None]
            if miou:
                axes[1].plot(*zip(*miou), ls=ls, marker="o", ms=3, color=c, label=lab)
            if with_alpha:
                al = [(x, r["alpha"]) for x, r in zip(ep, rows) if r.get("alpha") is not None]
                if al:
                    axes[2].plot(*zip(*al), ls=ls, marker="o", ms=3, color=c, label=lab)
    axes[0].set_title("training loss")
    axes[1].set_title("val mIoU (%) (encoder stage: at 1/8)" if any(
        r.get("stage") == "encoder" for e in entries for r in e.history) else "val mIoU (%)")  # fmt: skip
    if with_alpha:
        axes[2].set_title("gradual grouping alpha")
        axes[2].set_ylim(-0.05, 1.05)
    for ax in axes:
        ax.set_xlabel("epoch (counted across stages)")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - legend_w / fig_w, 0.5), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - legend_w / fig_w, 1))
    return _save_fig(fig, path)


def _fit(panel: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize an ``H x W (x 3)`` uint8 panel to ``hw`` (nearest for label colours, bilinear for photos)."""
    from PIL import Image

    if panel.shape[:2] == tuple(hw):
        return panel
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(panel).resize((hw[1], hw[0]), resample))


def _fig_qualitative(entries: list[_Entry], images: list[np.ndarray], labels: list[np.ndarray],
                     palette: np.ndarray, ignore_index: int, path: Path) -> Path:
    """Rows = images; columns = image, ground truth, each model's prediction (thesis Fig. 3.11).

    Panels share one size (that of the first label map, scaled): tiny images are enlarged by an integer
    factor so their pixels stay crisp, large ones shrunk so the grid stays about 2000 px wide.
    """
    from rtseg.visualize import colorize, grid, save_png

    h0, w0 = labels[0].shape
    target = min(_PANEL_MAX_W, max(_PANEL_MIN_W, _GRID_W // (2 + len(entries))))
    width = w0 * math.ceil(_PANEL_MIN_W / w0) if w0 < _PANEL_MIN_W else min(w0, target)
    hw = (max(1, round(h0 * width / w0)), width)
    crisp = width % w0 == 0  # an integer upscale (or none): nearest keeps the photo's pixels sharp
    rows = []
    for i, (img, lbl) in enumerate(zip(images, labels)):
        row = [_fit(img, hw, nearest=crisp), _fit(colorize(lbl, palette, ignore_index), hw, True)]
        row += [_fit(colorize(e.samples[i], palette, ignore_index), hw, True) for e in entries]
        rows.append(row)
    chars = max(4, width // 7)  # PIL's default bitmap font is ~6-7 px per character

    def title(t: str) -> str:
        return t if len(t) <= chars else t[: chars - 1] + "~"

    titles = ["image", "ground truth"] + [title(e.source.label) for e in entries]
    return save_png(grid(rows, titles=titles), path)


# --------------------------------------------------------------------------------------------
# tables and page


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v * scale, spec)


def _lat_cell(lat: dict[str, Any] | None) -> str:
    if not lat:
        return "n/a"
    if "error" in lat:
        return "failed"
    return f"{lat['median_ms']:.2f} ms ({lat['fps']:.1f} FPS)"


def _table_rows(records: list[dict[str, Any]], backends: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "architecture", "eval data", "params (M)", "GMACs", "val mIoU (%)", "pixel acc (%)"]
    head += [f"{'PyTorch eager' if b == 'torch' else 'ONNX Runtime'} latency" for b in backends]
    rows = []
    for r in records:
        size = f"{r['size'][0]}x{r['size'][1]}"
        row = [r["label"], r["architecture"], f"{r['dataset']}/{r['split']} ({r['num_images']} img, {size})",
               _fmt(r["params"], ".3f", 1e-6), _fmt(r["gmacs"], ".3f"), _fmt(r["miou"], ".2f", 100),
               _fmt(r["pixel_acc"], ".2f", 100)]
        row += [_lat_cell(r["latency"].get(b)) for b in backends]
        rows.append(row)
    return head, rows


def _markdown(results: dict[str, Any], backends: list[str]) -> str:
    head, rows = _table_rows(results["models"], backends)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    m = results["machine"]
    out = [f"# {results['title']}", "", line(head), "|" + "|".join(["---"] * len(head)) + "|"]
    out += [line(r) for r in rows]
    out += ["", f"Latency: median of {results['settings']['latency_runs']} runs after "
                f"{results['settings']['warmup']} warm-up runs, batch 1, on {m['device']} "
                f"({m['cpu']}, threads: {m['threads']}), torch {m['torch']}"
                + (f", onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else "") + ".",
            ("GMACs: multiply-accumulates of one forward pass at the evaluation size (the ESSNet thesis' "
            "\"GFLOPs\")."), f"Generated {results['generated']} by `rtseg report`.", ""]
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,td:nth-child(2),td:nth-child(3),th{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#555;max-width:60em}
.meta{color:#555;font-size:.92em}.err{color:#a00}
.swatch{display:inline-block;width:1em;height:1em;border:1px solid #888;vertical-align:middle;margin:0 .3em 0 .9em}
.model{margin-top:1.4em}.cols{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
code{background:#f5f5f5;padding:0 .2em}
"""


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _html(results: dict[str, Any], entries: list[_Entry], figs: dict[str, Any], backends: list[str],
          palettes: dict[str, tuple[list[str], np.ndarray]]) -> str:
    esc = html.escape
    m, s = results["machine"], results["settings"]
    head, rows = _table_rows(results["models"], backends)
    table = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    lat_note = (f"Latency: median of {s['latency_runs']} runs after {s['warmup']} warm-up runs, one "
                f"{'x'.join(map(str, results['models'][0]['size']))} image (batch 1), on {esc(m['device'])} "
                f"({esc(m['cpu'])}, threads: {m['threads']}); torch {esc(m['torch'])}"
                + (f", onnxruntime {esc(m['onnxruntime'])}" if m.get("onnxruntime") else "") + ".")
    errors = [f"<li>{esc(r['label'])} / {esc(b)}: {esc(lat['error'])}</li>" for r in results["models"]
              for b, lat in r["latency"].items() if "error" in lat]  # fmt: skip
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(results['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(results['title'])}</h1>",
        f'<p class="meta">Generated {esc(results["generated"])} by <code>rtseg report</code> from '
        f"{len(entries)} model(s). Evaluation at native resolution on the validation split"
        + (f" (first {s['max_images']} images only)" if s.get("max_images") else "") + ". "
        'Data: <a href="results.json">results.json</a>, <a href="results.md">results.md</a>.</p>',
        "<h2>Results</h2>", table, (f'<p class="meta">{lat_note} GMACs: multiply-accumulates of one forward '
        "pass at the evaluation size (what the ESSNet thesis calls GFLOPs); params include the decoder.</p>"),
    ]
    if errors:
        parts.append('<p class="err">Backends that could not be measured:</p><ul class="err">'
                     + "".join(errors) + "</ul>")
    parts += ["<h2>Accuracy vs computation</h2>", _figure(figs["accuracy_vs_gmacs"],
              "Validation mIoU against GMACs per image. Mirrors thesis Fig. 3.10 (accuracy vs. GFLOPs).")]
    parts += ["<h2>Accuracy vs speed on this machine</h2>", _figure(figs["accuracy_vs_fps"],
              "Validation mIoU against frames per second on this machine (circles: PyTorch eager; squares: "
              "ONNX Runtime when measured). Mirrors thesis Fig. 3.12 (accuracy vs. FPS); absolute FPS "
              "depends on the machine above.")]
    parts.append("<h2>Per-class IoU</h2>")
    for key, src in figs["per_class_iou"].items():
        parts.append(_figure(src, f"IoU of every class on {esc(key)}, one bar per model. Mirrors thesis "
                                  "Fig. 3.13 (per-class IoU of the compared models)."))
    parts.append("<h2>Qualitative results</h2>")
    for key, src in figs["qualitative"].items():
        names, pal = palettes[key]
        legend = "".join(f'<span class="swatch" style="background:rgb({c[0]},{c[1]},{c[2]})"></span>{esc(n)}'
                         for n, c in zip(names, pal.tolist()))
        parts.append(_figure(src, f"Images of {esc(key)}: input, ground truth (void in black), then each "
                                  "model's prediction. Mirrors thesis Fig. 3.11."))
        parts.append(f'<p class="meta">Classes:{legend}</p>')
    if figs.get("training_curves"):
        parts += ["<h2>Training curves</h2>", _figure(figs["training_curves"],
                  "From each run's metrics.jsonl: training loss and validation mIoU per epoch (dotted: "
                  "encoder stage, scored against labels at 1/8 resolution), and the gradual-grouping alpha "
                  "when the run used it.")]
    parts.append("<h2>Per-model details</h2>")
    for e, r in zip(entries, results["models"]):
        t = r.get("train") or {}
        facts = [("checkpoint", r["checkpoint"]), ("architecture", r["architecture"]),
                 ("evaluated on", f"{r['dataset']}/{r['split']}, {r['num_images']} images"),
                 ("params / MACs", (f"{r['params']:,} / {r['macs']:,} at {r['size'][0]}x{r['size'][1]} "
                                   f"({r['profiled_form']})")),
                 ("val mIoU / pixel acc / mean class acc",
                  (f"{_fmt(r['miou'], '.2f', 100)} / {_fmt(r['pixel_acc'], '.2f', 100)} / "
                  f"{_fmt(r['mean_class_acc'], '.2f', 100)} %"))]
        if t:
            facts.append(("training", (f"stage {t.get('stage')}, best epoch {t.get('epoch')}, val mIoU at "
                                      f"training time {_fmt(t.get('val_miou'), '.2f', 100)} %")))
        items = "".join(f"<tr><th>{esc(k)}</th><td style='text-align:left'>{esc(str(v))}</td></tr>"
                        for k, v in facts)
        per = "".join(f"<tr><td>{esc(n)}</td><td>{_fmt(v, '.2f', 100)}</td></tr>"
                      for n, v in r["per_class_iou"].items())
        parts.append(f'<div class="model"><h3>{esc(r["label"])}</h3><table>{items}</table><div class="cols">'
                     + _figure(figs["confusion"][r["label"]], "Row-normalised confusion matrix: each row "
                               "shows where the pixels of that target class went (percent).")
                     + f"<table><tr><th>class</th><th>IoU (%)</th></tr>{per}</table></div></div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _machine(device: torch.device, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    ort = None
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        ort = onnxruntime.__version__
    return {"device": dev, "cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": ort}


def _measure(src: _Source, ds: Any, dskey: str, dev: torch.device, *, max_images: int | None,
             size: tuple[int, int] | None, latency_runs: int, warmup: int, threads: int, backends: list[str],
             samples: int, progress: bool) -> _Entry:
    """Evaluate, count and time one checkpoint; predict the qualitative images."""
    from rtseg.checkpoint import load_checkpoint, load_model
    from rtseg.evaluate import evaluate
    from rtseg.profiler import count_flops, count_params, measure_latency

    ckpt = load_checkpoint(src.checkpoint)
    meta = ckpt.get("meta") or {}
    model = load_model(src.checkpoint, map_location=dev)
    res = evaluate(model, ds, max_images=max_images, device=dev, progress=progress)
    n = res["num_images"]
    hw = tuple(size) if size is not None else tuple(ds[0][1].shape[:2])

    measured, form = _profiled_form(model)
    macs = count_flops(measured, hw)["macs"]
    lat = measure_latency(measured, hw, warmup=warmup, runs=latency_runs, threads=threads)
    latency: dict[str, Any] = {"torch": {**lat, "fps": 1000.0 / lat["median_ms"], "device": str(dev)}}
    if "onnxruntime" in backends:
        try:
            cpu_model = model if dev.type == "cpu" else copy.deepcopy(model).cpu()  # ORT runs on the CPU
            o = _ort_latency(cpu_model, hw, warmup, latency_runs, threads)
            latency["onnxruntime"] = {**o, "fps": 1000.0 / o["median_ms"], "device": "cpu"}
        except Exception as e:  # noqa: BLE001 -- a model that cannot be exported must not sink the report
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            latency["onnxruntime"] = {"error": f"{type(e).__name__}: {first}"}

    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(samples, n))}) if samples else []
    with torch.inference_mode():
        preds = [_predict(model, *_image_and_shape(ds, i), dev) for i in picks]
    record = {
        "label": src.label,
        "source": src.arg,
        "checkpoint": str(src.checkpoint),
        "run_dir": str(src.run_dir) if src.run_dir is not None else None,
        "model": ckpt["model"],
        "model_kwargs": ckpt.get("model_kwargs", {}),
        "architecture": _architecture(ckpt["model"], meta.get("grouping")),
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
    history = _read_log(src.metrics_log) if src.metrics_log else []
    return _Entry(src, record, res, f"{ds.name}/{ds.split}", dskey, picks, preds, history)


def _image_and_shape(ds: Any, i: int) -> tuple[np.ndarray, tuple[int, int]]:
    img, lbl = ds[i]
    return img, tuple(lbl.shape)


def _group_labels(keys: Sequence[str]) -> dict[str, str]:
    """Display names of evaluation sets (JSON specs): ``name/split``, with kwargs / root where those differ."""
    specs = {k: json.loads(k) for k in dict.fromkeys(keys)}
    labels = {k: f"{s['name']}/{s['split']}" for k, s in specs.items()}
    short = dict(labels)
    for k, s in specs.items():  # e.g. two synthetic/val of different lengths: name what differs
        twins = [specs[o] for o in specs if short[o] == short[k]]
        if len(twins) > 1:
            flat = [{**t["kwargs"], "root": t["root"]} for t in twins]
            mine = {**s["kwargs"], "root": s["root"]}
            differ = sorted(a for a in set().union(*flat) if len({json.dumps(f.get(a)) for f in flat}) > 1)
            extra = [f"{a}={mine.get(a)}" for a in differ]
            labels[k] += f" ({', '.join(extra)})" if extra else ""
    seen: dict[str, int] = {}
    for k in specs:  # still equal (names differing only in case): number them
        seen[labels[k]] = seen.get(labels[k], 0) + 1
        if seen[labels[k]] > 1:
            labels[k] += f" #{seen[labels[k]]}"
    return labels


def _write_figures(entries: list[_Entry], datasets: dict[str, Any], out: Path
                   ) -> tuple[dict[str, Any], set[str], dict[str, tuple[list[str], np.ndarray]]]:
    """All PNGs -> (figure paths relative to ``out`` by kind, file names written, class legend per group)."""
    groups: dict[str, list[_Entry]] = {}
    for e in entries:
        groups.setdefault(e.dskey, []).append(e)
    suffix = (lambda i: "") if len(groups) == 1 else (lambda i: f"_{i + 1}")
    figs: dict[str, Any] = {"per_class_iou": {}, "qualitative": {}, "confusion": {}}
    written: set[str] = set()
    palettes: dict[str, tuple[list[str], np.ndarray]] = {}

    def rel(p: Path) -> str:
        written.add(p.name)
        return p.relative_to(out).as_posix()

    figs["accuracy_vs_gmacs"] = rel(_fig_accuracy_vs(entries, out / "accuracy_vs_gmacs.png", what="macs"))
    figs["accuracy_vs_fps"] = rel(_fig_accuracy_vs(entries, out / "accuracy_vs_fps.png", what="fps"))
    for gi, (key, members) in enumerate(groups.items()):
        ds, group = datasets[key], members[0].group
        if len({tuple(e.eval["class_names"]) for e in members}) == 1:
            figs["per_class_iou"][group] = rel(_fig_per_class(members, out / f"per_class_iou{suffix(gi)}.png"))
        picks = members[0].picks  # same dataset and max_images -> same picks for every member
        if picks:
            pairs = [ds[i] for i in picks]
            figs["qualitative"][group] = rel(_fig_qualitative(
                members, [p[0] for p in pairs], [p[1] for p in pairs], ds.palette, ds.ignore_index,
                out / f"qualitative{suffix(gi)}.png"))
            palettes[group] = (list(ds.class_names), np.asarray(ds.palette, np.uint8))
    used: set[str] = set()
    for e in entries:
        stem = base = f"confusion_{_slug(e.source.label)}"
        while stem in used:  # labels "a b" and "a_b" share a slug
            stem = f"{base}_{len(used)}"
        used.add(stem)
        figs["confusion"][e.source.label] = rel(_fig_confusion(e, out / f"{stem}.png"))
    with_log = [e for e in entries if e.history]
    if with_log:
        figs["training_curves"] = rel(_fig_curves(with_log, out / "training_curves.png"))
    return figs, written, palettes



# --------------------------------------------------------------------------------------------
# the public function


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
        runs: run folders of ``rtseg train`` (``best.pt`` and ``metrics.jsonl``) or rtseg checkpoint files.
        out: output folder (created); earlier report files it lists in ``results.json`` are replaced.
        dataset, root, split, dataset_kwargs: evaluate on this instead of each checkpoint's own dataset /
            folder / validation split (``config.val_split``, else ``"val"``) / dataset arguments.
        max_images: evaluate only the first N images of the split (quick looks; noted on the page).
        size: ``(H, W)`` at which params / MACs / latency are measured; default: the first evaluated
            image's size (the native resolution that evaluation uses).
        latency_runs, warmup: timed and untimed forward passes per backend (median reported).
        threads: CPU threads for evaluation and latency (default: all cores); torch's setting is
            restored afterwards.
        backends: latency backends from :data:`BACKENDS`; default ``torch`` plus ``onnxruntime`` when it
            and :mod:`rtseg.deploy` are installed. A backend that fails is reported with its error.
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
    from rtseg.checkpoint import load_checkpoint
    from rtseg.data.registry import build_dataset
    from rtseg.metrics import _pyplot, to_jsonable

    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    runs = list(runs)
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
        backends = ["torch"] + (["onnxruntime"] if _ort_available() else [])
    backends = list(dict.fromkeys(["torch", *backends]))
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown latency backend {b!r}; choose from {', '.join(BACKENDS)}")
    if "onnxruntime" in backends and not _ort_available():
        raise ValueError("backend 'onnxruntime' needs onnxruntime and rtseg.deploy: pip install rtseg[deploy]")
    _pyplot()  # fail before any slow work when matplotlib is missing

    sources = [_resolve(r) for r in runs]  # every argument is checked before anything slow runs
    _labels(sources, names)
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = int(threads or os.cpu_count() or 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)

    datasets: dict[str, Any] = {}
    entries: list[_Entry] = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # evaluation too: the one thread budget the caller gave
    try:
        for k, src in enumerate(sources, 1):
            meta = load_checkpoint(src.checkpoint).get("meta") or {}
            spec = _dataset_spec(meta, src.checkpoint, dataset, root, split, dataset_kwargs)
            key = json.dumps(spec, sort_keys=True, default=str)
            if key not in datasets:
                datasets[key] = build_dataset(spec["name"], root=spec["root"], split=spec["split"],
                                              **spec["kwargs"])
            say(f"[{k}/{len(sources)}] {src.label}: evaluating {src.checkpoint} on {spec['name']}/{spec['split']}")
            entry = _measure(src, datasets[key], key, dev, max_images=max_images, size=size,
                             latency_runs=latency_runs, warmup=warmup, threads=threads, backends=backends,
                             samples=samples, progress=progress)
            r = entry.record
            say(f"    mIoU {_fmt(r['miou'], '.2f', 100)}  {r['params'] / 1e6:.3f} M params  {r['gmacs']:.3f} GMACs"
                f" @ {r['size'][0]}x{r['size'][1]}  "
                + "  ".join(f"{b} {_lat_cell(v)}" for b, v in r["latency"].items()))
            entries.append(entry)
    finally:
        torch.set_num_threads(old_threads)

    names_of = _group_labels([e.dskey for e in entries])
    for e, c in zip(entries, _colors(len(entries))):
        e.group, e.color = names_of[e.dskey], c
    say(f"writing figures to {out}")
    figs, written, palettes = _write_figures(entries, datasets, out)

    # ---- tables, page ----
    results = {
        "title": title,
        "generated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(dev, threads),
        "settings": {"latency_runs": latency_runs, "warmup": warmup, "max_images": max_images,
                     "samples": samples, "backends": backends, "size": list(size) if size else None,
                     "dataset": dataset, "root": str(root) if root is not None else None, "split": split},
        "models": [e.record for e in entries],
        "figures": figs,
        "index": "index.html",
    }
    _remove_stale(out, written)
    atomic_write_text(out / "results.json", json.dumps(to_jsonable(results), indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "results.md", _markdown(results, backends))
    atomic_write_text(out / "index.html", _html(results, entries, figs, backends, palettes))
    say(f"wrote {out / 'index.html'}")
    results["index"] = str(out / "index.html")
    return results


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
