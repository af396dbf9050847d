"""CLI of a new user's first hour: cached `rtseg models`, shipped names in `profile`, optional packages
checked before the work, --verbose."""

from __future__ import annotations

import json
import logging
import sys

import pytest

import rtseg.cli.eval as cli_eval
import rtseg.cli.models as cli_models
from rtseg.cli import main


def test_models_counts_are_cached(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("RTSEG_CACHE", str(tmp_path))
    assert main(["models", "enet", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(list(tmp_path.glob("model_counts-*.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("recounted although cached")

    monkeypatch.setattr(cli_models, "create_model", boom)
    assert main(["models", "enet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert first[0]["name"] == "enet" and first[0]["params"] > 0 and first[0]["macs"] > 0
    with pytest.raises(AssertionError, match="recounted"):
        main(["models", "enet", "--json", "--no-cache"])


def test_profile_takes_shipped_names(capsys) -> None:
    assert main(["profile", "enet_camvid", "--no-latency", "--size", "64x96"]) == 0
    out = capsys.readouterr().out
    assert "enet" in out and "351,927" in out
    assert main(["profile", "enet_camvd", "--no-latency"]) == 2
    assert "did you mean enet_camvid" in capsys.readouterr().err


def test_missing_matplotlib_fails_before_the_evaluation(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    def never(*a, **k):
        raise AssertionError("evaluation ran before the dependency check")

    monkeypatch.setattr(cli_eval, "evaluate", never)
    rc = main(["eval", "--weights", "enet_camvid", "--dataset", "synthetic", "--plots", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err == "rtseg eval: error: eval --plots needs matplotlib (not installed): pip install 'rtseg[plots]'"


def test_missing_runtime_fails_before_the_model(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    rc = main(["predict", "x.png", "--weights", "enet_camvid", "--out", "o", "--backend", "onnxruntime"])
    assert rc == 2 and "pip install 'rtseg[deploy]'" in capsys.readouterr().err


def test_verbose_lets_third_party_log(capsys) -> None:
    assert main(["weights"]) == 0
    assert logging.getLogger("nncf").level == logging.WARNING
    assert main(["--verbose", "weights"]) == 0
    assert logging.getLogger("nncf").level == logging.INFO
    assert "enet_camvid" in capsys.readouterr().out
    main(["weights"])  # back to quiet for the tests that follow
