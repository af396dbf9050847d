"""Turn other code bases' state dicts into rtseg checkpoints (``rtseg convert --source ...``).

A converter maps a foreign ``state_dict`` onto a registered rtseg model, key by key, and says which
model, kwargs and metadata the checkpoint records. Converters are exact: every foreign key must be
used and every rtseg key filled, or conversion fails naming the offending keys. Family files register
their converters on import, and importing any ``rtseg.models`` module imports the package (every family)
first, so the table is complete whenever it is read. Writing the result is :func:`rtseg.checkpoint.convert_file`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rtseg.errors import CheckpointError
from rtseg.models._registry import create_model, suggest

__all__ = ["Converted", "convert_state_dict", "convert_to_model", "list_converters", "load_foreign_state_dict",
           "register_converter"]


@dataclass
class Converted:
    model: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


_CONVERTERS: dict[str, Callable[..., Converted]] = {}


def register_converter(source: str) -> Callable[[Callable[..., Converted]], Callable[..., Converted]]:
    def deco(fn: Callable[..., Converted]) -> Callable[..., Converted]:
        if source in _CONVERTERS:
            raise ValueError(f"converter {source!r} already registered")
        _CONVERTERS[source] = fn
        return fn

    return deco


def list_converters() -> list[str]:
    return sorted(_CONVERTERS)


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a DataParallel-style prefix when every key has it."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def remap(sd: dict[str, torch.Tensor], rules: Callable[[str], str | None], target: dict[str, torch.Tensor],
          source_name: str) -> dict[str, torch.Tensor]:
    """Rename keys of ``sd`` with ``rules`` (None drops a key) and check the result fits ``target`` exactly."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        nk = rules(k)
        if nk is None:
            continue
        if nk in out:
            raise CheckpointError(f"{source_name}: two keys map onto {nk!r}")
        out[nk] = v
    missing = [k for k in target if k not in out]
    unexpected = [k for k in out if k not in target]
    bad_shape = [k for k in out if k in target and tuple(out[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            f"{source_name}: state dict does not match (missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"shape mismatch {[(k, tuple(out[k].shape), tuple(target[k].shape)) for k in bad_shape[:4]]})"
        )
    return {k: out[k].to(target[k].dtype) for k in target}


def convert_state_dict(source: str, sd: dict[str, torch.Tensor], **kwargs: Any) -> Converted:
    if source not in _CONVERTERS:
        raise KeyError(f"unknown --source {source!r}{suggest(source, list(_CONVERTERS))}; "
                       f"choose from {', '.join(sorted(_CONVERTERS))}")
    return _CONVERTERS[source](sd, **kwargs)


def load_foreign_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a bare state dict safely (``weights_only=True``), unwrapping ``{"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch file ({str(e).splitlines()[0]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state_dict (name -> tensor)")
    return dict(obj)


def convert_to_model(source: str, src: str | os.PathLike, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """Build the rtseg model that the foreign state dict at ``src`` converts to, with its checkpoint meta."""
    sd = load_foreign_state_dict(src)
    try:
        conv = convert_state_dict(source, sd, **kwargs)
    except CheckpointError as e:
        raise CheckpointError(f"{src}: {e}") from None
    model = create_model(conv.model, **conv.model_kwargs)
    model.load_state_dict(conv.state_dict, strict=True)
    return model, {"converted_from": {"source": source, "file": Path(src).name}, **conv.meta}
