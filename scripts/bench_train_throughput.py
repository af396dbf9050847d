"""Does the input pipeline keep up with the model? Loader-alone vs train-step throughput.

Measures, with the training engine's own code paths (rtseg.engine.trainer's loader and step):
  * the DataLoader alone (decode + augment + collate), img/s, for several worker counts, with and
    without the decoded-frame cache;
  * one ENet training step (forward, weighted CE, backward, Adam) on fixed tensors, img/s, with and
    without bf16 autocast.
The model is starved when the loader's img/s is below the step's img/s.

    python scripts/bench_train_throughput.py --root ../shared/data/camvid --crop 360x480 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch


def _loader_rate(cfg, ds, batches: int, repeats: int) -> list[float]:
    """Sustained img/s over ``batches`` batches (timed from the first batch's arrival), per epoch."""
    from torch.utils.data import DistributedSampler

    from rtseg.data.transforms import TrainTransform
    from rtseg.engine.data import Augmented, EpochSampler, make_loader

    sampler = EpochSampler(DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0))
    aug = TrainTransform(cfg.crop, cfg.scale, cfg.hflip, cfg.translate, cfg.ignore_index)
    loader = make_loader(
        Augmented(ds, aug, 0), sampler, cfg.batch_size, cfg, torch.device("cpu"), True, 0
    )
    rates = []
    for epoch in range(repeats):
        sampler.set_epoch(epoch)
        n, t0 = 0, None
        for images, _ in loader:
            if t0 is None:
                t0 = time.perf_counter()  # workers have just started: no prefetched backlog yet
            else:
                n += images.shape[0]
            if n >= (batches - 1) * cfg.batch_size:
                break
        rates.append(n / (time.perf_counter() - t0))
    return rates


def _step_rate(model_name: str, num_classes: int, crop, batch: int, amp: bool, steps: int, warmup: int):
    import rtseg
    from rtseg.engine.losses import WeightedCrossEntropy

    torch.manual_seed(0)
    model = rtseg.create_model(model_name, num_classes=num_classes).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=2e-4)
    crit = WeightedCrossEntropy(torch.ones(num_classes))
    x = torch.rand(batch, 3, *crop)
    y = torch.randint(0, num_classes, (batch, *crop))
    rates = []
    for i in range(steps + warmup):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = crit(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            rates.append(batch / (time.perf_counter() - t))
    return rates


def _summary(r: list[float]) -> dict:
    q = statistics.quantiles(r, n=4) if len(r) >= 2 else [r[0], r[0], r[0]]
    return {"median": round(statistics.median(r), 2), "q1": round(q[0], 2), "q3": round(q[2], 2), "n": len(r)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--root", default=None)
    ap.add_argument("--model", default="enet")
    ap.add_argument("--crop", default="360x480")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batches", type=int, default=20, help="loader batches per timed epoch (3 epochs)")
    ap.add_argument("--steps", type=int, default=4, help="timed train steps per setting")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rtseg.data import build_dataset
    from rtseg.engine.config import load_config

    out = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "load_avg_at_start": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "loader": {},
        "step": {},
    }
    for cache in (False, True):
        ds = build_dataset(args.dataset, root=args.root, split="train", **({"cache": True} if cache else {}))
        if cache and hasattr(ds, "preload"):
            ds.preload()  # as the engine does with cache=true: decoded once, shared with forked workers
        for w in (int(v) for v in args.workers.split(",")):
            cfg = load_config(None, {"crop": args.crop, "batch_size": str(args.batch), "workers": str(w)})
            r = _loader_rate(cfg, ds, args.batches, repeats=3)
            out["loader"][f"workers={w} cache={cache}"] = _summary(r)
            print(f"loader workers={w} cache={cache}: {_summary(r)}", flush=True)
    crop = tuple(int(v) for v in args.crop.split("x"))
    n_cls = build_dataset(args.dataset, root=args.root, split="train").num_classes
    for amp in (False, True):
        r = _step_rate(args.model, n_cls, crop, args.batch, amp, args.steps, warmup=1)
        out["step"][f"{args.model} amp={amp}"] = _summary(r)
        print(f"step {args.model} amp={amp}: {_summary(r)}", flush=True)
    out["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
