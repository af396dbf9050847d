"""A run started by an older rtseg must resume with this one (issue #13): proof on real CamVid frames.

    git worktree add --detach /tmp/rtseg-old 38308fc
    python scripts/check_resume_compat.py --old /tmp/rtseg-old --camvid ../shared/data/camvid

The old checkout trains ESSNet-DG2S (encoder + full stage, EMA, bf16) on 8 CamVid frames at 48x64 twice: once
uninterrupted, once SIGKILLed right after its first checkpoint. This checkout resumes the killed run. Prints
how many tensors differ from the uninterrupted old-code run (0 = bit-identical) and whether the histories match.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

NEW = Path(__file__).resolve().parents[1]
CFG = {"model": "essnet_dg2s", "dataset": "folder", "class_weighting": "none", "crop": [48, 64], "batch_size": 4,
       "workers": 0, "progress": False, "stages": ["encoder", "full"], "encoder_epochs": 1, "epochs": 2, "amp": True,
       "ema": 0.9}
KILL = """
import os, signal, sys, torch
torch.set_num_threads(1)
import rtseg
eng = sys.modules['rtseg.train']  # the old code's engine module
save = eng.atomic_torch_save
def die(obj, path):
    save(obj, path); os.kill(os.getpid(), signal.SIGKILL)
eng.atomic_torch_save = die
rtseg.train(**{cfg!r})
"""


def _tiny_camvid(camvid: Path, root: Path) -> None:
    names = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"]
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    for split, n in (("train", 8), ("val", 4)):
        for f in sorted((camvid / split).glob("*.png"))[:n]:
            for sub in ("images", "masks"):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
            Image.open(f).convert("RGB").resize((64, 48)).save(root / split / "images" / f.name)
            m = np.array(Image.open(camvid / f"{split}annot" / f.name).resize((64, 48), Image.NEAREST))
            m[m == 11] = 255
            Image.fromarray(m).save(root / split / "masks" / f.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="a checkout of the older rtseg")
    ap.add_argument("--camvid", type=Path, default=Path("../shared/data/camvid"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rtseg-compat-"))
    try:
        _tiny_camvid(args.camvid, work / "data")
        cfg = dict(CFG, root=str(work / "data"))

        def run(code: str, path: Path) -> int:
            env = dict(os.environ, PYTHONPATH=str(path))
            return subprocess.run([sys.executable, "-c", code], env=env, check=False, cwd=work).returncode

        ref, killed = work / "ref", work / "killed"
        run(f"import torch; torch.set_num_threads(1); import rtseg; rtseg.train(**{dict(cfg, out=str(ref))!r})",
            args.old)
        print("old code, killed run: exit", run(KILL.format(cfg=dict(cfg, out=str(killed))), args.old))
        print("new code, resume: exit",
              run(f"import torch; torch.set_num_threads(1); import rtseg; rtseg.train(resume={str(killed)!r})", NEW))
        a = torch.load(ref / "last.pt", weights_only=True)
        b = torch.load(killed / "last.pt", weights_only=True)
        diff = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
        print(f"epochs {a['global_epoch']} / {b['global_epoch']}; tensors differing: {len(diff)} of {len(a['model'])}")
        same = [(x["train_loss"], x["val_miou"]) for x in a["history"]] == \
               [(x["train_loss"], x["val_miou"]) for x in b["history"]]
        print("loss / val mIoU history identical:", same)
        return 0 if not diff and same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
