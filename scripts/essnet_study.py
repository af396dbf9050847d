"""The thesis' ESSNet study on CamVid (issue #18): every arm trained to its plateau, resumable.

    python scripts/essnet_study.py --root ../shared/data/camvid --runs runs/study --arm essnet_d_cs_camvid
    python scripts/essnet_study.py --root ../shared/data/camvid --runs runs/study --all   # arm after arm

Each arm is ``configs/essnet_camvid_study.yaml`` (the released code's settings) plus its model and
initialisation. Run again after an interruption: a run folder with ``last.pt`` is resumed exactly
(``rtseg train --resume``), a finished one (its last epoch or its plateau) is skipped. The initialisations
come from the author's released files (``../shared/weights/essnet-official``) through ``rtseg convert``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

import rtseg
from rtseg.checkpoint import convert_file
from rtseg.utils.io import atomic_write_text, replace_marked

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "essnet_camvid_study.yaml"

#: arm -> (overrides of the recipe, released file to convert for init= (source, file) or None)
ARMS: dict[str, tuple[dict, tuple[str, str] | None]] = {
    # from the author's Cityscapes models: the whole network, the 20-class classifier left out by init=
    "essnet_d_cs_camvid": ({"model": "essnet_d"}, ("essnet-official", "essnet_d_cityscapes.pth")),
    "essnet_dg4s_cs_camvid": ({"model": "essnet_dg4s"}, ("essnet-official", "essnet_dg4_cityscapes.pth")),
    # from the ImageNet-pretrained encoders (thesis §3.4.2; the released code: full network, no encoder stage)
    "essnet_dg2s_in_camvid": ({"model": "essnet_dg2s"},
                              ("essnet-official-imagenet", "essnet_dg2_imagenet_encoder.pth.tar")),
    "essnet_dg4s_in_camvid": ({"model": "essnet_dg4s"},
                              ("essnet-official-imagenet", "essnet_dg4_imagenet_encoder.pth.tar")),
    # from scratch, two stages (encoder on 1/8 labels, then the whole network)
    "essnet_d_camvid": ({"model": "essnet_d", "stages": ["encoder", "full"]}, None),
    # gradual grouping from the dense model (§3.5.1): alpha falls 1 -> 0 over the encoder stage's second
    # half, then the full stage starts with the encoder near-frozen (lr 5e-20) for 5 epochs
    "essnet_dg2s_camvid": ({"model": "essnet_d", "stages": ["encoder", "full"], "gradual_groups": 2,
                            "gradual_shuffle": True, "alpha_start_epoch": 75, "alpha_epochs": 60,
                            "decoder_warmup_epochs": 5}, None),
    # grouped from the start, the same budget as the gradual arm
    "essnet_dg2s_scratch_camvid": ({"model": "essnet_dg2s", "stages": ["encoder", "full"],
                                    "decoder_warmup_epochs": 5}, None),
    # the thesis' baselines, continued to their plateau the same way: the whole network from rtseg's shipped
    # scratch-trained weights (ERFNet's paper: Adam 5e-4, wd 1e-4, poly 0.9 -- this recipe; ENet's: Adam 5e-4,
    # wd 2e-4, kept at the recipe's 1e-4 so all arms share one recipe), full 360x480 frames
    "erfnet_camvid": ({"model": "erfnet"}, ("shipped", "erfnet_camvid")),
    "enet_camvid": ({"model": "enet"}, ("shipped", "enet_camvid")),
}


def _init(arm: str, runs: Path, weights: Path) -> str | None:
    spec = ARMS[arm][1]
    if spec is None:
        return None
    source, name = spec
    out = runs / "init" / f"{arm}.pt"
    if not out.is_file():
        if source == "shipped":  # a copy: shipping the arm later replaces the file it started from
            from rtseg.hub import resolve_weights
            from rtseg.utils.io import atomic_path

            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as tmp:
                shutil.copyfile(resolve_weights(name), tmp)
        else:
            convert_file(source, weights / name, out)
    return str(out)


#: what each arm starts from (the README's "initialisation" column says the same)
INIT_LABEL = {
    "essnet_d_cs_camvid": "author's Cityscapes ESSNet-D", "essnet_dg4s_cs_camvid": "author's Cityscapes ESSNet-DG4",
    "essnet_dg2s_in_camvid": "author's ImageNet DG2 encoder", "essnet_dg4s_in_camvid": "author's ImageNet DG4 encoder",
    "essnet_d_camvid": "scratch", "essnet_dg2s_camvid": "scratch, gradual grouping from ESSNet-D",
    "essnet_dg2s_scratch_camvid": "scratch, grouped from the start",
    "erfnet_camvid": "scratch (rtseg's shipped run), continued", "enet_camvid": "scratch (rtseg's shipped run), continued",
}
#: issue #18's val mIoU targets (%)
TARGET = {"essnet_d_cs_camvid": 66.0, "essnet_dg2s_in_camvid": 62.0, "essnet_d_camvid": 58.0}
BEGIN, END = "<!-- essnet-study:begin -->", "<!-- essnet-study:end -->"


def status_table(logs: Path) -> str:
    """Markdown: one row per arm from its ``metrics.jsonl`` under ``logs`` (committed run states)."""
    head = ("| arm | initialisation | epochs (full stage) | best val mIoU (epoch) | last val mIoU | gain over last 20 | "
            "target | state |")
    rows = [head, "|---|---|---:|---:|---:|---:|---:|---|"]
    for arm in ARMS:
        recs = _records(logs, arm)
        full = [r for r in recs if r.get("stage") == "full" and r.get("val_miou") is not None]
        tgt = f"{TARGET[arm]:.0f}" if arm in TARGET else "-"
        if not full:
            rows.append(f"| `{arm}` | {INIT_LABEL[arm]} | 0 | - | - | - | {tgt} | not started |")
            continue
        best = max(full, key=lambda r: r["val_miou"])
        curve = [r["val_miou"] for r in full]
        gain = (max(curve) - max(curve[:-20])) * 100 if len(curve) > 20 else None
        stopped = any(r.get("stopped") for r in recs)
        state = "plateau (stopped)" if stopped else "training (resumable)"
        rows.append(f"| `{arm}` | {INIT_LABEL[arm]} | {len(full)} | {best['val_miou'] * 100:.2f} ({best['epoch']}) | "
                    f"{curve[-1] * 100:.2f} | {'-' if gain is None else f'{gain:+.2f}'} | {tgt} | {state} |")
    return "\n".join(rows)


def _check_markers(md: Path, start: str, end: str) -> str:
    text = md.read_text()
    try:
        replace_marked(text, start, end, "", str(md))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return text


def write_status(md: Path, logs: Path) -> None:
    text = _check_markers(md, BEGIN, END)
    atomic_write_text(md, replace_marked(text, BEGIN, END, status_table(logs)))
    print(f"{md}: study table updated from {logs}")


# ------------------------------------------------------------------------------------------------ write-up
WRITEUP_BEGIN, WRITEUP_END = "<!-- essnet-study-writeup:begin -->", "<!-- essnet-study-writeup:end -->"
#: the network each arm deploys as (the gradual arm trains a masked ESSNet-D and converts to ESSNet-DG2S)
DEPLOYED = {arm: ("essnet_dg2s" if ARMS[arm][0].get("gradual_groups") == 2 else ARMS[arm][0]["model"]) for arm in ARMS}
#: shipped weights outside the study's arms: the thesis' baselines (rtseg's own recipes) and the ESSNet-DG2S
#: fine-tuned before the study (240x320 crops, 20 + 12 epochs; docs/results.md)
BASELINES = {"erfnet_camvid": "scratch (rtseg's own recipe)", "enet_camvid": "scratch (rtseg's own recipe)",
             "essnet_dg2s_cs_camvid": "author's Cityscapes ESSNet-DG2 (pre-study recipe)"}
#: the arms whose curves make the gradual-vs-scratch figure
CURVE_ARMS = ("essnet_dg2s_camvid", "essnet_dg2s_scratch_camvid", "essnet_d_camvid")


def _kind(init: str) -> str:
    """Initialisation family of a label (the figure's colours): Cityscapes, ImageNet, gradual, scratch."""
    return next((k for k in ("Cityscapes", "ImageNet", "gradual") if k in init), "scratch")


def _records(logs: Path, arm: str) -> list[dict]:
    import json

    log = logs / arm / "metrics.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []


def _full_records(logs: Path, arm: str) -> list[dict]:
    return [r for r in _records(logs, arm) if r.get("stage") == "full" and r.get("val_miou") is not None]


def _cost(model: str, num_classes: int = 11, size: tuple[int, int] = (360, 480)) -> tuple[int, float]:
    """(params, GMACs at ``size``) of ``model`` as deployed."""
    from rtseg.eval.profiler import count_flops, count_params

    net = rtseg.create_model(model, num_classes=num_classes)
    return count_params(net), count_flops(net, size)["macs"] / 1e9


def study_rows(logs: Path, index: dict) -> list[dict]:
    """One dict per network of the write-up: the baselines (from the shipped index) and every study arm with
    a full-stage epoch logged under ``logs``; shipped arms carry their ``rtseg.evaluate`` score and per-class
    IoU from ``index``."""
    rows = []
    for name, init in BASELINES.items():
        if name in index and not (name in ARMS and _full_records(logs, name)):  # a continuation arm supersedes it
            e = index[name]
            rows.append({"name": name, "model": e["model"], "init": init,
                         "best": 100 * e["val_miou"], "epoch": None, "epochs": None, "state": "shipped",
                         "shipped": 100 * e["val_miou"], "per_class": e.get("per_class_iou"),
                         "params": e["params"], "gmacs": e["macs"] / 1e9})
    for arm in ARMS:
        recs = _records(logs, arm)
        full = [r for r in recs if r.get("stage") == "full" and r.get("val_miou") is not None]
        if not full:
            continue
        best = max(full, key=lambda r: r["val_miou"])
        params, gmacs = _cost(DEPLOYED[arm])
        e = index.get(arm)
        rows.append({"name": arm, "model": DEPLOYED[arm], "init": INIT_LABEL[arm], "best": 100 * best["val_miou"],
                     "epoch": best["epoch"], "epochs": len(full),
                     "state": "plateau" if any(r.get("stopped") for r in recs) else "training",
                     "shipped": None if e is None else 100 * e["val_miou"],
                     "per_class": None if e is None else e.get("per_class_iou"), "params": params, "gmacs": gmacs})
    return rows


def _fig_tradeoff(rows: list[dict], path: Path) -> Path:
    """Fig. 3.10 analogue: val mIoU vs GMACs at 360x480, each point labelled with its initialisation."""
    from rtseg.eval.metrics import pyplot, save_figure

    plt = pyplot()
    colour = {"scratch": "tab:blue", "gradual": "tab:green", "Cityscapes": "tab:orange", "ImageNet": "tab:purple"}
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in rows:
        k = _kind(r["init"])
        ax.scatter(r["gmacs"], r["best"], s=45, color=colour[k], label=k, zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), title="initialisation", fontsize=8, loc="upper right")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    xs, ys = [r["gmacs"] for r in rows], [r["best"] for r in rows]
    ax.set_xlim(min(xs) / 1.25, max(xs) * 2.6)  # room for the labels right of the points
    ax.set_ylim(min(ys) - 3, max(ys) + 3)
    from rtseg.reporting.figures import _annotate_points  # overlapping labels move down

    _annotate_points(ax, xs, ys, [f"{r['name']} ({r['init']})" for r in rows],
                     [colour[_kind(r["init"])] for r in rows])
    ax.set_xlabel("GMACs per 360x480 frame (log)")
    ax.set_ylabel("CamVid val mIoU (%, best epoch)")
    ax.set_title("ESSNet study on CamVid: accuracy vs compute (thesis Fig. 3.10 analogue)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110, bbox_inches="tight", pad_inches=0.12)


def _fig_curves(logs: Path, path: Path) -> Path | None:
    """Gradual grouping vs grouped from scratch (and dense ESSNet-D): val mIoU per epoch of both stages, with
    gradual grouping's alpha; None when none of those arms has logged an epoch."""
    from rtseg.eval.metrics import pyplot, save_figure

    logged = {arm: _records(logs, arm) for arm in CURVE_ARMS}
    if not any(logged.values()):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, stage, what in ((axes[0], "encoder", "encoder stage: val mIoU at 1/8 (encoder labels)"),
                            (axes[1], "full", "whole network: val mIoU, full 360x480 frames")):
        for arm, recs in logged.items():
            pts = [(r["epoch"], 100 * r["val_miou"]) for r in recs if r.get("stage") == stage and r.get("val_miou") is not None]
            if pts:
                ax.plot(*zip(*pts), label=f"{arm} ({INIT_LABEL[arm]})", lw=1.2)
        ax.set_title(what, fontsize=9)
        ax.set_xlabel(f"{stage} epoch")
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
    alpha = [(r["epoch"], r["alpha"]) for r in logged.get("essnet_dg2s_camvid", []) if r.get("stage") == "encoder" and "alpha" in r]
    if alpha:
        tw = axes[0].twinx()
        tw.plot(*zip(*alpha), color="grey", ls="--", lw=1, label="alpha (gradual)")
        tw.set_ylabel("alpha (1 = dense, 0 = grouped)")
        tw.set_ylim(-0.05, 1.05)
    axes[1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path, dpi=110, bbox_inches="tight", pad_inches=0.12)


def writeup(rows: list[dict], figures: dict[str, Path | None], rel: Path) -> str:
    """Markdown of the write-up: the Table 3.5 analogue, the figures, the per-class IoU of shipped networks,
    and the gradual-vs-scratch comparison when both arms have full-stage epochs."""
    out = ["Table 3.5 analogue (CamVid val, 11 classes; params and GMACs of the deployed network at 360x480;",
           "\"best\" is the best full-stage epoch of the training log, \"shipped\" the file's own `rtseg.evaluate`):", "",
           "| network | initialisation | val mIoU best (epoch) | shipped | full-stage epochs | params | GMACs | state |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ep = "" if r["epoch"] is None else f" ({r['epoch']})"
        shipped = "-" if r["shipped"] is None else f"{r['shipped']:.2f}"
        epochs = "-" if r["epochs"] is None else r["epochs"]
        out.append(f"| `{r['name']}` (`{r['model']}`) | {r['init']} | {r['best']:.2f}{ep} | {shipped} | {epochs} | "
                   f"{r['params']:,} | {r['gmacs']:.2f} | {r['state']} |")
    for key, caption in (("tradeoff", "accuracy vs GMACs, each point labelled with its initialisation"),
                         ("curves", "gradual grouping vs grouped from scratch: val mIoU per epoch")):
        if figures.get(key) is not None:
            out += ["", f"![{caption}]({figures[key].relative_to(rel).as_posix()})"]
    shipped = [r for r in rows if r["per_class"]]
    if shipped:
        classes = list(shipped[0]["per_class"])
        out += ["", "Per-class IoU (%) of the shipped networks (CamVid val, fp32, full frames):", "",
                "| class | " + " | ".join(f"`{r['name']}`" for r in shipped) + " |",
                "|---|" + "---:|" * len(shipped)]
        for c in classes:
            out.append(f"| {c} | " + " | ".join(f"{100 * r['per_class'].get(c, float('nan')):.1f}" for r in shipped) + " |")
    by = {r["name"]: r for r in rows}
    g, s = by.get("essnet_dg2s_camvid"), by.get("essnet_dg2s_scratch_camvid")
    if g and s:
        d = g["best"] - s["best"]
        out += ["", (f"Gradual grouping vs grouped from scratch (same budget): {g['best']:.2f} vs {s['best']:.2f} = "
                     f"{d:+.2f} points ({g['state']} / {s['state']}); the issue's bar is >= +1.")]
    return "\n".join(out)


def write_writeup(md: Path, logs: Path, index_path: Path, fig_dir: Path) -> None:
    import json

    text = _check_markers(md, WRITEUP_BEGIN, WRITEUP_END)  # before any figure is drawn
    rows = study_rows(logs, json.loads(index_path.read_text()))
    figures = {"tradeoff": _fig_tradeoff(rows, fig_dir / "essnet_study_tradeoff.png") if rows else None,
               "curves": _fig_curves(logs, fig_dir / "essnet_study_curves.png")}
    atomic_write_text(md, replace_marked(text, WRITEUP_BEGIN, WRITEUP_END, writeup(rows, figures, md.parent)))
    print(f"{md}: study write-up updated from {logs} and {index_path}")


def run_arm(arm: str, root: str, runs: Path, weights: Path, workers: int) -> dict:
    run_dir = runs / arm
    mutable = {"workers": workers, "progress": False}
    if (run_dir / "last.pt").is_file():
        print(f"{arm}: resuming {run_dir}", flush=True)
        return rtseg.train(resume=run_dir, **mutable)
    overrides = dict(ARMS[arm][0], root=root, out=str(run_dir), **mutable)
    init = _init(arm, runs, weights)
    if init is not None:
        overrides["init"] = init
    print(f"{arm}: starting {run_dir}", flush=True)
    return rtseg.train(str(RECIPE), **overrides)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="CamVid folder (e.g. ../shared/data/camvid); needed to train")
    ap.add_argument("--runs", type=Path, default=Path("runs/study"), help="where the run folders go")
    ap.add_argument("--weights", type=Path, default=Path("../shared/weights/essnet-official"),
                    help="the author's released files")
    ap.add_argument("--arm", action="append", choices=sorted(ARMS), help="arm(s) to run, in order")
    ap.add_argument("--all", action="store_true", help="every arm, in the table's order")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--status", type=Path, default=None, metavar="MD",
                    help="only rewrite the study table in MD (e.g. docs/results.md) from the logs under --runs")
    ap.add_argument("--writeup", type=Path, default=None, metavar="MD",
                    help="only rewrite the study write-up (Table 3.5 / Fig. 3.10 analogues, curves, per-class IoU) "
                         "in MD from the logs under --runs and the shipped index; figures go to MD's figures/")
    ap.add_argument("--index", type=Path, default=Path(rtseg.__file__).parent / "weights" / "index.json",
                    help="the shipped weights' index (baselines and shipped arms)")
    args = ap.parse_args(argv)
    if args.status is not None or args.writeup is not None:
        if args.status is not None:
            write_status(args.status, args.runs)
        if args.writeup is not None:
            write_writeup(args.writeup, args.runs, args.index, args.writeup.parent / "figures")
        return 0
    if args.root is None:
        ap.error("--root is needed to train (only --status works without it)")
    arms = list(ARMS) if args.all else (args.arm or [])
    if not arms:
        ap.error("give --arm NAME (repeatable) or --all")
    torch.set_num_threads(args.threads)
    for arm in arms:
        res = run_arm(arm, args.root, args.runs, args.weights, args.workers)
        best = res["best_miou"]
        print(f"{arm}: best val mIoU {100 * best:.2f} at epoch {res['best_epoch']}"
              f"{'; ' + res['stopped'] if res.get('stopped') else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
