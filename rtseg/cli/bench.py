"""``rtseg bench``: the command-line face of :func:`rtseg.deploy.benchmark`."""

from __future__ import annotations

import argparse
import json
import sys

from rtseg.cli._common import UsageError, parse_size
from rtseg.deploy.bench import benchmark, machine_info, markdown_table, to_json
from rtseg.utils.deps import require_runtime
from rtseg.utils.io import atomic_write_text


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="latency (p50/p90), FPS, throughput, peak RSS and agreement across backends and precisions",
        description="Benchmark models (registry names with random weights, or checkpoints) at batch 1. Each "
        "--backend is paired with each --precision (unsupported pairs are skipped with a reason); a 'baseline' "
        "row (unfused eager PyTorch fp32, the released code's setting) is added unless --no-baseline.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL_OR_CKPT",
                   help="registry name, checkpoint, shipped weights name, or exported artifact (.xml / .onnx: "
                        "timed as written, at its own size and precision)")
    p.add_argument("--size", type=parse_size, action="append", default=None,
                   help="input HxW (repeatable; default 512x1024)")
    p.add_argument("--backend", action="append", choices=["torch", "onnxruntime", "openvino"], default=None,
                   help="repeatable (default: all three)")
    p.add_argument("--precision", action="append", choices=["fp32", "bf16", "int8"], default=None,
                   help="repeatable (default: fp32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--throughput-seconds", type=float, default=3.0, help="0 skips the throughput test")
    p.add_argument("--calib", default=None, help="int8 calibration images (folder or glob; default synthetic)")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=19, help="classes for registry names (default 19)")
    p.add_argument("--no-baseline", action="store_true", help="leave out the unfused eager fp32 baseline row")
    p.add_argument("--profile", action="store_true", help="per-layer-type time breakdown for every row")
    p.add_argument("--int8-keep-float", action="append", default=None, metavar="MODULE",
                   help="module path int8 leaves in float (repeatable; default: for shipped weights, the list "
                        "recorded with them; 'none': no module)")
    p.add_argument("--argmax", action="store_true",
                   help="time the deploy graphs with the argmax inside (uint8 labels out, as export --argmax)")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE",
                   help="write results + machine info as JSON ('-' for stdout)")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the rows as a Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be >= 1 and --warmup >= 0")
    sizes = args.size or [(512, 1024)]
    configs = [(b, p) for b in (args.backend or ["torch", "onnxruntime", "openvino"])
               for p in (args.precision or ["fp32"])]
    if args.backend:  # asked for by name: missing packages fail now (the default set skips them with a line)
        for b, p in configs:
            require_runtime(b, p)
    quiet = args.json_out == "-"
    log = (lambda m: print(m, file=sys.stderr)) if quiet else print
    if not quiet:
        print(json.dumps(machine_info()))
    rows = benchmark(args.models, sizes, configs, threads=args.threads, warmup=args.warmup, runs=args.runs,
                     throughput_seconds=args.throughput_seconds, baseline=not args.no_baseline,
                     profile=args.profile, calibration=args.calib, calibration_size=args.calib_count,
                     num_classes=args.num_classes, graph_argmax=args.argmax,
                     int8_keep_float=[] if args.int8_keep_float == ["none"] else args.int8_keep_float, log=log)
    if args.profile:
        for r in rows:
            total = sum(r.profile.values()) or 1.0
            log(f"\n{r.model} {r.size[0]}x{r.size[1]} {r.backend}/{r.precision} ({r.setting}): time by layer type")
            for k, v in list(r.profile.items())[:15]:
                log(f"  {k:<40} {v:9.2f} ms  {100 * v / total:5.1f}%")
    if args.markdown:
        atomic_write_text(args.markdown, markdown_table(rows))
    if args.json_out:
        text = json.dumps(to_json(rows), indent=2)
        if args.json_out == "-":
            print(text)
        else:
            atomic_write_text(args.json_out, text + "\n")
            log(f"wrote {args.json_out}")
    return 0
