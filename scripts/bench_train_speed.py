"""Old vs new training speed, interleaved (issue #18 step 1): train-step img/s and ``rtseg train`` epoch time.

On a shared machine single timings drift by 2x and more, so every comparison here alternates the variants
(A, B, A, B, ...) and reports the median per variant, the spread and the ratio.

Step mode: one process, the engine's step (bf16 autocast forward, class-weighted CE, backward, Adam) on
fixed tensors, for the encoder stage (1/8 labels) and the full stage; variants are config settings:

    python scripts/bench_train_speed.py step --model essnet_dg2s --size 360x480 --batch 4 --rounds 5 \\
        --variant old:space_to_batch=false --variant new:space_to_batch=true \\
        --variant new_nhwc:space_to_batch=true,channels_last=true

Epoch mode: alternate short ``rtseg train`` runs of two checkouts (e.g. the base commit in a second
worktree) on the first ``--images`` CamVid training frames, one epoch per stage; reads each stage's
``time_s`` from metrics.jsonl:

    git worktree add ../speed-base 38308fc --detach
    python scripts/bench_train_speed.py epoch --old ../speed-base --new . --root ../shared/data/camvid \\
        --images 96 --rounds 3 -- --config configs/essnet_camvid.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):8.3f}  (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


# ------------------------------------------------------------------------------------------------- step
def _step_fn(model_name: str, size, batch: int, encoder_only: bool, settings: dict):
    import torch

    import rtseg
    from rtseg.engine.losses import WeightedCrossEntropy
    from rtseg.engine.trainer import has_dilated_depthwise as _has_dilated_depthwise

    torch.manual_seed(0)
    model = rtseg.create_model(model_name, num_classes=11).train()
    if settings.get("space_to_batch", "true") == "true":
        from rtseg.nn.space_to_batch import speed_up

        speed_up(model)
    cl = settings.get("channels_last", "false") == "true"
    if cl and _has_dilated_depthwise(model):
        cl = False  # what the engine does (bf16 + NHWC dilated depthwise gradient bug)
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.999), weight_decay=2e-4)
    crit = WeightedCrossEntropy(torch.rand(11) + 0.5, 255)
    x = torch.rand(batch, 3, *size).contiguous(memory_format=fmt)
    y = torch.randint(0, 11, (batch, *size))
    if encoder_only:
        y = y[:, ::8, ::8].contiguous()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = crit(model(x, encoder_only=encoder_only), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_step(args) -> dict:
    import torch

    from rtseg.cli import parse_size

    torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    variants = []
    for v in args.variant:
        name, _, kv = v.partition(":")
        variants.append((name, dict(p.split("=") for p in kv.split(",") if p)))
    out = {"mode": "step", "command": " ".join(sys.argv), "torch": torch.__version__, "threads": args.threads,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
           "loadavg_start": os.getloadavg(), "stages": {}}
    for stage in args.stages:
        enc = stage == "encoder"
        fns = {}
        for name, settings in variants:
            fns[name] = _step_fn(args.model, size, args.batch, enc, settings)
            for _ in range(args.warmup):
                fns[name]()
        times: dict[str, list[float]] = {n: [] for n in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                for _ in range(args.steps):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        base = statistics.median(times[variants[0][0]])
        rows = {}
        print(f"# {args.model} {stage} stage, batch {args.batch}, {size[0]}x{size[1]}, bf16, "
              f"{args.threads} threads, load {os.getloadavg()[0]:.1f}")
        for name, ts in times.items():
            med = statistics.median(ts)
            rows[name] = {"step_s": ts, "median_s": med, "img_per_s": args.batch / med, "speedup": base / med}
            print(f"{stage:8s} {name:12s} step s {_summary(ts)}  {args.batch / med:6.2f} img/s  x{base / med:.2f}",
                  flush=True)
        out["stages"][stage] = rows
    out["loadavg_end"] = os.getloadavg()
    return out


# ------------------------------------------------------------------------------------------------ epoch
def _subset_root(root: Path, images: int, val: int, where: Path) -> Path:
    """A CamVid root with the first ``images`` train and ``val`` val frames (symlinked folders, cut txt files)."""
    sub = where / "camvid_subset"
    sub.mkdir(parents=True, exist_ok=True)
    for d in ("train", "trainannot", "val", "valannot"):
        if not (sub / d).exists():
            (sub / d).symlink_to((root / d).resolve())
    for split, n in (("train", images), ("val", val)):
        lines = (root / f"{split}.txt").read_text().splitlines()[:n]
        (sub / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return sub


def _train_once(checkout: Path, root: Path, out: Path, extra: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(checkout.resolve()))
    cmd = [sys.executable, "-m", "rtseg", "train", *extra, f"root={root}", f"out={out}", "epochs=1",
           "encoder_epochs=1", "progress=false", "val_split=none"]
    subprocess.run(cmd, check=True, env=env, cwd=checkout, stdout=subprocess.DEVNULL)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["stage"]: float(r["time_s"]) for r in rows}


def run_epoch(args) -> dict:
    extra = [a for a in args.train_args if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        root = _subset_root(Path(args.root), args.images, 8, Path(tmp))
        times: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
        for r in range(args.rounds):
            pair = [("new", Path(args.new)), ("old", Path(args.old))]
            for name, checkout in pair if r % 2 == 0 else pair[::-1]:  # ABBA: drift hits both alike
                t = _train_once(checkout, root, Path(tmp) / f"{name}{r}", extra)
                for stage, s in t.items():
                    times[name].setdefault(stage, []).append(s)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()), flush=True)
    out = {"mode": "epoch", "command": " ".join(sys.argv), "images": args.images, "times_s": times,
           "loadavg_end": os.getloadavg()}
    for stage in times["old"]:
        o, n = statistics.median(times["old"][stage]), statistics.median(times["new"][stage])
        print(f"{stage:8s} epoch of {args.images} images: old {_summary(times['old'][stage])} s")
        print(f"{stage:8s} epoch of {args.images} images: new {_summary(times['new'][stage])} s  "
              f"-> {o / n:.2f}x faster ({args.images / o:.2f} -> {args.images / n:.2f} img/s)")
        out[f"{stage}_speedup"] = o / n
    tot_o = sum(statistics.median(v) for v in times["old"].values())
    tot_n = sum(statistics.median(v) for v in times["new"].values())
    print(f"both stages: {tot_o:.1f} s -> {tot_n:.1f} s, {tot_o / tot_n:.2f}x")
    out["total_speedup"] = tot_o / tot_n
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("step")
    s.add_argument("--model", default="essnet_dg2s")
    s.add_argument("--size", default="360x480")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--stages", nargs="+", default=["encoder", "full"], choices=["encoder", "full"])
    s.add_argument("--variant", action="append", default=None,
                   help="NAME:key=value,... (space_to_batch, channels_last); the first is the baseline")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    e = sub.add_parser("epoch")
    e.add_argument("--old", required=True, help="checkout of the old code (repository root)")
    e.add_argument("--new", required=True, help="checkout of the new code")
    e.add_argument("--root", required=True, help="CamVid root")
    e.add_argument("--images", type=int, default=96)
    e.add_argument("--rounds", type=int, default=3)
    e.add_argument("train_args", nargs="*", help="after --: rtseg train arguments, e.g. --config FILE key=value")
    for p in (s, e):
        p.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.mode == "step" and not args.variant:
        args.variant = ["old:space_to_batch=false", "new:space_to_batch=true"]
    out = run_step(args) if args.mode == "step" else run_epoch(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
