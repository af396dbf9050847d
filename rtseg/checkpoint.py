"""rtseg checkpoints: weights plus everything needed to rebuild the model that made them.

File layout (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "rtseg-checkpoint", "version": 1,
     "model": "enet", "model_kwargs": {"num_classes": 12, ...},
     "state_dict": {...},
     "meta": {"class_names": [...], "input": {"range": [0, 1], "order": "RGB", ...}, ...}}
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtseg.errors import CheckpointError
from rtseg.hub import resolve_weights
from rtseg.models import create_model, model_info
from rtseg.models.convert import convert_to_model
from rtseg.nn.grouping import apply_grouping_meta, grouping_meta
from rtseg.utils.io import atomic_torch_save

__all__ = ["FORMAT", "CheckpointError", "convert_file", "load_checkpoint", "load_model", "save_model"]

FORMAT = "rtseg-checkpoint"
VERSION = 1

#: the input convention every rtseg model follows (normalisation, if any, is inside the model)
INPUT_CONVENTION = {"layout": "BCHW", "order": "RGB", "dtype": "float32", "range": [0.0, 1.0]}


def _plain(obj: Any) -> Any:
    # weights_only loading accepts only primitive containers: turn tuples/paths into lists/strings.
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint metadata must be plain data, got {type(obj).__name__}: {obj!r}")


def save_model(model: nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``model`` to ``path`` atomically with its registry name, kwargs and ``meta``.

    ``meta`` is free-form plain data; ``class_names`` (list of str) is recorded when given and the
    input convention is always recorded. The model must come from :func:`rtseg.create_model`.
    """
    name = getattr(model, "rtseg_name", None)
    kwargs = getattr(model, "rtseg_kwargs", None)
    if name is None or kwargs is None:
        raise ValueError("save_model needs a model built by rtseg.create_model (it records name and kwargs)")
    class_names = meta.pop("class_names", None)
    if class_names is not None and len(class_names) != kwargs.get("num_classes", len(class_names)):
        raise ValueError(f"{len(class_names)} class names given for a model with {kwargs['num_classes']} classes")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta.pop("grouping", None)  # the model's own record is the truth (a converted model drops it)
    grouping = grouping_meta(model)  # gradual-grouping / deploy form: rebuilt by load_model
    if grouping is not None:
        meta["grouping"] = grouping
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "model_kwargs": _plain(kwargs),
        "state_dict": state,
        "meta": _plain({"class_names": class_names, "input": INPUT_CONVENTION, **meta}),
    }
    path = Path(path)
    atomic_torch_save(ckpt, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate an rtseg checkpoint dict (safe: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            hint = "; it looks like a bare state_dict: convert it with `rtseg convert --source ...`"
        raise CheckpointError(f"{path}: not an rtseg checkpoint{hint}")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than this rtseg ({VERSION})")
    return ckpt


def load_model(path_or_name: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in an rtseg checkpoint, in eval mode, with ``model.rtseg_meta`` set."""
    path = Path(path_or_name)
    shipped = None
    if not path.exists():
        path = resolve_weights(str(path_or_name))
        shipped = str(path_or_name)
    ckpt = load_checkpoint(path)
    try:
        model_info(ckpt["model"])
    except KeyError as e:
        raise CheckpointError(f"{path}: {e.args[0]}") from None
    model = create_model(ckpt["model"], **ckpt["model_kwargs"])
    grouping = (ckpt.get("meta") or {}).get("grouping")
    if grouping:  # masked (gradual-grouping) or converted structure: rebuild it before loading weights
        try:
            model = apply_grouping_meta(model, grouping)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the grouped model ({e})") from None
    target = model.state_dict()
    sd = ckpt["state_dict"]
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}" for k in target
             if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shape:
        def few(v: list) -> str:
            return f"{v[:3]}{'...' if len(v) > 3 else ''}"

        raise CheckpointError(f"{path}: weights do not fit model {ckpt['model']!r} (missing {few(missing)}, "
                              f"unexpected {few(unexpected)}, shape mismatch {few(shape)})")
    model.load_state_dict(sd, strict=True)
    model.rtseg_meta = dict(ckpt.get("meta", {}))
    if shipped is not None:  # its index record (e.g. the int8 float modules) goes with the model
        model.rtseg_meta["shipped_as"] = shipped
    return model.to(map_location).eval()


def convert_file(source: str, src: str | os.PathLike, dst: str | os.PathLike, **kwargs: Any) -> Path:
    """Convert the foreign state dict at ``src`` (``--source`` converter) into an rtseg checkpoint at ``dst``."""
    model, meta = convert_to_model(source, src, **kwargs)
    return save_model(model, dst, **meta)
