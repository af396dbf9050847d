"""Every command in README.md's ```bash blocks is checked, so a README edit that breaks one fails CI.

Each ``rtseg ...`` command is first parsed by rtseg's own argument parser (a renamed flag or subcommand
fails here). Then it is run for real in a scratch folder -- except where it needs data or files CI lacks;
:data:`RULES` says, per command, what runs instead (tiny sizes, ``--show-config``, ``--help``) and why.
A command with no rule fails the test: add one when you add a command to the README. ``make`` lines are
checked with ``make -n`` (the targets exist; running them is the suite itself). Python blocks are compiled.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtseg.cli import build_parser, main
from rtseg.data.synthetic import SyntheticStreet

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHARED = REPO.parent / "shared"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def commands() -> list[str]:
    """The commands of the bash blocks: continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            cmd = shlex.split(line, comments=True)
            if cmd:
                out.append(shlex.join(cmd))
    return out


def _exists(p: str) -> bool:
    return (SHARED.parent / p.replace("../shared", "shared")).exists() if p.startswith("../shared") else False


def rule(argv: list[str]) -> tuple[str, list[str] | None]:
    """(what is done, the argv that runs) for one README command; argv None = parse check only."""
    sub = argv[1] if len(argv) > 1 else ""
    rest = argv[2:]
    if sub in ("weights", "predict") and "street.jpg" in rest:
        return "real", argv  # street.jpg: a synthetic scene written into the scratch folder
    if sub == "weights":
        return "real", argv
    if sub == "models":
        return "real, one family (all 52 models take ~20 s to count on a cold cache)", argv + ["enet"]
    if sub == "profile":
        run = list(argv)
        if "--size" in run:
            run[run.index("--size") + 1] = "64x128"
        return "real at 64x128, one timed run", run + ["--runs", "1", "--warmup", "0"]
    if sub == "train" and "--config" in rest:
        return "recipe + overrides resolved (--show-config): a real training run is the engine tests' job", \
            argv + ["--show-config"]
    if sub == "export":
        size = rest.index("--size") + 1 if "--size" in rest else None
        run = list(argv)
        if size is not None:
            run[size + 2] = "64x96"
        return "real at 64x96", run
    if sub == "eval" and "enet_camvid" in rest and _exists("../shared/data/camvid"):
        return "real, 2 images (CamVid is in ../shared)", argv + ["--max-images", "2", "--quiet"]
    if sub == "convert" and any(_exists(a) for a in rest):
        return "real (the released weights are in ../shared)", argv
    # needs what CI lacks: a training run (runs/...), CamVid, a video, foreign weights, int8 calibration images
    return "--help (needs data or a run CI lacks)", [argv[0], sub, "--help"]


def test_readme_has_commands_and_rules_cover_them() -> None:
    cmds = commands()
    assert any(c.startswith("rtseg predict") for c in cmds) and any(c.startswith("rtseg report") for c in cmds)
    assert any(c == "rtseg weights" for c in cmds)
    first_bash = commands()[2]  # after the two set-up commands: the plain first example
    assert first_bash.startswith("rtseg predict") and "enet_camvid" in first_bash and "--backend" not in first_bash
    for c in cmds:
        argv = shlex.split(c)
        assert argv[0] in ("rtseg", "make"), f"README command {c!r}: no rule in tests/cli/test_readme_commands.py"


@pytest.mark.parametrize("cmd", [c for c in commands() if c.startswith("rtseg ")])
def test_readme_command_parses(cmd: str) -> None:
    argv = shlex.split(cmd)[1:]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on a bad flag
        pytest.fail(f"README command does not parse: {cmd} (exit {e.code})")
    assert callable(args.func)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED)
    img, _ = SyntheticStreet(size=(120, 160), length=1)[0]
    Image.fromarray(img).save(work / "street.jpg")
    return work


def _slow(cmd: str) -> bool:
    return cmd.startswith("rtseg export")  # an OpenVINO export + verification: tens of seconds


@pytest.mark.parametrize("cmd", [pytest.param(c, marks=[pytest.mark.slow] if _slow(c) else [])
                                 for c in commands() if c.startswith("rtseg ")])
def test_readme_command_runs(cmd: str, scratch: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    argv = shlex.split(cmd)
    what, run = rule(argv)
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("RTSEG_CACHE", str(scratch.parent / "cache"))
    if _slow(cmd):  # OpenVINO in its own process (docs/deploy.md, "Known issues")
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        p = subprocess.run([sys.executable, "-m", "rtseg", *run[1:]], env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        rc, out = p.returncode, p.stdout[-2000:] + p.stderr[-2000:]
    else:  # in-process: a subprocess per command would spend most of its time importing torch
        try:
            rc = main(run[1:])
        except SystemExit as e:  # --help
            rc = e.code or 0
        cap = capsys.readouterr()
        out = cap.out[-2000:] + cap.err[-2000:]
    assert rc == 0, f"{cmd}\n  ran as ({what}): {shlex.join(run)}\n{out}"
    if run[1:3] == ["predict", "street.jpg"]:
        labels = np.asarray(Image.open(scratch / "preds" / "street.png"))
        assert labels.shape == (120, 160) and labels.max() < 12


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("cmd", [c for c in commands() if c.startswith("make ")])
def test_readme_make_targets_exist(cmd: str) -> None:
    p = subprocess.run(["make", "-n", *shlex.split(cmd)[1:]], cwd=REPO, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr


def test_readme_python_blocks_compile() -> None:
    for i, block in enumerate(blocks("python")):
        compile(block, f"README.md python block {i + 1}", "exec")
