"""``rtseg report``: the command-line face of :func:`rtseg.reporting.report`."""

from __future__ import annotations

import argparse

from rtseg.cli._common import UsageError, nonnegative_int, parse_size, positive_int, threads_int
from rtseg.reporting import report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="compare trained runs on one HTML page (accuracy vs GMACs / FPS, per-class IoU, examples)",
        description="Evaluate each run's best.pt on its validation split, measure params, MACs and latency "
        "on this machine, and write index.html with the ESSNet thesis' comparison figures.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (best.pt + metrics.jsonl), checkpoints, or shipped weights names (enet_camvid)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for index.html, figures, results")
    p.add_argument("--dataset", default=None, help="evaluate on this dataset (default: each run's own)")
    p.add_argument("--root", default=None, help="dataset folder (default: the one in the run's config)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's val_split, else val)")
    p.add_argument("--max-images", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help="measure MACs and latency at this size (default: the evaluated images' size)")
    p.add_argument("--runs", dest="latency_runs", type=int, default=10, metavar="N",
                   help="timed forward passes per backend; the median is reported (default: 10)")
    p.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed passes before timing (default: 3)")
    p.add_argument("--threads", type=threads_int, default=None, help="CPU threads for latency (default: all cores)")
    p.add_argument("--backends", default=None, metavar="LIST",
                   help="comma-separated latency backends: torch, onnxruntime "
                   "(default: torch, plus onnxruntime when installed)")
    p.add_argument("--samples", type=nonnegative_int, default=4, metavar="N", help="images in the qualitative grid")
    p.add_argument("--name", dest="names", action="append", default=None, metavar="LABEL",
                   help="display label of a run (repeat once per run, in order)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--title", default="rtseg report", help="page title")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag, v, low in (("--runs", args.latency_runs, 1), ("--warmup", args.warmup, 0),
                         ("--samples", args.samples, 0), ("--max-images", args.max_images, 1),
                         ("--threads", args.threads, 0)):  # fmt: skip
        if v is not None and v < low:
            raise UsageError(f"{flag} must be >= {low}, got {v}")
    backends = None
    if args.backends is not None:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    res = report(
        args.runs,
        args.out,
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        max_images=args.max_images,
        size=args.size,
        latency_runs=args.latency_runs,
        warmup=args.warmup,
        threads=args.threads or None,
        backends=backends,
        samples=args.samples,
        names=args.names,
        device=args.device,
        title=args.title,
        progress=not args.quiet,
    )
    if args.quiet:  # otherwise report() has already said where the page is
        print(res["index"])
    return 0
