"""``rtseg export``: the command-line face of :func:`rtseg.deploy.exporter`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rtseg.checkpoint import load_model
from rtseg.cli._common import UsageError, parse_size
from rtseg.deploy.exporter import ExportError, export
from rtseg.models._registry import create_model, list_models, model_info
from rtseg.utils.deps import require_export


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX / OpenVINO IR / TorchScript (BatchNorm folded) and verify it",
        description="Export the deploy form of a model (BatchNorm folded, normalisation inside the graph; input "
        "B x 3 x H x W float RGB in [0, 1]) and compare the exported graph with PyTorch.",
    )
    p.add_argument("out", help="output file (.onnx, .xml for OpenVINO, .pt for TorchScript)")
    p.add_argument("--weights", required=True, help="rtseg checkpoint, shipped weights name, or a model name "
                   "(random weights, for speed tests)")
    p.add_argument("--format", choices=["onnx", "openvino", "torchscript"], default=None,
                   help="default: from OUT's suffix (.onnx, .xml, .pt), else onnx")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="int8 (onnx, openvino): quantized once here on --calib images; bf16 (openvino): runs at "
                        "bf16 inference precision (AVX512-BF16/AMX CPUs)")
    p.add_argument("--calib", default=None, help="int8: calibration images (folder or glob of training images)")
    p.add_argument("--calib-count", type=int, default=32, help="int8: number of calibration images (default 32)")
    p.add_argument("--int8-keep-float", action="append", default=None, metavar="MODULE",
                   help="int8: module path left in float (repeatable; default: for shipped weights, the list "
                        "recorded with them; 'none': no module)")
    p.add_argument("--int8-control", default=None, metavar="DATASET:ROOT[:SPLIT]",
                   help="int8 (openvino): labelled images for NNCF's accuracy-controlled quantization, e.g. "
                        "camvid:data/camvid (train split); the layers costing most mIoU on them return to float "
                        "until the drop is at most --int8-max-drop. 'fp32': the calibration images labelled by "
                        "the fp32 graph itself (no labels needed; slow)")
    p.add_argument("--int8-control-count", type=int, default=32, help="int8: labelled control images (default 32)")
    p.add_argument("--int8-max-drop", type=float, default=1.0,
                   help="int8 with --int8-control: allowed mIoU drop on the control images, points (default 1.0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for calibration and checks")
    p.add_argument("--size", type=parse_size, default=None, help="input HxW (default: the model's default size)")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch/height/width (sides multiple of 8)")
    p.add_argument("--argmax", action="store_true", help="output uint8 labels (B x H x W) instead of logits")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--num-classes", type=int, default=19, help="classes when --weights is a model name")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("--json", dest="json_out", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def load_weights_or_model(spec: str, num_classes: int = 19):
    """A checkpoint path / shipped weights name -> trained model; a registered model name -> random weights."""


    if not Path(spec).exists() and spec in list_models():
        return create_model(spec, num_classes=num_classes).eval()
    return load_model(spec)


def control_images(spec: str | None, count: int) -> Any:
    """``--int8-control``: None, ``"fp32"``, or the first ``count`` (image, label) pairs of ``DATASET:ROOT[:SPLIT]``."""
    if spec is None or spec == "fp32":
        return spec
    name, _, rest = spec.partition(":")
    root, _, split = rest.partition(":")
    if not name or not root:
        raise UsageError(f"--int8-control {spec!r}: give DATASET:ROOT[:SPLIT] (e.g. camvid:data/camvid) or fp32")
    if count < 1:
        raise UsageError(f"--int8-control-count must be >= 1, got {count}")
    from rtseg.data import build_dataset

    try:
        ds = build_dataset(name, root, split=split or "train")
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(f"--int8-control {spec!r}: {e}") from None
    return [ds[i][:2] for i in range(min(count, len(ds)))]


def _format(args: argparse.Namespace) -> str:


    if args.format:
        return args.format
    return {".xml": "openvino", ".pt": "torchscript"}.get(Path(args.out).suffix.lower(), "onnx")


def run(args: argparse.Namespace) -> int:
    fmt = _format(args)
    require_export(fmt)  # before the model is loaded
    if Path(args.weights).exists() and Path(args.out).resolve() == Path(args.weights).resolve():
        raise UsageError(f"{args.out}: the output would overwrite the input checkpoint")
    if args.int8_control is not None and (args.precision != "int8" or fmt != "openvino"):
        raise UsageError("--int8-control needs --precision int8 and --format openvino (NNCF's accuracy control)")
    if not 0 <= args.int8_max_drop < 100:
        raise UsageError(f"--int8-max-drop is in mIoU points (1.0 = 1 point), got {args.int8_max_drop}")
    control = control_images(args.int8_control, args.int8_control_count)  # bad data fails before the model loads
    model = load_weights_or_model(args.weights, args.num_classes)
    size = args.size or tuple(model_info(model.rtseg_name).default_size)
    try:
        res = export(model, args.out, format=fmt, size=size, dynamic=args.dynamic, argmax=args.argmax,
                     opset=args.opset, verify=not args.no_verify, precision=args.precision,
                     calibration=args.calib, calibration_size=args.calib_count,
                     int8_keep_float=[] if args.int8_keep_float == ["none"] else args.int8_keep_float,
                     source=args.weights, threads=args.threads, int8_control=control,
                     int8_max_drop=args.int8_max_drop / 100)
    except (ExportError, ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    if args.json_out:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    shape = "dynamic" if args.dynamic else f"{size[0]}x{size[1]}"
    print(f"wrote {res.path} ({res.format} {res.precision}, {res.model}, input {shape}, BatchNorm folded"
          f"{', argmax -> uint8 labels' if res.argmax else ''})")
    if res.agreement_fp32 is not None:
        kept = ", ".join(res.int8_keep_float) or "none"
        print(f"  agreement with fp32 PyTorch: {100 * res.agreement_fp32:.2f}% of pixels"
              + (f"; float modules kept: {kept}" if res.precision == "int8" else "")
              + (f" (built in {res.build_s:.1f} s)" if res.build_s else ""))
    for c in res.checks:
        err = "n/a (labels)" if c["max_abs"] is None else f"{c['max_abs']:.3g}"
        against = c.get("against", "PyTorch")
        print(f"  verified at {c['size'][0]}x{c['size'][1]} against {against}: max abs logit error {err}, "
              f"pixel agreement {100 * c['agreement']:.3f}%")
    return 0
