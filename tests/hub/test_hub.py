"""Shipped weights: packaging a trained checkpoint, resolving by name, the sha256 check, the shipped index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rtseg
from rtseg.errors import CheckpointError
from rtseg.hub import WEIGHTS_DIR, available_weights, resolve_weights, sha256, weights_info
from rtseg.packaging import package_weights

ROOT = Path(__file__).resolve().parents[2]

SYN = {"size": (48, 64), "length": 2}
NAMES = ["sky", "building", "pole", "road", "sidewalk", "car", "pedestrian"]  # SyntheticStreet's classes


@pytest.fixture()
def packaged(tmp_path: Path) -> tuple[Path, dict]:
    torch.manual_seed(0)
    model = rtseg.create_model("essnet_d", num_classes=7)
    ckpt = rtseg.save_model(model, tmp_path / "best.pt", class_names=NAMES,
                            dataset="synthetic", epoch=3)
    wdir = tmp_path / "weights"
    rec = package_weights(ckpt, "tiny_syn", "rtseg train ...", None, weights_dir=wdir, train_time_s=12.5, init="scratch", **SYN)
    return wdir, rec


def test_package_records_evaluation_size_and_hash(packaged) -> None:
    wdir, rec = packaged
    assert rec["model"] == "essnet_d" and rec["dataset"] == "synthetic" and rec["classes"] == NAMES
    assert 0.0 <= rec["val_miou"] <= 1.0 and list(rec["per_class_iou"]) == NAMES
    assert rec["macs_size"] == [48, 64] and rec["params"] > 0 and rec["macs"] > 0
    assert rec["sha256"] == sha256(wdir / "tiny_syn.pt") and rec["train_time_s"] == 12.5 and rec["init"] == "scratch"
    assert json.loads((wdir / "index.json").read_text())["tiny_syn"] == rec
    assert available_weights(wdir) == ["tiny_syn"] and weights_info("tiny_syn", wdir) == rec
    # the recorded mIoU is what evaluating the shipped file gives
    again = rtseg.evaluate(str(wdir / "tiny_syn.pt"), "synthetic", split="val", progress=False, **SYN)
    assert again["miou"] == pytest.approx(rec["val_miou"], abs=1e-9)


def test_resolve_by_name_checks_the_hash(packaged) -> None:
    wdir, _ = packaged
    assert resolve_weights("tiny_syn", wdir) == wdir / "tiny_syn.pt"
    with pytest.raises(FileNotFoundError, match="tiny_sin: no such checkpoint.*tiny_syn"):
        resolve_weights("tiny_sin", wdir)
    with open(wdir / "tiny_syn.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        resolve_weights("tiny_syn", wdir)


def test_gradual_checkpoint_ships_as_its_grouped_model(tmp_path: Path) -> None:
    from rtseg.nn.grouping import make_gradual, set_alpha

    torch.manual_seed(0)
    model = make_gradual(rtseg.create_model("essnet_d", num_classes=7), groups=2, shuffle=True)
    set_alpha(model, 0.0)
    ckpt = rtseg.save_model(model, tmp_path / "best.pt", class_names=NAMES, dataset="synthetic")
    rec = package_weights(ckpt, "g", "cmd", None, weights_dir=tmp_path / "w", **SYN)
    assert rec["trained_as"] == "essnet_d" and rec["model"] == "essnet_dg2s"
    assert rec["params"] == sum(p.numel() for p in rtseg.create_model("essnet_dg2s", num_classes=7).parameters())


def test_shipped_weights_load_by_name_and_match_their_records() -> None:
    names = available_weights()
    if not names:
        pytest.skip(f"no weights shipped in {WEIGHTS_DIR}")
    for name in names:
        rec = weights_info(name)
        model = rtseg.load_model(name)  # by name, hash checked
        assert model.rtseg_name == rec["model"] and model.num_classes == len(rec["classes"])
        assert sum(p.numel() for p in model.parameters()) == rec["params"]
        # the exact training command(s): rtseg train (possibly after a conversion step) or the experiment script
        assert "rtseg train " in rec["command"] or rec["command"].startswith("python scripts/"), name


def test_cli_weights_lists_and_refuses_unknown(capsys) -> None:
    from rtseg.cli import main

    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for name in available_weights():
        assert name in out
    assert main(["weights", "no_such_weights"]) == 2
    assert "no_such_weights: no such checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("graph_argmax", [False, True])
def test_record_latency_keeps_deploy_rows(packaged, graph_argmax) -> None:
    from rtseg.deploy import benchmark, machine_info
    from rtseg.packaging import record_latency

    pytest.importorskip("onnxruntime")
    wdir, rec = packaged
    rows = benchmark([str(wdir / "tiny_syn.pt")], [(48, 64)], [("onnxruntime", "fp32")], warmup=0, runs=2,
                     throughput_seconds=0, baseline=True, graph_argmax=graph_argmax)
    out = record_latency("tiny_syn", rows, machine_info(), weights_dir=wdir, repeat=3)
    assert list(out["latency_ms"]) == ["onnxruntime/fp32"]  # the baseline row is not a deploy latency
    assert out["latency"]["repeat"] == 3 and "isa" in out["latency"]["machine"]
    assert out["latency_ms"]["onnxruntime/fp32"] == pytest.approx(rows[1].p50_ms, abs=0.01)
    assert ("argmax" in out["latency"]["statistic"]) == graph_argmax
    assert weights_info("tiny_syn", wdir)["sha256"] == rec["sha256"]


def test_readme_latency_footnote_names_each_machine_from_the_records() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def rec(cpu, isa, date, repeat):
        return {"latency": {"machine": {"cpu": cpu, "cores": 2, "isa": isa}, "threads": 2, "date": date,
                            "repeat": repeat}}

    one = mod.latency_provenance({"a": rec("EPYC", ["avx2"], "2026-12-02", 3), "b": rec("EPYC", ["avx2"], "2026-12-02", 3)})
    assert one == "measured on EPYC (2 cores, avx2), 2 threads, 2026-12-02, median of 3 runs"
    two = mod.latency_provenance({"a": rec("EPYC", ["avx2"], "2026-12-02", 3),
                                  "b": rec("Xeon", ["avx2", "avx512_vnni"], "2026-11-22", 1), "c": {}})
    assert "EPYC (2 cores, avx2), 2 threads, 2026-12-02, median of 3 runs: `a`" in two
    assert "Xeon (2 cores, avx2/avx512_vnni), 2 threads, 2026-11-22, one run: `b`" in two and "`c`" not in two
    assert mod.latency_provenance({"c": {}}) == "not measured"
