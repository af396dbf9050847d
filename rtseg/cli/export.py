"""``rtseg export``: the command-line face of :func:`rtseg.export.export`."""

from __future__ import annotations

import argparse
import json

from rtseg.checkpoint import load_model
from rtseg.cli._common import UsageError, parse_size
from rtseg.export import ExportError, export
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
    p.add_argument("--format", choices=["onnx", "openvino", "torchscript"], default="onnx")
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
    from pathlib import Path

    if not Path(spec).exists() and spec in list_models():
        return create_model(spec, num_classes=num_classes).eval()
    return load_model(spec)


def run(args: argparse.Namespace) -> int:
    require_export(args.format)  # before the model is loaded
    model = load_weights_or_model(args.weights, args.num_classes)
    size = args.size or tuple(model_info(model.rtseg_name).default_size)
    try:
        res = export(model, args.out, format=args.format, size=size, dynamic=args.dynamic, argmax=args.argmax,
                     opset=args.opset, verify=not args.no_verify)
    except ExportError as e:
        raise UsageError(str(e)) from None
    if args.json_out:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    shape = "dynamic" if args.dynamic else f"{size[0]}x{size[1]}"
    print(f"wrote {res.path} ({res.format}, {res.model}, input {shape}, BatchNorm folded"
          f"{', argmax -> uint8 labels' if res.argmax else ''})")
    for c in res.checks:
        err = "n/a (labels)" if c["max_abs"] is None else f"{c['max_abs']:.3g}"
        print(f"  verified at {c['size'][0]}x{c['size'][1]}: max abs logit error {err}, "
              f"pixel agreement {100 * c['agreement']:.3f}%")
    return 0
