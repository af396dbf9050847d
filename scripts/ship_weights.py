"""Ship a trained run's best checkpoint as rtseg weights, evaluated and recorded (rtseg/weights/index.json).

    python scripts/ship_weights.py runs/enet_camvid --name enet_camvid --log experiments/camvid/enet \
        --root ../shared/data/camvid --command "rtseg train --config configs/enet_camvid.yaml ..."

RUN is a run folder (its ``best.pt`` and ``metrics.jsonl`` are used) or a checkpoint file. The checkpoint is
evaluated in fp32 on the val split at the labels' full resolution, converted to its natively grouped model
if it came from gradual grouping, written to ``rtseg/weights/NAME.pt`` with its sha256 in the index, and
the README's weights table is regenerated. Training time is the sum of the run's per-epoch ``time_s``
(training loops only, validation excluded) unless ``--train-time`` gives it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run folder (uses best.pt) or checkpoint file")
    p.add_argument("--name", required=True, help="shipped name, e.g. enet_camvid")
    p.add_argument("--root", required=True, help="dataset folder for the evaluation")
    p.add_argument("--command", required=True, help="the exact command that trained it")
    p.add_argument("--train-time", type=float, default=None, help="seconds (default: sum of the log's time_s)")
    p.add_argument("--wall-time", type=float, default=None, help="measured wall-clock seconds, if known")
    p.add_argument("--notes", default="")
    p.add_argument("--init", default="", help="what training started from: scratch, the author's Cityscapes "
                                              "model, an ImageNet encoder, another shipped weight")
    p.add_argument("--log", type=Path, default=None,
                   help="committed folder (e.g. experiments/camvid/enet) to copy the run's config.yaml and "
                        "metrics.jsonl into; recorded so `rtseg report NAME` finds the curves on a fresh clone")
    a = p.parse_args(argv)

    from rtseg.packaging import package_weights

    ckpt = a.run / "best.pt" if a.run.is_dir() else a.run
    if not ckpt.is_file():
        p.error(f"{ckpt}: no such checkpoint")
    log = (a.run if a.run.is_dir() else a.run.parent) / "metrics.jsonl"
    train_time = a.train_time
    if train_time is None and log.is_file():
        train_time = round(sum(json.loads(x)["time_s"] for x in log.read_text().splitlines() if x.strip()), 1)
    log_dir = None
    if a.log is not None:
        run_dir = a.run if a.run.is_dir() else a.run.parent
        a.log.mkdir(parents=True, exist_ok=True)
        for f in ("config.yaml", "metrics.jsonl"):
            if (run_dir / f).is_file():
                shutil.copyfile(run_dir / f, a.log / f)
        log_dir = os.path.relpath(a.log.resolve(), REPO)
    rec = package_weights(ckpt, a.name, a.command, a.root, train_time_s=train_time, wall_time_s=a.wall_time,
                          notes=a.notes, init=a.init, log=log_dir, progress=True)
    print(f"{a.name}: {rec['model']} val mIoU {rec['val_miou'] * 100:.2f}  params {rec['params']:,}  "
          f"GMACs@{rec['macs_size'][0]}x{rec['macs_size'][1]} {rec['macs'] / 1e9:.2f}  sha256 {rec['sha256'][:12]}")
    subprocess.run([sys.executable, str(REPO / "scripts" / "update_readme.py")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
