"""key=value overrides read mappings as YAML values, the way the recipe files are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtseg.engine.config import ConfigError, coerce, load_config


def test_yaml_mappings_as_in_recipes() -> None:
    assert coerce("dataset_kwargs", "{size: [96, 128]}") == {"size": [96, 128]}
    assert coerce("model_kwargs", "{'groups': 2, 'dropout': 0.1}") == {"groups": 2, "dropout": 0.1}
    assert coerce("dataset_kwargs", "{length: 10, void: false}") == {"length": 10, "void": False}
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "synthetic_demo.yaml", ["dataset_kwargs={size: [96, 128]}", "epochs=1"])
    assert cfg.dataset_kwargs == {"size": [96, 128]} and cfg.epochs == 1
    with pytest.raises(ConfigError, match="YAML mapping"):
        coerce("dataset_kwargs", "[96, 128]")
    with pytest.raises(ConfigError, match="YAML mapping"):
        coerce("dataset_kwargs", "{size: [96,")
