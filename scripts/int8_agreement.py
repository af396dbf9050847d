"""Default-int8 agreement with fp32 and mIoU on CamVid val (issue #17, docs/deploy.md).

The shipped CamVid weights are loaded from their file, so without their recorded float modules (what a
checkpoint rtseg has never seen gets). OpenVINO int8 vs OpenVINO fp32, both with the in-graph argmax, at
360x480; calibration: 32 CamVid train frames. One JSON line per model.

Usage: python scripts/int8_agreement.py RULE [weights ...]
RULE: high-res (the type and high-resolution rules), none (type rules only), fp32-control (high-res, then
NNCF accuracy control against the fp32 graph's own labels on the calibration images, ``int8_control="fp32"``),
keep:MOD1,MOD2,... (exactly these modules in float).
Env RTSEG_CAMVID: the CamVid root (default ../shared/data/camvid).
"""
import json
import os
import sys
import time

import numpy as np
import torch

import rtseg
from rtseg.data import build_dataset
from rtseg.deploy import Segmenter
from rtseg.eval.metrics import SegMetrics
from rtseg.hub import resolve_weights

rule = sys.argv[1]
if rule not in ("high-res", "none", "fp32-control") and not rule.startswith("keep:"):
    sys.exit(f"RULE {rule!r}: choose high-res, none, fp32-control or keep:MOD1,MOD2,...")
names = sys.argv[2:] or ["enet_camvid", "erfnet_camvid", "essnet_dg2s_cs_camvid"]
root = os.environ.get("RTSEG_CAMVID", "../shared/data/camvid")
val = build_dataset("camvid", root, split="val")
train = build_dataset("camvid", root, split="train")
for name in names:
    path = name if os.path.isfile(name) else resolve_weights(name)
    model = rtseg.load_model(path)  # by file: no recorded int8 float modules
    size = tuple(val[0][1].shape[-2:])
    t0 = time.time()
    ref = Segmenter(model, "openvino", "fp32", size=size, graph_argmax=True)
    keep = [] if rule == "none" else rule[5:].split(",") if rule.startswith("keep:") else None
    control = "fp32" if rule == "fp32-control" else None
    q = Segmenter(model, "openvino", "int8", size=size, graph_argmax=True, calibration=train, calibration_size=32,
                  int8_keep_float=keep, int8_control=control)
    build = time.time() - t0
    m0, m1, agree = SegMetrics(model.num_classes), SegMetrics(model.num_classes), []
    for i in range(len(val)):
        im, lab = val[i][:2]
        a, b = ref.predict(im), q.predict(im)
        agree.append((a == b).mean())
        lab = torch.as_tensor(np.asarray(lab))
        m0.update(torch.from_numpy(a), lab)
        m1.update(torch.from_numpy(b), lab)
    r0, r1 = m0.compute()["miou"], m1.compute()["miou"]
    row = {"model": name, "rule": rule, "agreement": float(np.mean(agree)), "miou_fp32": r0 * 100,
           "miou_int8": r1 * 100, "delta": (r1 - r0) * 100, "keep_float": q.int8_keep_float, "build_s": build,
           "int8_float_precision": q.runtime.float_precision}
    print(json.dumps(row), flush=True)
