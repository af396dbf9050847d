"""The bad-input sweep (#14): what a user hands rtseg never ends in a traceback, a lost file or a torn one.

Every case asserts either the correct result, or exit status 2 with one line ``rtseg CMD: error: ...`` that
names the file or argument -- no traceback, no input file changed, no torn output. The table of cases is
in docs/reliability.md. Data are tiny (24 x 32 folder datasets, a registered three-conv model) so the
in-process cases take a few seconds together; the kill -9 cases start subprocesses (marked slow where
they loop).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import rtseg
from rtseg.cli import main
from rtseg.models import SegmentationModel, list_models, register_model

HERE = Path(__file__).resolve().parent
TINY = "tiny_sweep_test"


class TinySweep(SegmentationModel):
    """Three stride-2 convs (1/8), a 1x1 encoder classifier and an upsampling decoder (as tests/engine's)."""

    def __init__(self, num_classes: int, width: int = 4) -> None:
        super().__init__(num_classes)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.encoder = nn.Sequential(*block(3, width), *block(width, width), *block(width, width))
        self.encoder_head = nn.Conv2d(width, num_classes, 1)
        self.head = nn.Conv2d(width, num_classes, 3, padding=1)

    def forward_padded(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        f = self.encoder(x)
        if encoder_only:
            return self.encoder_head(f)
        return F.interpolate(self.head(f), scale_factor=8, mode="bilinear", align_corners=False)


if TINY not in list_models():
    register_model(TINY, family="test", description="tiny sweep model", default_size=(32, 32))(TinySweep)

#: a tiny training run on the synthetic scenes (kill loop) -- 4 steps an epoch, 8 epochs over two stages
SYNTH = {"model": TINY, "dataset": "synthetic", "dataset_kwargs": {"size": (24, 32), "length": 8},
         "crop": (24, 32), "batch_size": 2, "val_batch_size": 4, "workers": 0, "progress": False, "seed": 5,
         "stages": ("encoder", "full"), "encoder_epochs": 3, "epochs": 5, "amp": False, "ema": 0.5}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTSEG_CACHE", str(tmp_path_factory.getbasetemp() / "rtseg-cache"))


# --------------------------------------------------------------------------------------------- helpers
def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _fails(argv: list, capsys, *needles: str) -> str:
    """Exit 2, one line on stderr ``rtseg CMD: error: ...`` holding every needle, no traceback."""
    rc, out, err = _cli(argv, capsys)
    assert "Traceback" not in err + out, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("note:")]
    assert rc == 2, f"rc {rc}\n{err}\n{out}"
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(f"rtseg {argv[0]}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _folder(root: Path, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (24, 32)) -> Path:
    """root/{train,val}/{images,masks}/f{i}.png with 3 classes a, b, c."""
    for split, k in (("train", n_train), ("val", n_val)):
        for i in range(k):
            rng = np.random.default_rng(100 * (split == "val") + i)
            _png(root / split / "images" / f"f{i}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            _png(root / split / "masks" / f"f{i}.png", rng.integers(0, 3, size, dtype=np.uint8))
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def _train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", f"model={TINY}", "dataset=folder", f"root={root}", "crop=24x32", "batch_size=2",
            "val_batch_size=2", "epochs=1", "workers=0", "progress=false", "class_weighting=none", "amp=false",
            f"out={out}", *extra]


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return rtseg.save_model(rtseg.create_model(TINY, num_classes=3), tmp_path / "tiny.pt", class_names=["a", "b", "c"])


def _crafted(src: Path, dst: Path, **changes) -> Path:
    c = torch.load(src, weights_only=True)
    for k, v in changes.items():
        if isinstance(v, dict) and k.startswith("+"):
            c[k[1:]].update(v)
        else:
            c[k] = v
    torch.save(c, dst)
    return dst


# ------------------------------------------------------------------------------------ images and labels
def test_corrupt_val_image_fails_before_epoch_one(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "d")
    good = (root / "val" / "images" / "f1.png").read_bytes()
    (root / "val" / "images" / "f1.png").write_bytes(good[: len(good) // 2])
    t0 = time.perf_counter()
    _fails(_train_args(root, tmp_path / "run"), capsys, "val/images/f1.png", "unreadable image")
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_corrupt_image_in_a_worker_is_the_same_one_line(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "d")
    (root / "train" / "images" / "f2.png").write_bytes(b"\x89PNG garbage")
    line = _fails(_train_args(root, tmp_path / "run", "workers=1", "check_data=false", "persistent_workers=false"),
                  capsys, "train/images/f2.png", "unreadable image")
    assert "DataLoader worker" not in line


@pytest.mark.parametrize("kind", ["label-id", "label-size", "label-rgb", "mask-missing", "images-empty",
                                  "masks-folder-missing", "classes-bad", "root-missing"])
def test_bad_dataset_files_are_named(kind: str, tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "d")
    m = root / "val" / "masks" / "f0.png"
    needle = {"label-id": "f0.png: label ids [7]", "label-size": "f0.png: label size",
              "label-rgb": "f0.png: colour mask, but", "mask-missing": "f0.png: mask of",
              "images-empty": "split 'val' is empty", "masks-folder-missing": "val/masks: folder is missing",
              "classes-bad": "classes.txt:1: expected 'name' or 'name R G B'",
              "root-missing": "nowhere: dataset root folder does not exist"}[kind]
    if kind == "label-id":
        _png(m, np.full((24, 32), 7, np.uint8))
    elif kind == "label-size":
        _png(m, np.zeros((12, 32), np.uint8))
    elif kind == "label-rgb":
        _png(m, np.zeros((24, 32, 3), np.uint8))
    elif kind == "mask-missing":
        m.unlink()
    elif kind == "images-empty":
        for p in (root / "val" / "images").iterdir():
            p.unlink()
    elif kind == "masks-folder-missing":
        for p in (root / "val" / "masks").iterdir():
            p.unlink()
        (root / "val" / "masks").rmdir()
    elif kind == "classes-bad":
        (root / "classes.txt").write_text("a 1 2\nb\n")
    else:
        root = tmp_path / "nowhere"
    _fails(_train_args(root, tmp_path / "run"), capsys, needle)


def test_sixteen_bit_image_trains_and_evaluates_like_its_8_bit_twin(tmp_path: Path, capsys) -> None:
    """16-bit PNGs (mode I;16) were read as all-white; now they are scaled and give the 8-bit result."""
    a, b = _folder(tmp_path / "a", 2, 2), _folder(tmp_path / "b", 2, 2)
    for p in sorted((b / "val" / "images").iterdir()):
        gray = np.asarray(Image.open(p).convert("L")).astype(np.uint16) * 257
        Image.fromarray(gray).save(p)  # 16-bit gray
        Image.fromarray(np.asarray(Image.open(p)) // 257).convert("L").save(a / "val" / "images" / p.name)
    torch.manual_seed(0)
    m = rtseg.create_model(TINY, num_classes=3).eval()
    ra = rtseg.evaluate(m, dataset="folder", root=a, split="val", device="cpu", progress=False)
    rb = rtseg.evaluate(m, dataset="folder", root=b, split="val", device="cpu", progress=False)
    assert ra["miou"] == rb["miou"] and ra["pixel_acc"] == rb["pixel_acc"]


# ---------------------------------------------------------------------------------------------- checkpoints
def test_malformed_checkpoint_files(tmp_path: Path, ckpt: Path, capsys) -> None:
    (tmp_path / "noise.pt").write_bytes(os.urandom(2000))
    (tmp_path / "torn.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save(torch.load(ckpt, weights_only=True)["state_dict"], tmp_path / "bare.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, needle in (("noise.pt", "not a readable checkpoint"), ("torn.pt", "not a readable checkpoint"),
                         ("bare.pt", "bare state_dict"), ("empty.pt", "not a readable checkpoint")):
        _fails(["profile", tmp_path / name, "--no-latency"], capsys, name, needle)


def test_pickled_payload_never_runs(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "rtseg-checkpoint", "x": Payload()}, f)
    _fails(["profile", tmp_path / "evil.pt", "--no-latency"], capsys, "evil.pt", "not a readable checkpoint")
    assert not marker.exists()


@pytest.mark.parametrize("field", ["num_classes-huge", "version-str", "version-newer", "meta-list", "kwargs-unknown",
                                   "model-unknown", "model-int", "class_names-len", "state_dict-list",
                                   "kwargs-type"])
def test_crafted_checkpoint_fields_are_refused_before_building(field: str, tmp_path: Path, ckpt: Path,
                                                               capsys) -> None:
    bad = tmp_path / "bad.pt"
    c = torch.load(ckpt, weights_only=True)
    needle = {"num_classes-huge": "num_classes must be an int in 1..10000", "version-str": "'version' must be",
              "version-newer": "version 7 is newer", "meta-list": "'meta' must be a dict",
              "kwargs-unknown": "cannot be built from the checkpoint's model_kwargs",
              "model-unknown": "unknown model 'tiny_sweep_tesst'", "model-int": "'model' must be a model name",
              "class_names-len": "class_names must be a list of 3 strings", "state_dict-list": "'state_dict' must",
              "kwargs-type": "cannot be built"}[field]
    if field == "num_classes-huge":
        c["model_kwargs"]["num_classes"] = 100_000_000
    elif field == "version-str":
        c["version"] = "1"
    elif field == "version-newer":
        c["version"] = 7
    elif field == "meta-list":
        c["meta"] = ["a"]
    elif field == "kwargs-unknown":
        c["model_kwargs"]["wings"] = 2
    elif field == "model-unknown":
        c["model"] = "tiny_sweep_tesst"
    elif field == "model-int":
        c["model"] = 3
    elif field == "class_names-len":
        c["meta"]["class_names"] = ["a"]
    elif field == "state_dict-list":
        c["state_dict"] = [1, 2]
    else:
        c["model_kwargs"]["width"] = "wide"
    torch.save(c, bad)
    t0 = time.perf_counter()
    _fails(["profile", bad, "--no-latency"], capsys, "bad.pt", needle)
    assert time.perf_counter() - t0 < 10  # nothing large was allocated


def test_checkpoint_shapes_are_checked_on_the_meta_device_before_allocation(tmp_path: Path, ckpt: Path,
                                                                            monkeypatch) -> None:
    """A crafted width builds a model far larger than the file: refused without allocating it."""
    c = torch.load(ckpt, weights_only=True)
    c["model_kwargs"]["width"] = 200_000  # ~1e11 parameters if built for real
    torch.save(c, tmp_path / "wide.pt")
    from rtseg.errors import CheckpointError

    with pytest.raises(CheckpointError, match="weights do not fit"):
        rtseg.load_model(tmp_path / "wide.pt")


def test_shipped_name_wins_over_a_same_named_file(tmp_path: Path, ckpt: Path, monkeypatch, capsys) -> None:
    names = rtseg.hub.available_weights()
    if not names:
        pytest.skip("no shipped weights in this checkout")
    name = names[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(ckpt.read_bytes())
    m = rtseg.load_model(name)
    assert m.rtseg_meta.get("shipped_as") == name
    assert "using those" in capsys.readouterr().err
    assert rtseg.load_model(f"./{name}").rtseg_name == TINY  # a path that looks like a path is the file


# ------------------------------------------------------------------------------------- configs, CLI values
@pytest.mark.parametrize("override,needle", [
    ("lr=inf", "lr must be a finite number"), ("lr=nan", "lr must be a finite number"), ("lr=-1", "lr must be > 0"),
    ("ignore_index=254", "ignore_index=254: dataset 'folder' marks void pixels 255"),
    ("ignore_index=-3", "ignore_index must be in 0..65535"), ("device=gpu", "device: 'gpu' is not a device"),
    ("workers=-1", "workers must be >= 0"), ("momentum=1.5", "momentum must be in [0, 1)"),
    ("seed=-1", "seed must be in"), ("crop=0x10", "crop must be positive"), ("lr0=1", "unknown config key 'lr0'"),
    ("batch_size=abc", "batch_size: cannot read 'abc'"), ("weight_c=inf", "weight_c must be a finite number"),
])
def test_bad_config_values_fail_before_any_work(override: str, needle: str, tmp_path: Path, capsys,
                                                monkeypatch) -> None:
    import rtseg.engine.data as edata

    root = _folder(tmp_path / "d")
    if not override.startswith("ignore_index=254"):  # every other value is refused before data are read
        monkeypatch.setattr(edata, "check_dataset", lambda *a, **k: pytest.fail("data were read"))
    _fails(_train_args(root, tmp_path / "run", override), capsys, needle)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_device_that_this_machine_lacks(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        dev = f"cuda:{torch.cuda.device_count()}"
        needle = "CUDA device(s)"
    else:
        dev, needle = "cuda:1", "no CUDA device"
    _fails(_train_args(_folder(tmp_path / "d"), tmp_path / "run", f"device={dev}"), capsys, f"device={dev}", needle)


def test_bad_recipe_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "r.yaml").write_text("model: [enet\n  lr: :\n")
    _fails(["train", "--config", tmp_path / "r.yaml"], capsys, "r.yaml", "not a readable YAML/JSON config")
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    _fails(["train", "--config", tmp_path / "l.yaml"], capsys, "l.yaml", "a config is a mapping")


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--weights", "w.pt", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["eval", "--weights", "w.pt", "--workers", "-2"], "--workers: must be >= 0"),
    (["eval", "--weights", "w.pt", "--max-images", "x"], "--max-images: expected an integer"),
    (["profile", "enet", "--threads", "-1"], "--threads: must be in 0..4096"),
    (["profile", "enet", "--runs", "0"], "--runs: must be >= 1"),
    (["predict", "a.png", "--weights", "w", "--out", "o", "--threads", "-4"], "--threads: must be in 0..4096"),
])
def test_bad_cli_numbers(argv: list[str], needle: str, capsys) -> None:
    _fails(argv, capsys, needle)


def test_eval_on_a_device_that_does_not_exist(ckpt: Path, capsys) -> None:
    _fails(["eval", "--weights", ckpt, "--dataset", "synthetic", "--device", "cuda:9"], capsys, "device=cuda:9")


def test_eval_json_onto_its_own_checkpoint_is_refused(tmp_path: Path, ckpt: Path, capsys) -> None:
    before = ckpt.read_bytes()
    _fails(["eval", "--weights", ckpt, "--dataset", "synthetic", "--json", ckpt, "--device", "cpu"], capsys,
           "tiny.pt", "is one of the inputs")
    assert ckpt.read_bytes() == before


def test_convert_onto_its_own_source_is_refused(tmp_path: Path, ckpt: Path, capsys) -> None:
    before = ckpt.read_bytes()
    _fails(["convert", ckpt, ckpt, "--to", "grouped"], capsys, "dst", "tiny.pt", "is one of the inputs")
    assert ckpt.read_bytes() == before


def test_init_from_another_architecture(tmp_path: Path, capsys) -> None:
    other = rtseg.save_model(rtseg.create_model("enet", num_classes=3), tmp_path / "enet.pt")
    root = _folder(tmp_path / "d")
    _fails(_train_args(root, tmp_path / "run", f"init={other}"), capsys, f"init={other}",
           "it is a checkpoint of another architecture")
    mine = rtseg.save_model(rtseg.create_model(TINY, num_classes=5), tmp_path / "tiny5.pt")  # other class count
    rc, out, err = _cli(_train_args(root, tmp_path / "run2", f"init={mine}"), capsys)
    assert rc == 0, err
    assert f"init: loaded 20 of 24 tensors from {mine}; 4 keep their initial values" in out


@pytest.mark.parametrize("kind", ["no-run", "not-a-state", "version-99", "version-str", "change-lr", "model-list",
                                  "position", "weights-shape"])
def test_bad_resume(kind: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    if kind != "no-run":
        root = _folder(tmp_path / "d", 2, 2)
        assert _cli(_train_args(root, run), capsys)[0] == 0
    extra, needle = [], {"no-run": "nothing to resume", "not-a-state": "not an rtseg training state",
                         "version-99": "training state version 99", "version-str": "training state version '1'",
                         "change-lr": "cannot change lr when resuming",
                         "model-list": "field 'model' must be dict, got list",
                         "position": "training state position (stage 5",
                         "weights-shape": "class_weights must be a tensor of 3 values"}[kind]
    if kind == "not-a-state":
        torch.save({"a": 1}, run / "last.pt")
    elif kind.startswith("version"):
        s = torch.load(run / "last.pt", weights_only=True)
        s["version"] = 99 if kind == "version-99" else "1"
        torch.save(s, run / "last.pt")
    elif kind == "change-lr":
        extra = ["lr=1e-2"]
    elif kind in ("model-list", "position", "weights-shape"):
        s = torch.load(run / "last.pt", weights_only=True)
        if kind == "model-list":
            s["model"] = [1]
        elif kind == "position":
            s["stage_index"] = 5
        else:
            s["class_weights"] = torch.ones(7)
        torch.save(s, run / "last.pt")
    _fails(["train", "--resume", run, *extra], capsys, needle)


# -------------------------------------------------------------------------------- non-finite training
def test_weights_that_go_non_finite_stop_the_run_and_are_never_saved(tmp_path: Path, monkeypatch, capsys) -> None:
    import rtseg.engine.trainer as engine

    real = engine.build_optimizer
    steps = []

    def poisoned(model, cfg, split_encoder=False):
        opt = real(model, cfg, split_encoder)

        def after_step(*_):
            steps.append(1)
            if len(steps) == 3:  # epoch 2, first step (2 steps an epoch)
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("inf")

        opt.register_step_post_hook(after_step)
        return opt

    monkeypatch.setattr(engine, "build_optimizer", poisoned)
    root = _folder(tmp_path / "d")
    run = tmp_path / "run"
    _fails(_train_args(root, run, "epochs=3"), capsys, "became non-finite", "encoder.0.weight")
    state = torch.load(run / "last.pt", weights_only=True)  # epoch 1's state, all finite
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    best = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())


def test_metrics_log_is_strict_json(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "d")
    assert _cli(_train_args(root, tmp_path / "run", "epochs=2"), capsys)[0] == 0

    def refuse(name: str):
        raise AssertionError(f"non-standard JSON constant {name}")

    rows = [json.loads(ln, parse_constant=refuse) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in rows] == [1, 2]


# ---------------------------------------------------------------------------------------------- outputs
def test_full_disk_during_a_checkpoint_write(tmp_path: Path, monkeypatch, capsys) -> None:
    """ENOSPC simulated (monkeypatched write; a size-limited tmpfs needs mount rights the suite may not have):
    one line naming the file, the previous last.pt intact, no temporary file left."""
    import rtseg.engine.state as state_mod

    root = _folder(tmp_path / "d")
    run = tmp_path / "run"
    assert _cli(_train_args(root, run, "epochs=1"), capsys)[0] == 0
    before = (run / "last.pt").read_bytes()
    real_save = torch.save

    def full(obj, f, *a, **k):  # as write(2) reports it: an errno, no file name
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    s = torch.load(run / "last.pt", weights_only=True)
    s["config"]["epochs"] = 2  # continue the same run for one more epoch
    real_save(s, run / "last.pt")
    before = (run / "last.pt").read_bytes()
    monkeypatch.setattr(state_mod, "atomic_torch_save", lambda obj, path: _atomic_with(full, obj, path))
    _fails(["train", "--resume", run], capsys, f"{run / 'last.pt'}: No space left on device")
    assert (run / "last.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_really_full_disk_tmpfs(tmp_path: Path, capsys) -> None:
    """A real full file system (a 256 kB tmpfs, mounted when the test may): the run stops with one line naming
    the file it could not write; every checkpoint present loads (none torn) and no temporary file is left."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the monkeypatched ENOSPC test covers the guarantee)")
    try:
        root = _folder(tmp_path / "d", 2, 2)
        (disk / "filler").write_bytes(b"\0" * (256 * 1024 - 24 * 1024))  # ~24 kB left: config fits, checkpoints not
        line = _fails(_train_args(root, disk / "run", "epochs=3"), capsys, "No space left on device")
        assert str(disk / "run") in line
        for p in (disk / "run").iterdir():
            assert not p.name.endswith(".tmp"), p
            if p.suffix == ".pt":
                torch.load(p, weights_only=True)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _atomic_with(saver, obj, path) -> None:
    from rtseg.utils.io import atomic_open

    with atomic_open(path, "wb") as f:
        saver(obj, f)


def _try_ro_mount(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, check=False)
    return r.returncode == 0


def test_read_only_output_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """A read-only tmpfs mount when the test may mount one, else mkstemp patched to raise EROFS (root ignores
    chmod): one line naming the folder, nothing written."""
    root = _folder(tmp_path / "d", 2, 2)
    ro = tmp_path / "ro"
    mounted = _try_ro_mount(ro)
    try:
        if not mounted:
            import tempfile

            real = tempfile.mkstemp

            def ro_mkstemp(*a, dir=None, **k):
                if dir is not None and Path(dir).resolve().is_relative_to(ro.resolve()):
                    raise OSError(errno.EROFS, "Read-only file system", str(dir))
                return real(*a, dir=dir, **k)

            monkeypatch.setattr(tempfile, "mkstemp", ro_mkstemp)
            monkeypatch.setattr(Path, "mkdir", _ro_mkdir(Path.mkdir, ro))
        _fails(_train_args(root, ro / "run"), capsys, "Read-only file system", str(ro))
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=False)


def _ro_mkdir(real, ro: Path):
    def mkdir(self, *a, **k):
        if Path(self).resolve().is_relative_to(ro.resolve()) and Path(self).resolve() != ro.resolve():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)

    return mkdir


def test_stale_temp_files_of_a_killed_run_are_removed_on_resume(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "d")
    run = tmp_path / "run"
    assert _cli(_train_args(root, run), capsys)[0] == 0
    torn = [run / ".last.pt.q1w2e3r4.tmp", run / ".best.pt.a1b2c3d4.tmp"]
    for p in torn:
        p.write_bytes(b"\0" * 1000)
    s = torch.load(run / "last.pt", weights_only=True)
    s["config"]["epochs"] = 2
    torch.save(s, run / "last.pt")
    assert _cli(["train", "--resume", run], capsys)[0] == 0
    assert not any(p.exists() for p in torn)


# ---------------------------------------------------------------------------- predict (deploy layer)
def test_predict_into_its_own_input_folder_is_refused(tmp_path: Path, ckpt: Path, capsys) -> None:
    src = tmp_path / "imgs"
    _png(src / "a.png", np.zeros((32, 32, 3), np.uint8))
    before = _digest(src)
    _fails(["predict", src, "--weights", ckpt, "--out", src, "--quiet"], capsys, "holds the input", "a.png")
    _fails(["predict", src / "a.png", "--weights", ckpt, "--out", src / "a.png", "--quiet"], capsys, "is the input")
    assert _digest(src) == before


def test_predict_api_into_its_own_input_folder_is_refused(tmp_path: Path, ckpt: Path) -> None:
    src = tmp_path / "imgs"
    _png(src / "a.png", np.zeros((32, 32, 3), np.uint8))
    before = _digest(src)
    from rtseg.deploy import predict

    with pytest.raises(ValueError, match="holds the input"):
        predict(ckpt, [src], src, progress=False)
    assert _digest(src) == before


def test_predict_reads_16_bit_png_like_its_8_bit_twin(tmp_path: Path, ckpt: Path, capsys, monkeypatch) -> None:
    from rtseg.deploy import segmenter

    seen = []
    real = segmenter.Segmenter.predict

    def spy(self, image, *a, **k):  # the image predict hands the model
        seen.append(np.array(image))
        return real(self, image, *a, **k)

    monkeypatch.setattr(segmenter.Segmenter, "predict", spy)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint16)
    _png(tmp_path / "in8" / "x.png", gray.astype(np.uint8))
    _png(tmp_path / "in16" / "x.png", gray * 257)
    for d in ("in8", "in16"):
        assert _cli(["predict", tmp_path / d, "--weights", ckpt, "--out", tmp_path / f"o{d}", "--quiet"], capsys)[0] == 0
    assert len(seen) == 2 and np.array_equal(seen[0], seen[1])


def test_predict_bad_sources(tmp_path: Path, ckpt: Path, capsys) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    (tmp_path / "notes.txt").write_text("x")
    _fails(["predict", "97", "--weights", ckpt, "--out", tmp_path / "o", "--quiet"], capsys, "camera 97")
    _fails(["predict", tmp_path / "clip.mp4", "--weights", ckpt, "--out", tmp_path / "o", "--quiet"], capsys,
           "clip.mp4", "cannot open as video")
    _fails(["predict", tmp_path / "notes.txt", "--weights", ckpt, "--out", tmp_path / "o", "--quiet"], capsys,
           "notes.txt", "unsupported format")
    _fails(["predict", tmp_path / "none*.png", "--weights", ckpt, "--out", tmp_path / "o", "--quiet"], capsys,
           "pattern matches no files")


# --------------------------------------------------------------------------------------------- kill -9
CHILD = """
import io, os, signal, sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads({threads})  # as the parent: results are bit-exact per thread count
import test_bad_input_sweep as T
import rtseg
import rtseg.engine.trainer as engine
from pathlib import Path
kind, n = sys.argv[1].split(":")
n, out = int(n), Path(sys.argv[2])
if kind == "save":  # die half-way through writing the n-th .pt (best.pt or last.pt): a torn temp file
    import rtseg.utils.io as uio
    from contextlib import contextmanager
    real_open, calls = uio.atomic_open, []

    class Half:
        def __init__(self, f):
            self.f = f
        def write(self, b):
            b = bytes(b)
            self.f.write(b[: len(b) // 2]); self.f.flush(); os.fsync(self.f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

    @contextmanager
    def dying_open(path, mode="wb"):
        with real_open(path, mode) as f:
            if str(path).endswith(".pt"):
                calls.append(1)
                if len(calls) == n:
                    yield Half(f)
                    return
            yield f
    uio.atomic_open = dying_open
elif kind == "step":  # die right after the n-th optimiser step of this process
    real_step, calls = engine._train_step, []
    def step(*a, **k):
        r = real_step(*a, **k); calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return r
    engine._train_step = step
if (out / "last.pt").is_file():
    rtseg.train(resume=out)
else:
    rtseg.train(**T.SYNTH, out=str(out))
"""


def _child(point: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    script = CHILD.format(here=str(HERE), threads=torch.get_num_threads())
    return subprocess.run([sys.executable, "-c", script, point, str(out)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _tensors_equal(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
def test_kill_loop_then_resume_is_bit_identical(tmp_path: Path) -> None:
    """Twelve SIGKILLs -- half of them inside a checkpoint write, leaving torn temp files -- each followed by a
    restart (resume when last.pt exists); the end result equals an uninterrupted run bit for bit."""
    ref_dir = tmp_path / "ref"
    ref = rtseg.train(**SYNTH, out=str(ref_dir))
    run = tmp_path / "run"
    # save:n dies inside the n-th .pt write of that process (best.pt, best_encoder.pt or last.pt), step:n after
    # its n-th optimiser step; small n, so that the 8-epoch run is still going at the twelfth kill
    points = ["save:1", "step:3", "save:2", "step:1", "save:3", "step:6", "save:1", "save:2", "step:5", "save:2",
              "step:2", "save:1"]
    torn_seen = 0
    for p in points:
        proc = _child(p, run)
        assert proc.returncode == -signal.SIGKILL, f"{p}: rc {proc.returncode}\n{proc.stderr[-2000:]}"
        torn_seen += any(x.name.endswith(".tmp") for x in run.iterdir())
        if (run / "last.pt").exists():  # never torn: it loads
            torch.load(run / "last.pt", weights_only=True)
    assert torn_seen >= 4  # the kills inside writes did leave temp files behind
    res = rtseg.train(resume=run)
    assert not [x for x in run.iterdir() if x.name.endswith(".tmp")]
    a, b = torch.load(ref_dir / "last.pt", weights_only=True), torch.load(run / "last.pt", weights_only=True)
    assert b["global_epoch"] == 8
    assert _tensors_equal(a["model"], b["model"]) == [] and _tensors_equal(a["ema"], b["ema"]) == []
    assert _tensors_equal(torch.load(ref_dir / "best.pt", weights_only=True)["state_dict"],
                          torch.load(run / "best.pt", weights_only=True)["state_dict"]) == []
    assert _tensors_equal(ref["model"].state_dict(), res["model"].state_dict()) == []
    key = ("global_epoch", "train_loss", "val_miou", "lr")
    rows = [[json.loads(x)[k] for k in key] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [[json.loads(x)[k] for k in key] for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]


def test_kill_inside_the_first_checkpoint_write_then_restart(tmp_path: Path) -> None:
    """The cheap member of the kill family (default suite): a kill mid-write of the very first checkpoint leaves
    no last.pt and a torn temp; the restart starts the run afresh and removes the temp."""
    run = tmp_path / "run"
    proc = _child("save:1", run)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run / "last.pt").exists() and any(x.name.endswith(".tmp") for x in run.iterdir())
    rtseg.train(**{**SYNTH, "stages": ("full",), "epochs": 1}, out=str(run))
    assert not [x for x in run.iterdir() if x.name.endswith(".tmp")]


VIDEO_CHILD = """
import os, signal, sys, threading, time, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
import test_bad_input_sweep as T
import rtseg.deploy.predictor as P
real, n = P._VideoWriter.write, []
def write(self, rgb):
    real(self, rgb); n.append(1)
    if len(n) == 30:
        os.kill(os.getpid(), signal.SIGKILL)
P._VideoWriter.write = write
from rtseg.cli import main
main(["predict", sys.argv[1], "--weights", sys.argv[2], "--out", sys.argv[3], "--overlay", "--quiet"])
"""


def _video(path: Path, frames: int = 12) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), (20 * i) % 256, np.uint8), format="rgb24")
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def test_kill_during_video_predict_leaves_no_unplayable_mp4(tmp_path: Path, ckpt: Path) -> None:
    pytest.importorskip("av")
    clip = _video(tmp_path / "clip.mp4", frames=40)
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", VIDEO_CHILD.format(here=str(HERE)), str(clip), str(ckpt), str(out)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "clip_overlay.mp4").exists()  # only a temp name, never the final one, is torn
    assert any(p.name.startswith(".clip_overlay.mp4.") for p in out.iterdir())  # the kill was mid-video
