"""Is the faster training step numerically sound? (issue #18 step 1) Gradients vs fp32, and a curve match.

1. Gradients on one real CamVid batch at a trained checkpoint: the old step (bf16, NCHW, dilated convs) and
   the new one (bf16, space-to-batch, NHWC) against the fp32 original; relative error per parameter.
2. Training curves, interleaved in one process from the same initial weights and the same augmented
   batches: ``old``, ``new``, and ``old_reseed`` (old code, other dropout masks: the run-to-run noise). Two
   stages as ``rtseg train`` runs them (encoder at 1/8, then the full net with a fresh Adam).

    python scripts/curve_match_train_speed.py --root ../shared/data/camvid --crop 176x240 --batch 4 \\
        --encoder-steps 100 --full-steps 100 --json curve.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import numpy as np
import torch


def _batches(ds, transform, seed: int, batch: int, n: int, epoch0: int = 0):
    """``n`` batches of ``(B x 3 x h x w uint8, B x h x w int64)`` as the engine draws them (seeded per sample)."""
    out, epoch, order, pos = [], epoch0, [], 0
    while len(out) < n:
        if pos + batch > len(order):
            order = np.random.default_rng([seed, epoch]).permutation(len(ds)).tolist()
            epoch, pos = epoch + 1, 0
        ims, labs = [], []
        for i in order[pos : pos + batch]:
            im, lab = ds[i]
            a, b = transform(im, lab, np.random.default_rng([seed, epoch, i]))
            ims.append(a)
            labs.append(b)
        pos += batch
        out.append((torch.stack(ims), torch.stack(labs)))
    return out


def grad_check(args, ds, crit, num_classes: int) -> dict:
    import rtseg
    from rtseg.data.transforms import EvalTransform, downsample_label
    from rtseg.nn.space_to_batch import speed_up

    model = rtseg.load_model(args.checkpoint) if args.checkpoint else rtseg.create_model(args.model, num_classes=num_classes)
    model = model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout2d):
            m.p = 0.0  # same forward everywhere
    ev = EvalTransform()
    ims, labs = zip(*(ev(*ds[i]) for i in range(args.batch)))
    x = torch.stack(ims).float() / 255
    y = torch.stack(labs)
    res = {}
    for stage, enc in (("encoder", True), ("full", False)):
        yy = downsample_label(y, 8, "nearest", 255, num_classes) if enc else y
        grads = {}
        for name, amp, s2b, cl in (("fp32", False, False, False), ("old", True, False, False),
                                   ("new", True, True, True)):
            m = copy.deepcopy(model)
            if s2b:
                speed_up(m)
            xx = x
            if cl:
                m = m.to(memory_format=torch.channels_last)
                xx = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = crit(m(xx, encoder_only=enc), yy)
            loss.backward()
            grads[name] = {k: p.grad.float() for k, p in m.named_parameters() if p.grad is not None}
        rel = {}
        for name in ("old", "new"):
            errs = {k: ((g - grads["fp32"][k]).norm() / grads["fp32"][k].norm().clamp(min=1e-20)).item()
                    for k, g in grads[name].items() if k.endswith("weight")}
            dil = [v for k, v in errs.items() if "conv3x3_2" in k and "encoder.layers" in k and int(k.split(".")[2]) >= 7]
            rel[name] = {"median_all_weights": statistics.median(errs.values()), "max_all_weights": max(errs.values()),
                         "median_dilated_dw": statistics.median(dil), "max_dilated_dw": max(dil)}
        res[stage] = rel
        print(f"gradients vs fp32, {stage} stage: " + "; ".join(
            f"{n}: median {r['median_all_weights']:.3f} max {r['max_all_weights']:.3f}, dilated dw median "
            f"{r['median_dilated_dw']:.3f} max {r['max_dilated_dw']:.3f}" for n, r in rel.items()), flush=True)
    return res


def curves(args, ds, crit, num_classes: int) -> dict:
    import rtseg
    from rtseg.data.transforms import TrainTransform, downsample_label
    from rtseg.nn.space_to_batch import speed_up

    torch.manual_seed(args.seed)
    init = rtseg.create_model(args.model, num_classes=num_classes).train()
    crop = tuple(int(v) for v in args.crop.split("x"))
    aug = TrainTransform(crop, (0.5, 2.0), 0.5, 2, 255)
    variants = {}
    for name, s2b, cl, seed in (("old", False, False, args.seed), ("new", True, True, args.seed),
                                ("old_reseed", False, False, args.seed + 1)):
        m = copy.deepcopy(init)
        if s2b:
            speed_up(m)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(seed)
        variants[name] = {"model": m, "cl": cl, "rng": g.get_state(), "loss": {}, "time": 0.0}
    out = {}
    for stage, n in (("encoder", args.encoder_steps), ("full", args.full_steps)):
        enc = stage == "encoder"
        data = _batches(ds, aug, args.seed, args.batch, n, epoch0=0 if enc else 1000)
        for v in variants.values():
            v["opt"] = torch.optim.Adam(v["model"].parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=2e-4)
            v["loss"][stage] = []
        for step, (ims, labs) in enumerate(data):
            y = downsample_label(labs, 8, "nearest", 255, num_classes) if enc else labs
            for name, v in variants.items():
                torch.set_rng_state(v["rng"])  # each run its own dropout stream, whatever the interleaving
                x = ims.float().div_(255)
                if v["cl"]:
                    x = x.contiguous(memory_format=torch.channels_last)
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = crit(v["model"](x, encoder_only=enc), y)
                loss.backward()
                v["opt"].step()
                v["opt"].zero_grad(set_to_none=True)
                v["time"] += time.perf_counter() - t
                v["rng"] = torch.get_rng_state()
                v["loss"][stage].append(float(loss))
            if step % 20 == 19 or step == n - 1:
                w = slice(max(0, step - 19), step + 1)
                print(f"{stage} step {step + 1}: mean loss of the last 20 steps " + ", ".join(
                    f"{k} {statistics.mean(v['loss'][stage][w]):.4f}" for k, v in variants.items()), flush=True)
        L = {k: np.array(v["loss"][stage]) for k, v in variants.items()}
        k = max(1, n // 5)
        out[stage] = {
            "loss": {name: arr.tolist() for name, arr in L.items()},
            "first_mean": {name: float(arr[:k].mean()) for name, arr in L.items()},
            "last_mean": {name: float(arr[-k:].mean()) for name, arr in L.items()},
            "mean_abs_diff_new_vs_old": float(np.abs(L["new"] - L["old"]).mean()),
            "mean_abs_diff_reseed_vs_old": float(np.abs(L["old_reseed"] - L["old"]).mean()),
        }
        o = out[stage]
        print(f"{stage}: mean loss first/last {k} steps: " + ", ".join(
            f"{nm} {o['first_mean'][nm]:.4f}/{o['last_mean'][nm]:.4f}" for nm in L)
            + f"; mean |new-old| {o['mean_abs_diff_new_vs_old']:.4f} vs |reseed-old| "
            f"{o['mean_abs_diff_reseed_vs_old']:.4f} (noise)", flush=True)
    out["train_time_s"] = {k: v["time"] for k, v in variants.items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--model", default="essnet_dg2s")
    ap.add_argument("--checkpoint", default=None, help="trained weights for the gradient check (rtseg name/file)")
    ap.add_argument("--crop", default="176x240")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--encoder-steps", type=int, default=100)
    ap.add_argument("--full-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--skip-curves", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from rtseg.data import build_dataset, class_frequencies
    from rtseg.engine.losses import WeightedCrossEntropy, class_weights

    ds = build_dataset("camvid", root=args.root, split="train", cache=True)
    ds.preload()
    w = class_weights("enet", class_frequencies(ds), 1.10, ds.num_classes)
    crit = WeightedCrossEntropy(w, 255)
    res = {"command": " ".join(sys.argv), "torch": torch.__version__, "loadavg_start": os.getloadavg()}
    res["gradients"] = grad_check(args, ds, crit, ds.num_classes)
    if not args.skip_curves:
        res["curves"] = curves(args, ds, crit, ds.num_classes)
    res["loadavg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
