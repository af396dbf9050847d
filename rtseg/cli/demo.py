"""``rtseg demo``: train -> evaluate -> profile -> overlays -> report on the built-in synthetic data, then a
shipped CamVid model on a real frame."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtseg.demo import run_demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on built-in synthetic street scenes (no download)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    p.add_argument("--model", default=None, help="model to train (default enet)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    p.add_argument("--camvid", default=None, help="CamVid folder or frame for the last step "
                   "(default: $RTSEG_DATA/camvid, else ../shared/data/camvid)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    kw = {"model": args.model} if args.model else {}
    run_demo(args.out, quick=args.quick, camvid=args.camvid, **kw)
    return 0
