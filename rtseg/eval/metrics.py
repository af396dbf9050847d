"""Segmentation metrics from one confusion matrix, plus the Cityscapes benchmark's own scores.

Conventions (documented in docs/data.md):

* Counting is done at the labels' native resolution; logits are upsampled bilinearly to the
  target size before the argmax, never the labels downsampled.
* Pixels whose target is ``ignore_index`` are not counted at all.
* A prediction outside ``[0, num_classes)`` (e.g. a "void" output channel, or an ignore id in a
  label-map prediction) is counted as a miss of the target class — a false negative for that
  class and a false positive for none, as the official Cityscapes script does with predictions
  of ignored ids. These pixels are reported per target class in ``pred_void``.
* A class absent from both target and prediction has IoU = NaN (0/0) and is left out of every
  mean; a class present in the target but never predicted (or predicted but absent) has IoU 0.
  JSON output writes NaN as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtseg.data.base import IGNORE_INDEX
from rtseg.data.cityscapes import cityscapes_meta
from rtseg.utils.deps import require
from rtseg.utils.io import atomic_open

__all__ = [
    "CityscapesMetrics",
    "SegMetrics",
    "confusion_matrix",
    "format_table",
    "plot_confusion",
    "plot_per_class_iou",
    "save_plots",
    "to_jsonable",
]


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``num_classes x (num_classes + 1)`` int64 counts, rows = target class, columns = predicted class.

    ``pred`` and ``target`` are integer label maps of the same shape (any leading dims, any device).
    The last column counts predictions outside ``[0, num_classes)``. Target pixels equal to
    ``ignore_index`` are skipped; any other target id outside the class set is a ``ValueError``.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
        )
    c = num_classes
    target = target.to(pred.device)
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
        bad = torch.unique(t[(t < 0) | (t >= c)])[:10].tolist()
        raise ValueError(f"target ids {bad} are outside [0, {c}) and are not the ignore index {ignore_index}")
    p = torch.where((p < 0) | (p >= c), torch.full_like(p, c), p)
    return torch.bincount(t * (c + 1) + p, minlength=c * (c + 1)).view(c, c + 1)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, np.float64)
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


class SegMetrics:
    """Streaming semantic-segmentation metrics over a confusion matrix.

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value that is not counted.
        class_names: ``C`` names used as keys of the per-class dicts (default ``"0"``, ``"1"``, ...).

    ``update(pred, target)``: ``target`` is ``B x H x W`` (or ``H x W``) integer labels; ``pred`` is
    either labels of the same shape or float logits ``B x C' x h x w`` (``C' >= C``; channels past
    ``C`` count as void) which are upsampled bilinearly to ``H x W`` if needed. Tensors may live on
    any device (the matrix lives where the first batch did); numpy arrays are accepted too.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, class_names: Sequence[str] | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = [str(n) for n in class_names] if class_names is not None else [
            str(i) for i in range(num_classes)]  # fmt: skip
        self.reset()

    def reset(self) -> None:
        self._conf: torch.Tensor | None = None

    @property
    def confusion(self) -> torch.Tensor:
        """``C x (C + 1)`` int64 counts so far (rows target, columns prediction, last column = void)."""
        if self._conf is None:
            return torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)
        return self._conf

    def _labels(self, pred: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
        pred, target = _as_tensor(pred), _as_tensor(target)
        if target.dim() == 2:
            target = target[None]
        if target.dim() != 3 or target.is_floating_point():
            raise ValueError(
                f"target must be integer labels B x H x W, got {tuple(target.shape)} {target.dtype}"
            )
        if pred.is_floating_point():
            if pred.dim() == 3:
                pred = pred[None]
            if pred.dim() != 4 or pred.shape[0] != target.shape[0] or pred.shape[1] < self.num_classes:
                raise ValueError(
                    f"logits must be B x C x h x w with B={target.shape[0]} and C >= {self.num_classes}, "
                    f"got {tuple(pred.shape)}"
                )
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(
                    pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False
                )
            pred = pred.argmax(1)
        elif pred.dim() == 2:
            pred = pred[None]
        return pred, target.to(pred.device)

    @torch.no_grad()
    def update(self, pred: Any, target: Any) -> torch.Tensor:
        """Add a batch; returns the predicted labels ``B x H x W`` that were counted."""
        p, t = self._labels(pred, target)
        self._add(confusion_matrix(p, t, self.num_classes, self.ignore_index))
        return p

    def _add(self, conf: torch.Tensor) -> None:
        if self._conf is None:
            self._conf = conf.clone()
        else:
            self._conf += conf.to(self._conf.device)

    def _reduce_tensors(self) -> list[torch.Tensor]:
        return [self._conf]  # type: ignore[list-item]

    def all_reduce(self, group: Any = None) -> SegMetrics:
        """Sum the counts over all ``torch.distributed`` ranks in ``group`` (no-op when not distributed).

        Every rank must call it (a collective). Afterwards each rank's :meth:`compute` gives the
        metrics of the whole dataset. Returns ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if self._conf is None:  # a rank that saw no data still has to take part
            dev = torch.device("cpu")
            if dist.get_backend(group) == "nccl":
                dev = torch.device("cuda", torch.cuda.current_device())
            self._conf = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64, device=dev)
            self._init_extra(dev)
        for t in self._reduce_tensors():
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return self

    reduce_ = all_reduce

    def _init_extra(self, device: torch.device) -> None:
        pass

    def compute(self) -> dict[str, Any]:
        """Metrics of everything seen so far (see module docstring for NaN handling).

        Keys: ``miou``, ``pixel_acc``, ``mean_class_acc``, ``fwiou``, ``mean_dice``, ``mean_f1``
        (floats in [0, 1]); ``per_class_iou``, ``per_class_acc``, ``per_class_dice``,
        ``per_class_f1``, ``per_class_precision`` (name -> float); ``confusion`` (C x C list of
        lists, rows target), ``pred_void`` (per target class: pixels predicted outside the class
        set), ``num_pixels``, ``class_names``.
        """
        conf = self.confusion.detach().cpu().double().numpy()
        c = self.num_classes
        sq = conf[:, :c]
        tp = np.diag(sq)
        gt = conf.sum(1)
        pr = sq.sum(0)
        total = gt.sum()
        iou = _div(tp, gt + pr - tp)
        acc = _div(tp, gt)
        dice = _div(2 * tp, gt + pr)
        prec = _div(tp, pr)
        names = self.class_names

        def per(v: np.ndarray) -> dict[str, float]:
            return {n: float(x) for n, x in zip(names, v)}

        present = gt > 0
        return {
            "miou": _nanmean(iou),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_class_acc": _nanmean(acc),
            "fwiou": float((gt[present] * iou[present]).sum() / total) if total > 0 else float("nan"),
            "mean_dice": _nanmean(dice),
            "mean_f1": _nanmean(dice),  # pixel-level F1 is the Dice coefficient: 2TP / (2TP + FP + FN)
            "per_class_iou": per(iou),
            "per_class_acc": per(acc),
            "per_class_dice": per(dice),
            "per_class_f1": per(dice),
            "per_class_precision": per(prec),
            "confusion": sq.astype(np.int64).tolist(),
            "pred_void": conf[:, c].astype(np.int64).tolist(),
            "num_pixels": int(total),
            "class_names": list(names),
        }


class CityscapesMetrics(SegMetrics):
    """:class:`SegMetrics` on the 19 trainIds plus the official Cityscapes scores.

    Follows ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``: category IoU over the
    label table's categories, and instance-level iIoU where each ground-truth instance's true
    positives and false negatives are weighted by ``avgClassSize[class] / instance_size`` (the
    official average sizes), while false positives are the plain pixel counts. Instance stats
    need ``instances`` (the raw ``*_gtFine_instanceIds`` maps) in :meth:`update`.

    Extra keys of :meth:`compute`: ``per_category_iou``, ``category_iou`` (mean), ``per_class_iiou``
    (the 8 instance classes), ``iiou`` (mean), ``per_category_iiou`` (human, vehicle),
    ``category_iiou`` (mean).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.meta = cityscapes_meta()
        super().__init__(len(self.meta.class_names), ignore_index, self.meta.class_names)
        lut = np.full(max(self.meta.label_to_train) + 1, -1, np.int64)
        for lid, tid in self.meta.label_to_train.items():
            if tid != IGNORE_INDEX and self.meta.instance_classes[tid]:
                lut[lid] = tid
        self._inst_lut = torch.from_numpy(lut)

    def reset(self) -> None:
        super().reset()
        self._inst: torch.Tensor | None = None  # rows: class tpW, class fnW, category tpW, category fnW

    def _init_extra(self, device: torch.device) -> None:
        n = max(self.num_classes, len(self.meta.categories))
        self._inst = torch.zeros(4, n, dtype=torch.float64, device=device)

    def _reduce_tensors(self) -> list[torch.Tensor]:
        if self._inst is None:
            self._init_extra(self._conf.device)  # type: ignore[union-attr]
        return [self._conf, self._inst]  # type: ignore[list-item]

    @torch.no_grad()
    def update(self, pred: Any, target: Any, instances: Any = None) -> torch.Tensor:
        """Add a batch; ``instances``: ``B x H x W`` instanceIds (``labelId * 1000 + k``), or ``None``."""
        p = super().update(pred, target)
        if self._inst is None:
            self._init_extra(self._conf.device)  # type: ignore[union-attr]
        if instances is not None:
            self._add_instances(p, _as_tensor(instances))
        return p

    def _add_instances(self, p: torch.Tensor, inst: torch.Tensor) -> None:
        dev = p.device
        inst = inst.to(dev).long()
        if inst.dim() == 2:
            inst = inst[None]
        if inst.shape != p.shape:
            raise ValueError(
                f"instance map shape {tuple(inst.shape)} differs from prediction {tuple(p.shape)}"
            )
        lut = self._inst_lut.to(dev)
        lid = torch.div(inst, 1000, rounding_mode="floor")
        m = (inst > 1000) & (lid < len(lut))
        if bool((inst > 1000).any() and (lid[inst > 1000] >= len(lut)).any()):
            raise ValueError(f"instance ids with label id >= {len(lut)} are not Cityscapes ids")
        cls = torch.full_like(inst, -1)
        cls[m] = lut[lid[m]]
        m &= cls >= 0  # instances of ignored classes (caravan, trailer) are skipped, as officially
        if not bool(m.any()):
            return
        b = torch.arange(p.shape[0], device=dev).view(-1, 1, 1).expand_as(inst)
        key = (b * (1 << 32) + inst)[m]  # instance ids are per image
        uniq, inv = torch.unique(key, return_inverse=True)
        n = uniq.numel()
        c_pix, p_pix = cls[m], p[m]
        size = torch.bincount(inv, minlength=n).double()
        tp = torch.bincount(inv[p_pix == c_pix], minlength=n).double()
        c_inst = torch.zeros(n, dtype=torch.long, device=dev).scatter_(0, inv, c_pix)
        cat_of = torch.from_numpy(np.append(self.meta.class_category, -1)).to(dev)
        p_cat = cat_of[torch.where((p_pix < 0) | (p_pix >= self.num_classes), self.num_classes, p_pix)]
        cat_tp = torch.bincount(inv[p_cat == cat_of[c_pix]], minlength=n).double()
        weight = torch.from_numpy(self.meta.avg_class_size).to(dev)[c_inst] / size
        cat_inst = cat_of[c_inst]
        acc = self._inst
        acc[0].index_add_(0, c_inst, tp * weight)
        acc[1].index_add_(0, c_inst, (size - tp) * weight)
        acc[2].index_add_(0, cat_inst, cat_tp * weight)
        acc[3].index_add_(0, cat_inst, (size - cat_tp) * weight)

    def compute(self) -> dict[str, Any]:
        res = super().compute()
        meta = self.meta
        conf = self.confusion.detach().cpu().double().numpy()
        c = self.num_classes
        sq = conf[:, :c]
        inst = self._inst if self._inst is not None else torch.zeros(4, max(c, len(meta.categories)))
        inst = inst.detach().cpu().numpy()

        cat_iou, cat_fp = {}, {}
        for k, cat in enumerate(meta.categories):
            ids = np.flatnonzero(meta.class_category == k)
            others = np.flatnonzero(meta.class_category != k)
            tp = sq[np.ix_(ids, ids)].sum()
            fn = conf[ids].sum() - tp  # includes void predictions, like the official rows
            fp = sq[np.ix_(others, ids)].sum()
            cat_fp[cat] = fp
            cat_iou[cat] = float(tp / (tp + fp + fn)) if tp + fp + fn > 0 else float("nan")

        tpw, fnw = inst[0, :c], inst[1, :c]
        fp_cls = sq.sum(0) - np.diag(sq)
        iiou = {}
        for i in np.flatnonzero(meta.instance_classes):
            d = tpw[i] + fp_cls[i] + fnw[i]
            iiou[meta.class_names[i]] = float(tpw[i] / d) if d > 0 else float("nan")
        cat_iiou = {}
        for cat in meta.instance_categories:
            k = meta.categories.index(cat)
            d = inst[2, k] + cat_fp[cat] + inst[3, k]
            cat_iiou[cat] = float(inst[2, k] / d) if d > 0 else float("nan")

        res.update(
            per_category_iou=cat_iou,
            category_iou=_nanmean(np.array(list(cat_iou.values()))),
            per_class_iiou=iiou,
            iiou=_nanmean(np.array(list(iiou.values()))),
            per_category_iiou=cat_iiou,
            category_iiou=_nanmean(np.array(list(cat_iiou.values()))),
        )
        return res


# ----------------------------------------------------------------------------------------------
# reporting


def to_jsonable(obj: Any) -> Any:
    """Results -> plain JSON data: NaN/inf become ``None``, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _pct(v: float | None) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"


def format_table(results: dict[str, Any], title: str | None = None) -> str:
    """A fixed-width terminal table of per-class IoU / accuracy / Dice (and iIoU) in percent."""
    names = list(results["per_class_iou"])
    w = max([len(n) for n in names] + [14])
    has_iiou = "per_class_iiou" in results
    head = f"{'class':<{w}}    IoU    Acc   Dice" + ("   iIoU" if has_iiou else "")
    rule = "-" * len(head)
    lines = [title] if title else []
    lines += [head, rule]
    for n in names:
        row = f"{n:<{w}} {_pct(results['per_class_iou'][n])} {_pct(results['per_class_acc'][n])} "
        row += _pct(results["per_class_dice"][n])
        if has_iiou:
            row += " " + (_pct(results["per_class_iiou"][n]) if n in results["per_class_iiou"] else "      ")
        lines.append(row)
    lines.append(rule)
    mean = f"{'mean':<{w}} {_pct(results['miou'])} {_pct(results['mean_class_acc'])} {_pct(results['mean_dice'])}"
    if has_iiou:
        mean += " " + _pct(results["iiou"])
    lines += [mean, f"{'pixel accuracy':<{w}} {_pct(results['pixel_acc'])}"]
    if "per_category_iou" in results:
        lines += ["", f"{'category':<{w}}    IoU   iIoU", rule]
        for cat, v in results["per_category_iou"].items():
            lines.append(f"{cat:<{w}} {_pct(v)} " + (_pct(results["per_category_iiou"][cat])
                                                     if cat in results["per_category_iiou"] else ""))  # fmt: skip
        lines += [rule, f"{'mean':<{w}} {_pct(results['category_iou'])} {_pct(results['category_iiou'])}"]
    return "\n".join(lines)


def pyplot() -> Any:
    matplotlib = require("matplotlib", "plots", "plots")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(results: dict[str, Any], path: str | Path, normalize: bool = True) -> Path:
    """Save the confusion matrix as a heatmap (rows = target, row-normalised by default)."""
    plt = pyplot()
    conf = np.asarray(results["confusion"], np.float64)
    names = results["class_names"]
    if normalize:
        conf = _div(conf, conf.sum(1, keepdims=True))
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * n + 2), max(4, 0.45 * n + 1.5)))
    im = ax.imshow(np.nan_to_num(conf), cmap="viridis", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("target")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path, dpi: int = 120, **savefig_kw: Any) -> Path:
    """Render a matplotlib figure to PNG and write it atomically (a crash never leaves half a PNG); closes it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig_kw)
    pyplot().close(fig)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def plot_per_class_iou(results: dict[str, Any], path: str | Path) -> Path:
    """Save a horizontal bar chart of per-class IoU (NaN classes drawn empty) with the mIoU line."""
    plt = pyplot()
    names = list(results["per_class_iou"])
    vals = np.array([np.nan if v is None else v for v in results["per_class_iou"].values()], np.float64)
    fig, ax = plt.subplots(figsize=(7, max(3, 0.32 * len(names) + 1)))
    ax.barh(range(len(names)), np.nan_to_num(vals) * 100, color="tab:blue")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    miou = results.get("miou")
    if miou is not None and not math.isnan(miou):
        ax.axvline(100 * miou, color="tab:red", ls="--", label=f"mIoU {100 * miou:.1f}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    fig.tight_layout()
    return save_figure(fig, path)


def save_plots(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``confusion.png`` and ``per_class_iou.png`` into ``out_dir``."""
    out = Path(out_dir)
    return [
        plot_confusion(results, out / "confusion.png"),
        plot_per_class_iou(results, out / "per_class_iou.png"),
    ]
