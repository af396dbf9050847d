"""Interleaved A/B latency of one checkpoint's deployment paths in ONE process (docs/deploy.md, issue #17).

Paths, all OpenVINO CPU at batch 1, ``--threads`` threads, input ``--size``:

- ``naive-fp32``: ``torch.onnx.export`` of the model as trained (BatchNorm unfused, no rtseg deploy form),
  read by OpenVINO, fp32 -- what a user of the released code would do;
- ``naive-nncf``: that graph through ``nncf.quantize`` with its defaults (same calibration images);
- ``rtseg-fp32`` / ``rtseg-bf16`` / ``rtseg-int8``: ``rtseg.Segmenter`` graphs (deploy form; int8 with the
  default rules for a checkpoint without recorded float modules), the in-graph argmax as ``rtseg export
  --argmax`` ships it.

Each round runs every path ``--runs`` times in turn (order rotated per round); the table gives the median of
the per-round medians and each path's speed-up over ``naive-fp32`` computed per round (ratios, which survive
the 10-30 % drift of this shared VM). Example::

    python scripts/int8_ab.py --weights ../shared/.../essnet_dg2s_cs_camvid.pt --calib ../shared/data/camvid/train
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _naive(model, size, calib, threads, tmp):
    import nncf
    import openvino as ov
    import torch

    path = Path(tmp) / "naive.onnx"
    torch.onnx.export(model.eval(), (torch.rand(1, 3, *size),), str(path), opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["logits"])
    core = ov.Core()
    ir = core.read_model(str(path))
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    q = nncf.quantize(ir.clone(), nncf.Dataset(calib))
    return {"naive-fp32": core.compile_model(ir, "CPU", cfg), "naive-nncf": core.compile_model(q, "CPU", cfg)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--calib", required=True, help="calibration images (folder)")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--size", default="512x1024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--no-float-too", action="store_true", help="also time int8 with no float modules")
    p.add_argument("--no-subpixel-too", action="store_true",
                   help="also time the default int8 built without the sub-pixel output conv (INT8_SUBPIXEL off)")
    p.add_argument("--logits-argmax-too", action="store_true",
                   help="also time the default int8 with the in-graph argmax on the full-resolution logits "
                        "(exporter.ARGMAX_ON_PHASES off)")
    p.add_argument("--no-phase-pool-too", action="store_true",
                   help="also time the default int8 with the image max-pools left as MaxPool "
                        "(quantize.INT8_PHASE_POOL off)")
    p.add_argument("--keep-float", action="append", default=[], metavar="NAME=MOD1,MOD2",
                   help="also time int8 with exactly these modules in float, as path rtseg-int8-NAME (repeatable)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    import numpy as np

    import rtseg
    from rtseg.deploy import Segmenter, bench_image, cpu_supports_bf16, load_images

    size = tuple(int(v) for v in a.size.split("x"))
    model = rtseg.load_model(a.weights)
    imgs = load_images(a.calib, a.calib_count)
    seg_fp = Segmenter(model, "openvino", "fp32", size=size, threads=a.threads, graph_argmax=True)
    calib = [seg_fp.preprocess(__import__("torch").from_numpy(np.divide(im.transpose(2, 0, 1)[None], np.float32(255),
                                                                         dtype=np.float32)), size)[0].numpy()
             for im in imgs]
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        naive = _naive(model, size, calib, a.threads, tmp)
        runners.update({k: (lambda x, c=c: c(x)) for k, c in naive.items()})
        runners["rtseg-fp32"] = seg_fp.runtime.run
        if cpu_supports_bf16() and not a.no_bf16:
            runners["rtseg-bf16"] = Segmenter(model, "openvino", "bf16", size=size, threads=a.threads,
                                              graph_argmax=True).runtime.run
        def int8(**kw):  # the default int8 recipe on these calibration images, plus ``kw``
            return Segmenter(model, "openvino", "int8", size=size, threads=a.threads, graph_argmax=True,
                             calibration=imgs, calibration_size=a.calib_count, **kw)

        q = int8()
        runners["rtseg-int8"] = q.runtime.run
        if a.no_float_too:  # the cost of the default rule's float modules, in the same A/B
            runners["rtseg-int8-no-float"] = int8(int8_keep_float=[]).runtime.run
        from rtseg.deploy import exporter as ex
        from rtseg.deploy import quantize as qz

        # the default int8 with one of its rewrites switched off, in the same A/B: (asked, path, module, switch)
        for asked, path, mod, switch in ((a.no_subpixel_too, "no-subpixel", qz, "INT8_SUBPIXEL"),
                                         (a.logits_argmax_too, "logits-argmax", ex, "ARGMAX_ON_PHASES"),
                                         (a.no_phase_pool_too, "no-phase-pool", qz, "INT8_PHASE_POOL")):
            if not asked:
                continue
            setattr(mod, switch, False)
            try:
                runners[f"rtseg-int8-{path}"] = int8().runtime.run
            finally:
                setattr(mod, switch, True)
        for spec in a.keep_float:  # other float-module rules, in the same A/B
            tag, _, mods = spec.partition("=")
            runners[f"rtseg-int8-{tag}"] = int8(int8_keep_float=[m for m in mods.split(",") if m]).runtime.run
        x = np.divide(bench_image(size).transpose(2, 0, 1)[None], np.float32(255), dtype=np.float32)
        for r in runners.values():  # warm-up
            for _ in range(3):
                r(x)
        med = {k: [] for k in runners}
        names = list(runners)
        for rnd in range(a.rounds):
            for k in names[rnd % len(names):] + names[: rnd % len(names)]:
                t = []
                for _ in range(a.runs):
                    t0 = time.perf_counter()
                    runners[k](x)
                    t.append((time.perf_counter() - t0) * 1e3)
                med[k].append(statistics.median(t))
            print(f"round {rnd + 1}: " + "  ".join(f"{k} {med[k][-1]:.1f}" for k in names), flush=True)
    rows = [{"path": k, "ms": round(statistics.median(v), 2),
             "vs_naive_fp32": round(statistics.median(b / c for b, c in zip(med["naive-fp32"], v)), 2),
             "vs_naive_nncf": round(statistics.median(b / c for b, c in zip(med["naive-nncf"], v)), 2)}
            for k, v in med.items()]
    print("| path | ms (median of round medians) | vs naive fp32 | vs naive nncf |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['ms']:.1f} | {r['vs_naive_fp32']:.2f}x | {r['vs_naive_nncf']:.2f}x |")
    print(f"int8 float modules: {q.int8_keep_float} (rule {q.int8_rule}; they run at "
          f"{q.runtime.float_precision})")
    if a.json:
        from rtseg.deploy.bench import machine_info

        a.json.write_text(json.dumps({"machine": machine_info(), "args": vars(a) | {"json": str(a.json)},
                                      "rows": rows, "rounds": med}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
