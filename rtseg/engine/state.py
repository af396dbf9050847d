"""The training state (``RUN/last.pt``): what it holds, how it is written, read back and resumed.

Format (``weights_only``-loadable: tensors, lists, plain scalars)::

    {"format": "rtseg-train-state", "version": 1, "config": {...}, "stage_index", "stage", "epoch",
     "global_epoch", "model", "optimizer", "scheduler", "scaler", "ema", "best", "class_weights",
     "class_names", "history", "rng": {"torch", "cuda", "numpy", "python", "loader"}, "data_order",
     "stopped" (optional: why the run ended before its last epoch, e.g. a val mIoU plateau)}
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtseg.engine.config import ConfigError, TrainConfig, load_config
from rtseg.models import model_info
from rtseg.utils.io import atomic_torch_save, atomic_write_text

__all__ = ["RESUME_MUTABLE", "TRAIN_STATE_FORMAT", "TRAIN_STATE_VERSION", "load_train_state", "resume_config",
           "rng_state", "save_train_state", "set_rng_state", "trim_log"]

TRAIN_STATE_FORMAT = "rtseg-train-state"
TRAIN_STATE_VERSION = 1
#: keys that may change when resuming without breaking "same weights as an uninterrupted run"
RESUME_MUTABLE = ("workers", "persistent_workers", "progress", "device", "cache",
                  # when to stop changes no epoch's weights: a resumed run equals an uninterrupted one with the new rule
                  "plateau_stop_epochs", "plateau_stop_gain")


def rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "loader": loader_gen.get_state(),
    }


def set_rng_state(s: Mapping[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    p = s["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    loader_gen.set_state(s["loader"])


def load_train_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; there is nothing to resume (start a new run instead)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{path}: not a readable training checkpoint ({str(e).strip().splitlines()[0]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(f"{path}: not an rtseg training state (rtseg train writes last.pt)")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= TRAIN_STATE_VERSION:
        raise ValueError(f"{path}: training state version {version!r} is not one this rtseg reads "
                         f"(1..{TRAIN_STATE_VERSION})")
    _check_fields(state, path)
    return state


def _as_started(recorded: dict[str, Any]) -> dict[str, Any]:
    """A run started by rtseg before ``space_to_batch`` existed (that key is absent from its config) goes on
    exactly as it started: without space-to-batch, and an ESSNet with the dropout its builder had then
    (0.03 at 1/4, 0.3 at 1/8; the grouped builders now default to the released code's 0.1 / 0.1)."""
    if "space_to_batch" in recorded:
        return recorded
    recorded["space_to_batch"] = False
    try:
        family = model_info(str(recorded.get("model"))).family
    except KeyError:
        return recorded  # load_config names the unknown model
    kwargs = dict(recorded.get("model_kwargs") or {})
    if family == "essnet" and "dropout" not in kwargs:
        recorded["model_kwargs"] = {**kwargs, "dropout": [0.03, 0.3]}
    return recorded


#: field -> the type it must have (checked before the config is resolved or a model built from the state)
_FIELDS: dict[str, Any] = {
    "config": dict, "stage_index": int, "stage": str, "epoch": int, "global_epoch": int, "model": dict,
    "optimizer": dict, "scheduler": dict, "scaler": dict, "ema": dict, "best": dict, "class_names": list,
    "history": list, "rng": dict,
}


def _check_fields(state: Mapping[str, Any], path: Path) -> None:
    for key, tp in _FIELDS.items():
        v = state.get(key)
        if not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
            raise ValueError(f"{path}: training state field {key!r} must be {tp.__name__}, got {type(v).__name__}")
    if not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in state["model"].items()):
        raise ValueError(f"{path}: training state field 'model' must map names to tensors")
    if not all(isinstance(c, str) for c in state["class_names"]):
        raise ValueError(f"{path}: training state field 'class_names' must be a list of strings")
    cw = state.get("class_weights")
    if cw is not None and (not isinstance(cw, torch.Tensor) or cw.shape != (len(state["class_names"]),)):
        raise ValueError(f"{path}: training state class_weights must be a tensor of {len(state['class_names'])} "
                         "values (one per class)")
    for key in ("torch", "numpy", "python", "loader"):
        if key not in state["rng"]:
            raise ValueError(f"{path}: training state rng lacks {key!r}")
    if not 0 <= state["epoch"] <= 100_000 or not 0 <= state["global_epoch"] <= 200_000:
        raise ValueError(f"{path}: training state epoch {state['epoch']} / global_epoch {state['global_epoch']} "
                         "out of range")


def resume_config(state: Mapping[str, Any], overrides: Mapping[str, Any]) -> TrainConfig:
    cfg = load_config(_as_started(dict(state["config"])))  # the stored config is validated like a new one
    si = state["stage_index"]
    if not 0 <= si < len(cfg.stages) or state["stage"] != cfg.stages[si] or state["epoch"] > cfg.stage_epochs(
            cfg.stages[si]):
        raise ConfigError(f"training state position (stage {si} {state['stage']!r}, epoch {state['epoch']}) does "
                          f"not fit its config (stages {list(cfg.stages)})")
    bad = sorted(k for k in overrides if k not in RESUME_MUTABLE)
    if bad:
        raise ConfigError(
            f"cannot change {', '.join(bad)} when resuming (the run would no longer match an uninterrupted "
            f"one); only {', '.join(RESUME_MUTABLE)} may change"
        )
    return load_config(cfg, overrides)


def trim_log(path: Path, global_epoch: int) -> None:
    """Keep log lines up to the checkpoint's epoch (a kill can land between log line and checkpoint,
    or in the middle of a line)."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["global_epoch"] <= global_epoch:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):
            pass  # a torn last line
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def save_train_state(path: Path, **fields: Any) -> None:
    """Write the training state atomically (a kill mid-write leaves the previous ``last.pt`` intact)."""
    atomic_torch_save({"format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION, **fields}, path)
