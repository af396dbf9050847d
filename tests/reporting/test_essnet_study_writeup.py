"""scripts/essnet_study.py --writeup: the study's Table 3.5 / Fig. 3.10 analogues from run logs (issue #18)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "essnet_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("essnet_study", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _log(folder: Path, arm: str, encoder: list[float], full: list[float], stopped: bool = False) -> None:
    recs = [{"epoch": i + 1, "stage": "encoder", "val_miou": v, "alpha": max(0.0, 1 - i / 3)} for i, v in enumerate(encoder)]
    recs += [{"epoch": i + 1, "stage": "full", "val_miou": v} for i, v in enumerate(full)]
    if stopped:
        recs[-1]["stopped"] = "plateau"
    (folder / arm).mkdir(parents=True)
    (folder / arm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_writeup_table_figures_and_gradual_gap(study, tmp_path):
    pytest.importorskip("matplotlib")
    logs = tmp_path / "logs"
    _log(logs, "essnet_dg2s_camvid", [0.2, 0.3, 0.35], [0.40, 0.52, 0.50], stopped=True)
    _log(logs, "essnet_dg2s_scratch_camvid", [0.2, 0.25, 0.3], [0.38, 0.47, 0.49])
    _log(logs, "essnet_d_camvid", [0.3], [])  # encoder stage only: no table row, but a curve
    index = {"enet_camvid": {"model": "enet", "val_miou": 0.62, "params": 351927, "macs": 1.28e9,
                             "per_class_iou": {"Sky": 0.9, "Road": 0.95}},
             "essnet_dg2s_camvid": {"model": "essnet_dg2s", "val_miou": 0.515,
                                    "per_class_iou": {"Sky": 0.88, "Road": 0.93}}}
    rows = study.study_rows(logs, index)
    assert [r["name"] for r in rows] == ["enet_camvid", "essnet_dg2s_camvid", "essnet_dg2s_scratch_camvid"]
    g, s = rows[1], rows[2]
    assert g["best"] == pytest.approx(52.0) and g["epoch"] == 2 and g["state"] == "plateau"
    assert g["model"] == "essnet_dg2s" and g["params"] == s["params"]  # gradual deploys as the grouped net
    assert s["state"] == "training" and s["shipped"] is None and g["shipped"] == pytest.approx(51.5)

    md = tmp_path / "docs" / "results.md"
    md.parent.mkdir()
    md.write_text(f"intro\n{study.WRITEUP_BEGIN}\nold\n{study.WRITEUP_END}\nafter\n")
    (tmp_path / "index.json").write_text(json.dumps(index))
    study.write_writeup(md, logs, tmp_path / "index.json", md.parent / "figures")
    text = md.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "old" not in text
    assert "| `essnet_dg2s_camvid` (`essnet_dg2s`) | scratch, gradual grouping from ESSNet-D | 52.00 (2) | 51.50 |" in text
    assert "52.00 vs 49.00 = +3.00 points (plateau / training)" in text
    assert "| Road | 95.0 | 93.0 |" in text  # per-class IoU of the shipped networks only
    for fig in ("essnet_study_tradeoff.png", "essnet_study_curves.png"):
        assert (md.parent / "figures" / fig).stat().st_size > 1000
        assert f"(figures/{fig})" in text


def test_writeup_needs_its_markers(study, tmp_path):
    md = tmp_path / "r.md"
    md.write_text("no markers\n")
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(SystemExit, match="markers"):
        study.write_writeup(md, tmp_path, tmp_path / "index.json", tmp_path / "f")
    assert md.read_text() == "no markers\n"


def test_baseline_continuation_arm_replaces_the_shipped_baseline_row(study, tmp_path):
    """erfnet_camvid as a study arm (the shipped scratch run continued): once it logs full-stage epochs its
    row comes from its log (and still shows the shipped file's score); before that, from the index."""
    index = {"erfnet_camvid": {"model": "erfnet", "val_miou": 0.554, "params": 2_063_000, "macs": 8.6e9}}
    logs = tmp_path / "logs"
    logs.mkdir()
    (row,) = study.study_rows(logs, index)
    assert row["state"] == "shipped" and row["init"] == study.BASELINES["erfnet_camvid"]
    _log(logs, "erfnet_camvid", [], [0.56, 0.59, 0.58])
    (row,) = study.study_rows(logs, index)
    assert row["init"] == study.INIT_LABEL["erfnet_camvid"] and row["best"] == pytest.approx(59.0)
    assert row["epoch"] == 2 and row["state"] == "training" and row["shipped"] == pytest.approx(55.4)
    assert row["model"] == "erfnet"
