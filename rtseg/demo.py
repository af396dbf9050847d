"""``rtseg demo``: the whole pipeline on the built-in synthetic street scenes, no download.

train (two-stage, the papers' recipe) -> evaluate on the held-out split -> profile the zoo on this
machine -> overlays of predictions -> an HTML report of the trained run (``report/index.html``, see
:func:`rtseg.report`). Everything lands in one run folder with a ``summary.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtseg.checkpoint import load_model
from rtseg.data import build_dataset
from rtseg.engine.trainer import train
from rtseg.eval.loop import evaluate
from rtseg.eval.metrics import format_table, to_jsonable
from rtseg.eval.profiler import profile_model
from rtseg.eval.visualize import colorize, grid, overlay, save_png
from rtseg.reporting import report
from rtseg.utils.io import atomic_write_text

__all__ = ["DEMO_RECIPE", "run_demo"]

#: a few-minute CPU recipe: two-stage ENet on 180x240 synthetic scenes (configs/synthetic_demo.yaml)
DEMO_RECIPE: dict[str, Any] = {
    "model": "enet",
    "dataset": "synthetic",
    "dataset_kwargs": {"size": [180, 240]},
    "stages": ["encoder", "full"],
    "encoder_epochs": 3,
    "epochs": 5,
    "batch_size": 8,
    "crop": [180, 240],
    "scale": [0.5, 2.0],
    "class_weighting": "enet",
    "weight_c": 1.02,
    "lr": 5e-4,
    "weight_decay": 2e-4,
    "scheduler": "poly",
    "seed": 0,
}

#: models profiled at CamVid resolution at the end of the demo
PROFILE_MODELS = ("enet", "erfnet", "essnet_dg2s", "essnet_dg4s")


def run_demo(out: str | os.PathLike = "runs/demo", quick: bool = False, overlays: int = 4,
             **overrides: Any) -> dict[str, Any]:
    """Run the demo pipeline into ``out``; ``quick=True`` shrinks it to seconds (used by the tests)."""
    out = Path(out)
    recipe = dict(DEMO_RECIPE, out=str(out / "train"))
    if quick:
        recipe.update(dataset_kwargs={"size": [48, 64], "length": 16},
                      crop=[48, 64], encoder_epochs=1, epochs=1, batch_size=4)
    recipe.update(overrides)
    t0 = time.perf_counter()

    print(f"[1/5] training {recipe['model']} on synthetic street scenes ({' -> '.join(recipe['stages'])})")
    res = train(recipe)
    best = res["best_checkpoint"]

    print(f"[2/5] evaluating {Path(best).name} on the synthetic val split")
    ds_kw = dict(recipe["dataset_kwargs"])
    metrics = evaluate(best, dataset="synthetic", split="val", json_out=out / "eval.json",
                       progress=not quick, **ds_kw)
    print(format_table(metrics, title="synthetic val"))

    size = (48, 64) if quick else (360, 480)
    names = PROFILE_MODELS[:1] if quick else PROFILE_MODELS
    print(f"[3/5] profiling {', '.join(names)} at {size[0]}x{size[1]} on this machine ({os.cpu_count()} cores)")
    profiles = []
    for name in names:
        p = profile_model(name, size=size, num_classes=7, runs=2 if quick else 10, warmup=1 if quick else 3)
        profiles.append({k: v for k, v in p.to_dict().items() if k != "by_op"})
        print(f"  {name:14s} {p.params / 1e6:6.3f} M params  {p.macs / 1e9:6.2f} GMACs  "
              f"{p.latency_ms:8.1f} ms  ({1000 / p.latency_ms:5.1f} FPS)")

    print(f"[4/5] writing {overlays} prediction overlays")
    model = load_model(best)
    ds = build_dataset("synthetic", split="val", **ds_kw)
    rows = []
    with torch.inference_mode():
        for i in range(min(overlays, len(ds))):
            img, lbl = ds[i]
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            pred = model(x).argmax(1)[0].numpy().astype(np.uint8)
            rows.append([img, colorize(lbl, ds.palette), colorize(pred, ds.palette), overlay(img, pred, ds.palette)])
    fig = save_png(grid(rows, titles=["image", "ground truth", "prediction", "overlay"]), out / "overlays.png")

    print("[5/5] writing the HTML report of the run")

    # quick: a smoke run -- one thread and no ONNX export keep it seconds-long on a shared machine
    rep = report([out / "train"], out / "report", latency_runs=2 if quick else 10, warmup=1 if quick else 3,
                 samples=2 if quick else overlays, threads=1 if quick else None,
                 backends=["torch"] if quick else None, progress=not quick)

    summary = {
        "recipe": recipe, "best_checkpoint": str(best), "val": {k: metrics[k] for k in
                                                                  ("miou", "pixel_acc", "mean_class_acc")},
        "per_class_iou": metrics["per_class_iou"], "profiles": profiles, "overlays": str(fig),
        "report": rep["index"],
        "wall_time_s": time.perf_counter() - t0, "torch": torch.__version__,
    }
    atomic_write_text(out / "summary.json", json.dumps(to_jsonable(summary), indent=1))
    print(f"done in {summary['wall_time_s']:.0f} s: val mIoU {metrics['miou'] * 100:.1f}; see {out}/")
    print(f"report: {rep['index']}")
    return summary
