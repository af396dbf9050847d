"""mIoU change of INT8 (and bf16) deployment against fp32 PyTorch, on a dataset split.

    python scripts/int8_miou.py enet_camvid essnet_dg2s_camvid --root ../shared/data/camvid \
        --config openvino/int8 --config onnxruntime/int8 --json int8.json

For each model (shipped weights name or checkpoint) and each ``backend/precision``: builds a
``rtseg.Segmenter`` at the frames' size (int8: calibrated on ``--calib-count`` training images spread over
the train split -- never the evaluation split), evaluates it with ``rtseg.eval.loop`` and prints the mIoU
next to fp32 PyTorch's. The issue's acceptance bar: an INT8 drop of at most 1 point.

``--control-count N`` (OpenVINO) runs NNCF's accuracy-controlled quantization with N *training* images that
are not calibration images as the control set (``--max-drop`` on their mIoU), so the evaluation split never
steers which layers stay in float; ``--record`` stores the chosen modules as the shipped weights'
``int8_keep_float`` (used by default by ``rtseg.Segmenter``, ``rtseg bench`` and ``rtseg predict``):

    python scripts/int8_miou.py essnet_dg2s_cs_camvid --root ../shared/data/camvid --config openvino/int8 \
        --graph-argmax --control-count 96 --max-drop 0.2 --record
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="shipped weights names or checkpoint files")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--dataset", default=None, help="default: the one recorded in the checkpoint")
    p.add_argument("--split", default="val")
    p.add_argument("--calib-split", default="train")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--config", action="append", default=None, help="backend/precision (repeatable; "
                   "default openvino/int8 and onnxruntime/int8)")
    p.add_argument("--graph-argmax", action="store_true",
                   help="evaluate the graphs with the argmax inside (what `rtseg export --argmax` ships)")
    p.add_argument("--keep-float", action="append", default=None,
                   help="module path kept in float in int8 (repeatable; default: the shipped weights' record)")
    p.add_argument("--control-count", type=int, default=0,
                   help="accuracy-controlled int8 (openvino): this many training images, none of them "
                        "calibration images, as the control set")
    p.add_argument("--max-drop", type=float, default=1.0, help="allowed mIoU drop on the control set, points")
    p.add_argument("--record", action="store_true",
                   help="store the modules accuracy control kept in float in the shipped weights' index record")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.record and not a.control_count:
        p.error("--record needs --control-count")

    import rtseg
    from rtseg.data import build_dataset
    from rtseg.deploy import Segmenter
    from rtseg.eval.loop import evaluate
    from rtseg.packaging import record_int8_keep_float
    from rtseg.utils.io import atomic_write_text

    configs = [tuple(c.split("/")) for c in (a.config or ["openvino/int8", "onnxruntime/int8"])]
    rows = []
    for spec in a.models:
        model = rtseg.load_model(spec)
        dataset = a.dataset or (model.rtseg_meta or {}).get("dataset")
        if not dataset:
            p.error(f"{spec}: no dataset recorded; pass --dataset")
        ds = build_dataset(dataset, a.root, split=a.split)
        calib = build_dataset(dataset, a.root, split=a.calib_split)
        size = tuple(ds[0][1].shape[-2:])
        ref = evaluate(model, ds, progress=False)["miou"]
        print(f"{spec}: fp32 torch mIoU {ref * 100:.2f}", flush=True)
        rows.append({"model": spec, "backend": "torch", "precision": "fp32", "miou": ref, "delta": 0.0})
        for backend, precision in configs:
            control, keep = None, a.keep_float  # None: the shipped weights' recorded list, if any
            if a.control_count and backend == "openvino" and precision == "int8":
                control = _control_pairs(calib, a.calib_count, a.control_count)
                keep = a.keep_float or []  # the search starts from the type rules only
            seg = Segmenter(model, backend, precision, size=size,
                            calibration=calib if precision == "int8" else None, calibration_size=a.calib_count,
                            graph_argmax=a.graph_argmax, int8_keep_float=keep if precision == "int8" else None,
                            int8_control=control, int8_max_drop=a.max_drop / 100)
            miou = evaluate(seg.as_module(), ds, progress=False)["miou"]
            seg.close()
            row = {"model": spec, "backend": backend, "precision": precision, "miou": miou,
                   "delta": miou - ref, "calibration": f"{a.calib_count} {a.calib_split} images",
                   "graph_argmax": a.graph_argmax}
            if precision == "int8":
                row["int8_keep_float"] = list(seg.int8_keep_float)
            if control is not None:
                row["control"] = (f"{len(control)} {a.calib_split} images (not calibration images), "
                                  f"max drop {a.max_drop} points; search took {seg.build_seconds:.0f} s")
                if a.record:
                    record_int8_keep_float(spec, seg.int8_keep_float, row)
            rows.append(row)
            print(f"{spec}: {backend}/{precision} mIoU {miou * 100:.2f} ({(miou - ref) * 100:+.2f})"
                  + (f"  float: {', '.join(seg.int8_keep_float)}" if seg.int8_keep_float else ""), flush=True)
    if a.json:
        atomic_write_text(a.json, json.dumps(rows, indent=2) + "\n")
    return 0


def _control_pairs(ds, calib_count: int, count: int) -> list:
    """``count`` labelled images of ``ds`` spread over it, none of the ``calib_count`` calibration ones
    (:func:`rtseg.deploy.load_images` picks those at ``linspace(0, n - 1, calib_count)``)."""
    import numpy as np

    n = len(ds)
    calib = {int(i) for i in np.linspace(0, n - 1, calib_count)} if calib_count < n else set(range(n))
    rest = [i for i in range(n) if i not in calib]
    if not rest:
        raise SystemExit("no training images left for the control set after calibration")
    pick = sorted({rest[int(i)] for i in np.linspace(0, len(rest) - 1, min(count, len(rest)))})
    return [ds[i][:2] for i in pick]


if __name__ == "__main__":
    sys.exit(main())
