"""utils: temp-file convention and clean-up, atomic writers for path-based writers, the output guard, checks."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from rtseg.utils.checks import check_device, check_threads, plain_worker_errors, worker_error_line
from rtseg.utils.deps import require
from rtseg.utils.io import (
    atomic_open,
    atomic_path,
    atomic_torch_save,
    check_outputs_not_inputs,
    remove_stale_temps,
    temp_target,
)


def test_temp_names_map_to_their_final_file_and_only_they_are_removed(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "a_overlay.mp4") as tmp:
        assert tmp.suffix == ".mp4" and temp_target(tmp.name) == "a_overlay.mp4"
        tmp.write_bytes(b"x")
    leftovers = [tmp_path / ".last.pt.abc123_x.tmp", tmp_path / ".v_overlay.mp4.k9k9k9.tmp.mp4"]
    for p in leftovers:
        p.write_bytes(b"torn")
    keep = [tmp_path / "last.pt", tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / "a_overlay.mp4"]
    for p in keep[:3]:
        p.write_bytes(b"mine")
    assert sorted(remove_stale_temps(tmp_path, finals=["last.pt"])) == [leftovers[0]]
    assert leftovers[1].exists()
    assert sorted(remove_stale_temps(tmp_path)) == [leftovers[1]]
    assert all(p.exists() for p in keep)


def test_atomic_path_leaves_nothing_on_error_and_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("exporter died")
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_full_disk_mid_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC simulated by a write that fails half-way (tmpfs needs mount rights the tests may not have)."""
    out = tmp_path / "last.pt"
    atomic_torch_save({"v": torch.ones(3)}, out)
    before = out.read_bytes()

    import rtseg.utils.io as uio

    real_fdopen = os.fdopen

    class Full:  # a file whose disk fills after 7 bytes, as write(2) reports it (errno, no name)
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, b):
            self.f.write(bytes(b)[:7])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uio.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match=r"No space left on device: '.*last\.pt'"):
        atomic_torch_save({"v": torch.zeros(3)}, out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_output_guard_refuses_inputs_by_path_symlink_and_hardlink(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    a = src / "a.png"
    a.write_bytes(b"img")
    (tmp_path / "link").symlink_to(src)
    os.link(a, tmp_path / "hard.png")
    with pytest.raises(ValueError, match=r"--out .*a\.png would overwrite the input"):
        check_outputs_not_inputs([a], src, [src / "a.png"])
    with pytest.raises(ValueError, match="would overwrite the input"):
        check_outputs_not_inputs([a], tmp_path / "link", [tmp_path / "link" / "a.png"])
    with pytest.raises(ValueError, match="would overwrite the input"):
        check_outputs_not_inputs([a], tmp_path, [tmp_path / "hard.png"])
    with pytest.raises(ValueError, match=r"--json .*is one of the inputs"):
        check_outputs_not_inputs([a], a, what="--json")
    check_outputs_not_inputs([a], src, [src / "a_overlay.png", tmp_path / "out" / "a.png"])  # fine


def test_device_threads_and_require_checks() -> None:
    assert check_device("cpu").type == "cpu" and check_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match=r"device: 'gpu' is not a device"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device=cuda:0: torch sees no CUDA device"):
            check_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    assert check_threads(0) is None and check_threads(3) == 3
    for bad in (-1, 1.5, True, 10**6):
        with pytest.raises(ValueError, match="threads"):
            check_threads(bad)
    with pytest.raises(ImportError, match=r"video input needs no_such_pkg_x.*rtseg\[video\]"):
        require("no_such_pkg_x", "video", "video input")
    assert require("json", "x", "y").dumps([]) == "[]"


def test_worker_errors_become_the_in_process_line() -> None:
    from torch.utils.data import DataLoader, Dataset

    class Bad(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            raise ValueError(f"/data/img{i}.png: unreadable image file (truncated)")

    with pytest.raises(ValueError) as info, plain_worker_errors():
        list(DataLoader(Bad(), num_workers=1))
    assert str(info.value) == "/data/img0.png: unreadable image file (truncated)"
    assert worker_error_line(ValueError("plain")) is None


def test_atomic_open_permissions_match_open(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "x.txt", "w") as f:
        f.write("hi")
    with open(tmp_path / "y.txt", "w") as f:
        f.write("hi")
    assert (tmp_path / "x.txt").stat().st_mode == (tmp_path / "y.txt").stat().st_mode
