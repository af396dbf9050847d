"""``rtseg eval``: the command-line face of :func:`rtseg.eval.loop.evaluate`."""

from __future__ import annotations

import argparse

from rtseg.cli._common import UsageError, nonnegative_int, positive_int
from rtseg.eval.loop import evaluate
from rtseg.eval.metrics import format_table
from rtseg.utils.deps import require


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on a dataset split (mIoU, per-class IoU, ...)",
        description="Evaluate a model at full native resolution and print per-class scores.",
    )
    p.add_argument("--weights", required=True, help="rtseg checkpoint file or shipped weights name")
    p.add_argument("--dataset", default="camvid", help="camvid, cityscapes, sunrgbd, folder or synthetic")
    p.add_argument("--root", default=None, help="dataset folder (default: $RTSEG_DATA/<dataset>)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default: 1)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader decode workers (default: 0)")
    p.add_argument("--max-images", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", dest="json_out", default=None, help="write the results to this JSON file")
    p.add_argument("--plots", default=None, metavar="DIR", help="save confusion / per-class IoU plots here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.plots:  # before the evaluation, not after it
        require("matplotlib", "plots", "eval --plots")
    res = evaluate(
        args.weights,
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        batch_size=args.batch_size,
        json_out=args.json_out,
        device=args.device,
        num_workers=args.workers,
        plots_dir=args.plots,
        max_images=args.max_images,
        progress=not args.quiet,
    )
    title = (
        f"{res['model']} on {res['dataset']}/{res['split']} ({res['num_images']} images, native resolution)"
    )
    print(format_table(res, title=title))
    print(f"mIoU {100 * res['miou']:.2f}  ({res['images_per_s']} img/s on {res['device']})")
    if args.json_out:
        print(f"wrote {args.json_out}")
    for p in res.get("plots", []):
        print(f"wrote {p}")
    return 0
