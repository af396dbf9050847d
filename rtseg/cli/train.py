"""``rtseg train``: the Python API ``rtseg.train(...)`` with the same words.

rtseg train --config configs/enet_camvid.yaml root=../shared/data/camvid out=runs/enet
rtseg train model=enet dataset=camvid root=../shared/data/camvid epochs=100 batch_size=8 crop=360x480
rtseg train --resume runs/enet            # continue a killed run exactly where it stopped
torchrun --nproc_per_node=4 -m rtseg.cli train --config configs/erfnet_camvid.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rtseg.cli._common import UsageError
from rtseg.engine.config import config_to_yaml, load_config, parse_overrides
from rtseg.engine.trainer import train


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with the papers' recipe (two-stage, class-weighted CE, Adam)",
        description="Train a segmentation model. Settings resolve as: defaults -> --config recipe -> "
        "key=value overrides (keys of rtseg.engine.config.TrainConfig, e.g. model=enet lr=5e-4 crop=360x480 "
        "stages=encoder,full).",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=100 out=runs/enet"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="YAML/JSON recipe, e.g. configs/enet_camvid.yaml"
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last.pt (same result as an uninterrupted run)",
    )
    p.add_argument("--two-stage", action="store_true", help="shorthand for stages=encoder,full")
    p.add_argument("--show-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    overrides: dict[str, str] = parse_overrides(args.overrides)
    if args.two_stage:
        if "stages" in overrides:
            raise UsageError("give either --two-stage or stages=..., not both")
        overrides["stages"] = "encoder,full"
    if args.show_config:
        if args.resume is not None:
            raise UsageError("--show-config resolves a new run's config; it does not apply to --resume")
        print(config_to_yaml(load_config(args.config, overrides)), end="")
        return 0
    if args.resume is not None and args.config is not None:
        raise UsageError("--resume continues RUN_DIR with its own config; do not pass --config as well")
    result = train(args.config, resume=args.resume, **overrides)
    miou = result["best_miou"]
    best = f"best val mIoU {100 * miou:.2f}% (epoch {result['best_epoch']})" if miou is not None else "no validation"
    print(f"done: {best}; best checkpoint {result['best_checkpoint']}; run folder {result['run_dir']}")
    return 0
