"""report: a data root recorded relative to where training ran is found, or the error names --root."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtseg.reporting.sources import dataset_spec


def _meta(root: str, out: str = "runs/x") -> dict:
    return {"config": {"dataset": "camvid", "root": root, "out": out, "val_split": "val"}}


def test_relative_root_resolved_from_the_training_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_cwd = tmp_path / "proj"
    (train_cwd / "data" / "camvid").mkdir(parents=True)
    ckpt = train_cwd / "runs" / "x" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("RTSEG_DATA", raising=False)
    spec = dataset_spec(_meta("data/camvid"), ckpt, None, None, None, None)
    assert Path(spec["root"]) == train_cwd / "data" / "camvid"
    assert dataset_spec(_meta("data/camvid"), ckpt, None, "given", None, None)["root"] == "given"  # --root wins


def test_env_fallback_and_the_error_names_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "runs" / "x" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RTSEG_DATA", raising=False)
    with pytest.raises(ValueError, match=r"'\.\./gone/camvid'.*pass --root DIR"):
        dataset_spec(_meta("../gone/camvid"), ckpt, None, None, None, None)
    (tmp_path / "d" / "camvid").mkdir(parents=True)
    monkeypatch.setenv("RTSEG_DATA", str(tmp_path / "d"))
    assert Path(dataset_spec(_meta("../gone/camvid"), ckpt, None, None, None, None)["root"]) == tmp_path / "d" / "camvid"
