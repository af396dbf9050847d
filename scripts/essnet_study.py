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
import sys
from pathlib import Path

import torch

import rtseg
from rtseg.checkpoint import convert_file

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
}


def _init(arm: str, runs: Path, weights: Path) -> str | None:
    spec = ARMS[arm][1]
    if spec is None:
        return None
    source, name = spec
    out = runs / "init" / f"{arm}.pt"
    if not out.is_file():
        convert_file(source, weights / name, out)
    return str(out)


#: what each arm starts from (the README's "initialisation" column says the same)
INIT_LABEL = {
    "essnet_d_cs_camvid": "author's Cityscapes ESSNet-D", "essnet_dg4s_cs_camvid": "author's Cityscapes ESSNet-DG4",
    "essnet_dg2s_in_camvid": "author's ImageNet DG2 encoder", "essnet_dg4s_in_camvid": "author's ImageNet DG4 encoder",
    "essnet_d_camvid": "scratch", "essnet_dg2s_camvid": "scratch, gradual grouping from ESSNet-D",
    "essnet_dg2s_scratch_camvid": "scratch, grouped from the start",
}
#: issue #18's val mIoU targets (%)
TARGET = {"essnet_d_cs_camvid": 66.0, "essnet_dg2s_in_camvid": 62.0, "essnet_d_camvid": 58.0}
BEGIN, END = "<!-- essnet-study:begin -->", "<!-- essnet-study:end -->"


def status_table(logs: Path) -> str:
    """Markdown: one row per arm from its ``metrics.jsonl`` under ``logs`` (committed run states)."""
    import json

    head = ("| arm | initialisation | epochs (full stage) | best val mIoU (epoch) | last val mIoU | gain over last 20 | "
            "target | state |")
    rows = [head, "|---|---|---:|---:|---:|---:|---:|---|"]
    for arm in ARMS:
        log = logs / arm / "metrics.jsonl"
        recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
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


def write_status(md: Path, logs: Path) -> None:
    text = md.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{md}: markers {BEGIN} / {END} not found")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    md.write_text(f"{head}{BEGIN}\n{status_table(logs)}\n{END}{tail}")
    print(f"{md}: study table updated from {logs}")


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
    args = ap.parse_args(argv)
    if args.status is not None:
        write_status(args.status, args.runs)
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
