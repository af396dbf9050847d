"""CLI behaviour: bad arguments exit non-zero with a one-line reason; the main commands run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtseg.cli import main


def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected a one-line reason, got:\n{err}"
    return lines[0]


def test_unknown_model_suggests_close_match(capsys):
    rc, _, err = _run(["profile", "enett", "--no-latency"], capsys)
    assert rc == 2
    assert "did you mean enet" in _one_line_error(err)


@pytest.mark.parametrize("size", ["512", "axb", "0x10", "512x"])
def test_malformed_size(size, capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "enet", "--size", size])
    assert e.value.code == 2
    assert "malformed size" in _one_line_error(capsys.readouterr().err)


def test_missing_file(tmp_path, capsys):
    rc, _, err = _run(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "o.pt"), "--source", "enet-davidtvs"],
                      capsys)
    assert rc == 2 and "nope.pth" in _one_line_error(err)


def test_unknown_convert_source(tmp_path, capsys):
    import torch

    src = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, src)
    rc, _, err = _run(["convert", str(src), str(tmp_path / "o.pt"), "--source", "enet-davidtv"], capsys)
    assert rc == 2 and "did you mean enet-davidtvs" in _one_line_error(err)


def test_unknown_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["trian"])
    assert e.value.code == 2
    _one_line_error(capsys.readouterr().err)


def test_profile_json_keys(capsys):
    rc, out, _ = _run(["profile", "enet", "--size", "64x96", "--runs", "2", "--warmup", "1", "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert {"params", "macs", "flops", "latency_ms", "peak_activation_mb"} <= set(d)
    assert d["flops"] == 2 * d["macs"] > 0 and d["latency_ms"] > 0 and d["size"] == [64, 96]


def test_models_table_lists_registry(capsys):
    import rtseg

    rc, out, _ = _run(["models", "enet*", "--size", "64x64"], capsys)
    assert rc == 0
    assert "enet" in out and "GMACs@64x64" in out and "GFLOPs@64x64" in out
    rc, out, _ = _run(["models", "--json", "--size", "64x64", "essnet_dg2*"], capsys)
    rows = json.loads(out)
    assert [r["name"] for r in rows] == rtseg.list_models("essnet_dg2*")
    assert all(r["flops"] == 2 * r["macs"] for r in rows)


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "rtseg.cli", "--version"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and r.stdout.startswith("rtseg ")


def test_demo_quick(tmp_path, capsys):
    rc = main(["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert rc == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert 0.0 <= summary["val"]["miou"] <= 1.0
    assert (tmp_path / "demo" / "overlays.png").stat().st_size > 0
    assert (tmp_path / "demo" / "train" / "best.pt").is_file()
    assert (tmp_path / "demo" / "report" / "index.html").is_file()
    if summary["camvid_frame"] is not None:  # ../shared or RTSEG_DATA has CamVid: the shipped model on a real frame
        assert Path(summary["camvid_frame"]["overlay"]).is_file()
        assert abs(sum(summary["camvid_frame"]["shares_fraction"].values()) - 1) < 1e-6


def test_readme_model_table_is_generated_from_registry():
    """The README's model table must be what scripts/update_readme.py renders from the registry now."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "update_readme.py"
    spec = importlib.util.spec_from_file_location("update_readme", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.README.read_text()
    assert mod.render(text) == text, "README.md model table is stale: run python scripts/update_readme.py"
