"""mIoU change of INT8 (and bf16) deployment against fp32 PyTorch, on a dataset split.

    python scripts/int8_miou.py enet_camvid essnet_dg2s_camvid --root ../shared/data/camvid \
        --config openvino/int8 --config onnxruntime/int8 --json int8.json

For each model (shipped weights name or checkpoint) and each ``backend/precision``: builds a
``rtseg.Segmenter`` at the frames' size (int8: calibrated on ``--calib-count`` training images spread over
the train split -- never the evaluation split), evaluates it with ``rtseg.evaluate`` and prints the mIoU
next to fp32 PyTorch's. The issue's acceptance bar: an INT8 drop of at most 1 point.
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
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)

    import rtseg
    from rtseg._io import atomic_write_text
    from rtseg.data import build_dataset
    from rtseg.evaluate import evaluate
    from rtseg.segmenter import Segmenter

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
            seg = Segmenter(model, backend, precision, size=size,
                            calibration=calib if precision == "int8" else None, calibration_size=a.calib_count,
                            graph_argmax=a.graph_argmax)
            miou = evaluate(seg.as_module(), ds, progress=False)["miou"]
            seg.close()
            rows.append({"model": spec, "backend": backend, "precision": precision, "miou": miou,
                         "delta": miou - ref, "calibration": f"{a.calib_count} {a.calib_split} images",
                         "graph_argmax": a.graph_argmax})
            print(f"{spec}: {backend}/{precision} mIoU {miou * 100:.2f} ({(miou - ref) * 100:+.2f})", flush=True)
    if a.json:
        atomic_write_text(a.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
