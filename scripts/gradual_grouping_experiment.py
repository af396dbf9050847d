"""Gradual grouping vs grouped-from-scratch, same budget (ESSNet thesis §3.5; docs/gradual_grouping.md).

Four arms by default, every one trained by ``rtseg.engine.trainer`` from the same recipe with the same data, seed,
stages, epochs, crop, optimiser, schedule and decoder warm-up; they differ only in how the grouped
encoder comes about:

    dg{g}s-scratch   ``essnet_dg{g}s`` trained grouped from the first step
    dg{g}s-gradual   ``essnet_d`` with ``gradual_groups=g`` (+ shuffle): alpha 1 -> 0 over the first
                     ``--alpha-frac`` of the encoder stage, then grouped fine-tuning; converted at the end
                     to ``essnet_dg{g}s`` (checked: same parameter count, outputs within 1e-5)

Resumable: an arm whose run folder holds ``last.pt`` is continued (a finished arm is a no-op), so the script
can be killed and started again with the same arguments. Outputs: ``OUT/<arm>/`` run folders,
``OUT/summary.json`` / ``OUT/summary.md`` (val mIoU per arm, params), and a figure of alpha and val mIoU per
epoch (``--fig``). ``--results-md FILE`` also writes the summary into FILE between marker comments.

    # CamVid, reduced budget (crops 240x320, 60+60 epochs), on a GPU:
    python scripts/gradual_grouping_experiment.py --root ../shared/data/camvid --out runs/gg \
        --encoder-epochs 60 --epochs 60 --crop 240x320 --results-md docs/results.md
    # a 2-minute end-to-end check on the synthetic dataset:
    python scripts/gradual_grouping_experiment.py --dataset synthetic --out /tmp/gg --encoder-epochs 2 \
        --epochs 2 --crop 48x64 --dataset-kwargs "{'size': (48, 64), 'length': 8}" --batch-size 4 --no-amp
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
#: keys in which the arms may differ; everything else must be identical (the "same budget" check)
ARM_KEYS = {"model", "out", "gradual_groups", "gradual_shuffle", "alpha_epochs", "alpha_start_epoch"}
BEGIN, END = "<!-- gradual-grouping:begin -->", "<!-- gradual-grouping:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "essnet_camvid.yaml", help="base recipe")
    p.add_argument("--dataset", default="camvid")
    p.add_argument("--root", default=None, help="dataset folder (CamVid: ../shared/data/camvid)")
    p.add_argument("--dataset-kwargs", default="{}", help="dict literal, e.g. \"{'size': (48, 64)}\"")
    p.add_argument("--out", type=Path, default=Path("runs/gradual_grouping"))
    p.add_argument("--groups", type=int, nargs="+", default=[2, 4])
    p.add_argument("--no-shuffle", action="store_true", help="DGC instead of DGCS (essnet_dg{g})")
    p.add_argument("--encoder-epochs", type=int, default=60)
    p.add_argument("--epochs", type=int, default=60, help="epochs of the full (decoder-attached) stage")
    p.add_argument(
        "--alpha-frac", type=float, default=0.5, help="share of the encoder stage where alpha falls"
    )
    p.add_argument("--alpha-schedule", default="linear", choices=["linear", "cosine", "step"])
    p.add_argument("--decoder-warmup", type=int, default=None, help="default: a tenth of --epochs (>= 1)")
    p.add_argument("--crop", default="240x320", help="training crop HxW (validation uses full frames)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--fig", type=Path, default=REPO / "docs" / "figures" / "gradual_grouping.png")
    p.add_argument("--results-md", type=Path, default=None, help="write the summary into this Markdown file")
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    a = p.parse_args(argv)
    if a.encoder_epochs < 2 or a.epochs < 1:
        p.error(
            "--encoder-epochs must be >= 2 (alpha must reach 0 inside the encoder stage) and --epochs >= 1"
        )
    if not 0 < a.alpha_frac < 1:
        p.error("--alpha-frac must be in (0, 1): alpha falls during part of the encoder stage, then stays 0")
    if any(g < 2 for g in a.groups):
        p.error("--groups must be >= 2")
    return a


def arm_configs(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Arm name -> ``rtseg.engine.trainer`` overrides (on top of ``--config``)."""
    warm = a.decoder_warmup if a.decoder_warmup is not None else max(1, a.epochs // 10)
    if warm >= a.epochs:
        raise SystemExit(f"--decoder-warmup {warm} must be smaller than --epochs {a.epochs}")
    common: dict[str, Any] = {
        "dataset": a.dataset,
        "root": a.root,
        "cache": a.dataset != "synthetic",  # decode CamVid PNGs once; generated scenes have nothing to cache
        "dataset_kwargs": ast.literal_eval(a.dataset_kwargs),
        "stages": ("encoder", "full"),
        "encoder_epochs": a.encoder_epochs,
        "epochs": a.epochs,
        "crop": a.crop,
        "batch_size": a.batch_size,
        "workers": a.workers,
        "seed": a.seed,
        "device": a.device,
        "amp": not a.no_amp,
        "progress": a.progress,
        "decoder_warmup_epochs": warm,
        "alpha_schedule": a.alpha_schedule,
    }
    shuffle = not a.no_shuffle
    alpha_epochs = max(1, min(round(a.alpha_frac * a.encoder_epochs), a.encoder_epochs - 1))
    arms = {}
    for g in a.groups:
        native = f"essnet_dg{g}{'s' if shuffle else ''}"
        tag = native.removeprefix("essnet_")
        arms[f"{tag}-scratch"] = {**common, "model": native, "out": str(a.out / f"{tag}-scratch")}
        arms[f"{tag}-gradual"] = {
            **common,
            "model": "essnet_d",
            "gradual_groups": g,
            "gradual_shuffle": shuffle,
            "alpha_start_epoch": 0,
            "alpha_epochs": alpha_epochs,
            "out": str(a.out / f"{tag}-gradual"),
        }
    return arms


def check_same_budget(resolved: dict[str, dict[str, Any]]) -> None:
    """Every resolved config key outside ARM_KEYS must agree across arms (else the comparison is unfair)."""
    names = list(resolved)
    ref = resolved[names[0]]
    for n in names[1:]:
        diff = sorted(k for k in ref if k not in ARM_KEYS and ref[k] != resolved[n][k])
        if diff:
            raise SystemExit(f"arms {names[0]} and {n} differ in {diff}: not the same budget")


def run_arm(config: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train (or continue, or skip if finished) one arm; returns ``rtseg.engine.trainer``'s result."""
    import rtseg

    run_dir = Path(overrides["out"])
    if (run_dir / "last.pt").is_file():
        mutable = {k: overrides[k] for k in ("workers", "progress", "device") if overrides.get(k) is not None}
        return rtseg.train(resume=run_dir, **mutable)
    return rtseg.train(config, **overrides)


def convert_check(run_dir: Path, native: str) -> dict[str, Any]:
    """Convert a gradual arm's best.pt to the grouped form; compare params/outputs with the native model."""
    from rtseg import create_model, load_model
    from rtseg.eval.profiler import count_params
    from rtseg.nn.grouping import convert_to_deploy

    masked = load_model(run_dir / "best.pt")
    grouped = convert_to_deploy(masked, fold_bn=False)
    ref = create_model(native, **grouped.rtseg_kwargs)
    ref.load_state_dict(grouped.state_dict())  # strict: raises if the structure differs
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = float((masked(x) - ref.eval()(x)).abs().max())
    return {
        "deploy_model": grouped.rtseg_name,
        "params": count_params(grouped),
        "native_params": count_params(ref),
        "max_abs_diff_vs_masked": err,
    }


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def summarise(arms: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from rtseg import create_model
    from rtseg.eval.profiler import count_params

    rows = []
    for name, ov in arms.items():
        run = Path(ov["out"])
        log = read_log(run)
        best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["meta"]
        row = {
            "arm": name,
            "trained_as": ov["model"]
            + (f" + gradual_groups={ov['gradual_groups']}" if "gradual_groups" in ov else ""),
            "epochs": len(log),
            "final_val_miou": log[-1]["val_miou"],
            "best_val_miou": best.get("val_miou"),
            "best_epoch": best.get("epoch"),
            "curve": [
                {"epoch": r["global_epoch"], "val_miou": r["val_miou"], "alpha": r.get("alpha")} for r in log
            ],
        }
        if "gradual_groups" in ov:
            native = f"essnet_dg{ov['gradual_groups']}{'s' if ov['gradual_shuffle'] else ''}"
            row.update(convert_check(run, native))
        else:
            m = create_model(ov["model"], num_classes=len(best["class_names"]))
            row.update({"deploy_model": ov["model"], "params": count_params(m)})
        rows.append(row)
    return {"arms": rows, "config": {n: results[n]["config"] for n in arms}}


def markdown(summary: dict[str, Any], cmd: str) -> str:
    lines = [
        "| arm | trained as | deployed as | params | val mIoU (last epoch) | best val mIoU (epoch) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in summary["arms"]:
        best = "n/a" if r["best_val_miou"] is None else f"{100 * r['best_val_miou']:.2f} ({r['best_epoch']})"
        lines.append(
            f"| {r['arm']} | `{r['trained_as']}` | `{r['deploy_model']}` | {r['params']:,} | "
            f"{100 * r['final_val_miou']:.2f} | {best} |"
        )
    cfg = next(iter(summary["config"].values()))
    lines += [
        "",
        f"Same budget in every arm: dataset `{cfg['dataset']}`, stages {cfg['stages']} with "
        f"{cfg['encoder_epochs']} + {cfg['epochs']} epochs, crop {cfg['crop']}, batch {cfg['batch_size']}, "
        f"seed {cfg['seed']}, decoder warm-up {cfg['decoder_warmup_epochs']} epochs. Best = best val epoch of the "
        "last stage (for gradual arms chosen among alpha = 0 epochs). Command: `" + cmd + "`.",
    ]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], fig_path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_a, ax_m) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    tags = sorted({r["arm"].split("-")[0] for r in summary["arms"]})
    for r in summary["arms"]:
        tag, kind = r["arm"].split("-")
        c = colours[tags.index(tag) % len(colours)]
        ep = [p["epoch"] for p in r["curve"]]
        ls = "-" if kind == "gradual" else "--"
        ax_m.plot(ep, [100 * (p["val_miou"] or 0) for p in r["curve"]], ls, color=c, label=r["arm"])
        if kind == "gradual":
            ax_a.plot(ep, [p["alpha"] for p in r["curve"]], "-", color=c, label=r["arm"])
    cfg = next(iter(summary["config"].values()))
    for ax in (ax_a, ax_m):
        ax.axvline(cfg["encoder_epochs"] + 0.5, color="grey", lw=0.8, ls=":")
    ax_a.set_ylabel("alpha")
    ax_a.set_ylim(-0.05, 1.05)
    ax_a.legend(fontsize=8)
    ax_m.set_ylabel("val mIoU (%)")
    ax_m.set_xlabel("epoch (encoder stage | full stage)")
    ax_m.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_m.legend(fontsize=8)
    ax_a.set_title(f"gradual grouping vs grouped from scratch ({cfg['dataset']})")
    fig.tight_layout()
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_path, dpi=120)
    plt.close(fig)


def write_section(path: Path, text: str) -> None:
    """Put ``text`` between the marker comments of ``path`` (appended with the markers if absent)."""
    old = path.read_text() if path.is_file() else ""
    block = f"{BEGIN}\n{text}{END}\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = (
            old
            + ("\n" if old and not old.endswith("\n") else "")
            + "\n## Gradual grouping (ESSNet §3.5)\n\n"
            + block
        )
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 16)))
    from rtseg.engine.config import config_to_dict, load_config

    arms = arm_configs(a)
    check_same_budget({n: config_to_dict(load_config(a.config, ov)) for n, ov in arms.items()})
    a.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, ov in arms.items():
        print(
            f"== {name}: {ov['model']}"
            + (f" gradual_groups={ov['gradual_groups']}" if "gradual_groups" in ov else ""),
            flush=True,
        )
        results[name] = run_arm(a.config, ov)
    summary = summarise(arms, results)
    args = argv if argv is not None else sys.argv[1:]
    cmd = shlex.join(["python", "scripts/gradual_grouping_experiment.py", *args])
    md = markdown(summary, cmd)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (a.out / "summary.md").write_text(md)
    plot(summary, a.fig)
    if a.results_md is not None:
        rel = os.path.relpath(a.fig.resolve(), a.results_md.resolve().parent)
        write_section(a.results_md, md + f"\n![alpha and val mIoU per epoch]({rel})\n")
    print(md)
    print(f"figure: {a.fig}\nsummary: {a.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
