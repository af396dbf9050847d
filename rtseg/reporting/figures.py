"""The report's figures (matplotlib, PNG): the thesis' Figs. 3.10-3.13 analogues, confusion matrices, curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.eval.metrics import pyplot, save_figure
from rtseg.eval.visualize import add_legend, colorize, grid, save_png
from rtseg.reporting.measure import Entry
from rtseg.reporting.sources import slug

__all__ = ["colors", "write_figures"]

#: smallest / largest panel width and about the widest grid (px) of the qualitative figure
_PANEL_MIN_W, _PANEL_MAX_W, _GRID_W = 200, 480, 2000
_DPI = 110


def _save_fig(fig: Any, path: Path) -> Path:
    """Write a figure atomically as PNG; the tight bounding box keeps legends placed outside the axes."""
    return save_figure(fig, path, dpi=_DPI, bbox_inches="tight", pad_inches=0.12)


def colors(n: int) -> list[Any]:
    cmap = pyplot().get_cmap("tab10" if n <= 10 else "tab20")
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


def _point_label(e: Entry) -> str:
    """A point's label: the source's, plus the initialisation recorded for shipped weights (issue #18: each
    point of the accuracy-vs-computation figure says what its training started from)."""
    if not e.source.shipped:
        return e.source.label
    from rtseg.hub import weights_info

    init = (weights_info().get(e.source.arg) or {}).get("init")
    return f"{e.source.label} ({init})" if init else e.source.label


def _fig_accuracy_vs(entries: list[Entry], path: Path, *, what: str) -> Path:
    """Scatter of val mIoU against GMACs (``what='macs'``) or FPS on this machine (``what='fps'``)."""
    plt = pyplot()
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
            labelled.append((max(p[0] for p in pts), y, _point_label(e), c))
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


def _fig_per_class(entries: list[Entry], path: Path) -> Path:
    """Grouped bars: one group per class, one bar per model (thesis Fig. 3.13)."""
    plt = pyplot()
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


def _fig_confusion(entry: Entry, path: Path) -> Path:
    """Row-normalised confusion matrix (rows = target class), cell values in percent for <= 20 classes."""
    plt = pyplot()
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


def _fig_curves(entries: list[Entry], path: Path) -> Path:
    """Train loss, val mIoU (and gradual-grouping alpha) against the global epoch for every run."""
    plt = pyplot()
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


def _fig_qualitative(entries: list[Entry], images: list[np.ndarray], labels: list[np.ndarray],
                     palette: np.ndarray, ignore_index: int, path: Path,
                     class_names: list[str] | None = None) -> Path:
    """Rows = images; columns = image, ground truth, each model's prediction (thesis Fig. 3.11), and a
    class legend below them (the PNG is often looked at without the page around it).

    Panels share one size (that of the first label map, scaled): tiny images are enlarged by an integer
    factor so their pixels stay crisp, large ones shrunk so the grid stays about 2000 px wide.
    """
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
    panel = grid(rows, titles=titles)
    return save_png(add_legend(panel, class_names, palette) if class_names else panel, path)


def write_figures(entries: list[Entry], datasets: dict[str, Any], out: Path
                   ) -> tuple[dict[str, Any], set[str], dict[str, tuple[list[str], np.ndarray]]]:
    """All PNGs -> (figure paths relative to ``out`` by kind, file names written, class legend per group)."""
    groups: dict[str, list[Entry]] = {}
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
                out / f"qualitative{suffix(gi)}.png", class_names=list(ds.class_names)))
            palettes[group] = (list(ds.class_names), np.asarray(ds.palette, np.uint8))
    used: set[str] = set()
    for e in entries:
        stem = base = f"confusion_{slug(e.source.label)}"
        while stem in used:  # labels "a b" and "a_b" share a slug
            stem = f"{base}_{len(used)}"
        used.add(stem)
        figs["confusion"][e.source.label] = rel(_fig_confusion(e, out / f"{stem}.png"))
    with_log = [e for e in entries if e.history]
    if with_log:
        figs["training_curves"] = rel(_fig_curves(with_log, out / "training_curves.png"))
    return figs, written, palettes
