"""Training-step throughput (img/s) per model: fp32 vs bf16 autocast, channels_last off/on.

    python scripts/bench_train.py --models enet erfnet essnet_dg2s --size 360x480 --batch 4 --json out.json

One "step" is what rtseg.engine.trainer does per batch: forward, class-weighted cross-entropy, backward, Adam
step. Reports the median of ``--steps`` timed steps after ``--warmup`` steps, with the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import rtseg
from rtseg.cli import parse_size


def bench(name: str, size: tuple[int, int], batch: int, amp: bool, channels_last: bool, warmup: int,
          steps: int, num_classes: int = 11) -> dict:
    torch.manual_seed(0)
    model = rtseg.create_model(name, num_classes=num_classes).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=2e-4)
    x = torch.rand(batch, 3, *size).to(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch, *size))
    w = torch.rand(num_classes) + 0.5
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, weight=w, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"model": name, "size": list(size), "batch": batch, "precision": "bf16" if amp else "fp32",
            "channels_last": channels_last, "img_per_s": batch / med, "step_ms_median": med * 1e3,
            "step_ms_min": min(times) * 1e3, "step_ms_max": max(times) * 1e3, "steps": steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["enet", "erfnet", "essnet_dg2s"])
    ap.add_argument("--size", type=parse_size, default=(360, 480))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None, help="write all rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"batch {args.batch}, {args.size[0]}x{args.size[1]}")
    print(f"{'model':14s} {'precision':9s} {'chan_last':9s} {'img/s':>7s} {'step ms (median, min-max)':>28s}")
    rows = []
    for name in args.models:
        for amp in (False, True):
            for cl in (False, True):
                r = bench(name, args.size, args.batch, amp, cl, args.warmup, args.steps)
                rows.append(r)
                print(f"{name:14s} {r['precision']:9s} {cl!s:9s} {r['img_per_s']:7.2f} "
                      f"{r['step_ms_median']:10.0f} ({r['step_ms_min']:.0f}-{r['step_ms_max']:.0f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
