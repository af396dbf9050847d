"""rtseg checkpoints: weights plus everything needed to rebuild the model that made them.

File layout (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "rtseg-checkpoint", "version": 1,
     "model": "enet", "model_kwargs": {"num_classes": 12, ...},
     "state_dict": {...},
     "meta": {"class_names": [...], "input": {"range": [0, 1], "order": "RGB", ...}, ...}}
"""

from __future__ import annotations

import fnmatch
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtseg.errors import CheckpointError
from rtseg.hub import available_weights, read_index, resolve_weights
from rtseg.models import create_model as _registry_create_model
from rtseg.models import list_models as _registry_list_models
from rtseg.models import model_info
from rtseg.models._registry import suggest
from rtseg.models.convert import convert_to_model
from rtseg.nn.grouping import apply_grouping_meta, grouping_meta
from rtseg.utils.io import atomic_torch_save

__all__ = ["FORMAT", "CheckpointError", "convert_file", "create_model", "default_weights", "list_models",
           "load_checkpoint", "load_model", "save_model"]

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
    """Read and validate an rtseg checkpoint dict (safe: ``weights_only=True``); ``path`` may also name
    shipped weights (``"enet_camvid"``), so every ``init=``/checkpoint argument takes those names too."""
    path = Path(path)
    if not path.is_file():
        if str(path) in available_weights():
            path = resolve_weights(str(path))
        else:
            raise CheckpointError(f"{path}: no such checkpoint file or shipped weights"
                                  f"{suggest(str(path), available_weights())}")
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
    model = _registry_create_model(ckpt["model"], **ckpt["model_kwargs"])
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


# -- timm-style entry points: rtseg.create_model(name, pretrained=...) and rtseg.list_models(pretrained=...) --
# The registry (models layer) knows architectures only; shipped weights are resolved here, a layer up.


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered architectures matching ``pattern`` (``"essnet*"``); with ``pretrained=True`` the names of
    the shipped weights instead (``["enet_camvid", ...]``), each usable as ``create_model(name, pretrained=True)``
    or ``load_model(name)``."""
    if not pretrained:
        return _registry_list_models(pattern)
    return [n for n in available_weights() if fnmatch.fnmatchcase(n, pattern)]


def default_weights(arch: str) -> str | None:
    """The shipped weights ``create_model(arch, pretrained=True)`` loads: the best-scoring (val mIoU) of those
    trained as architecture ``arch``; None when none is shipped."""
    index = read_index()
    names = [n for n in available_weights() if index[n].get("model") == arch]
    return max(names, key=lambda n: (index[n].get("val_miou") or 0.0, n), default=None)


def create_model(name: str, num_classes: int | None = None, pretrained: bool | str | os.PathLike = False,
                 **kwargs: Any) -> nn.Module:
    """Build a model by name, optionally with trained weights (timm's ``create_model``).

    ``name`` is a registered architecture (``"enet"``) or shipped weights (``"enet_camvid"``: that
    architecture with those weights' classes). ``pretrained``: ``False`` = random init (``num_classes``,
    default 19, and ``kwargs`` go to the builder); ``True`` = the shipped weights named ``name``, or for an
    architecture its default shipped weights (:func:`default_weights`); a string = those weights (shipped name
    or checkpoint path), which must be of architecture ``name``. Pretrained models come in eval mode, with
    ``model.rtseg_meta`` (class names, ...) as from :func:`load_model`; ``num_classes``/``kwargs`` must then
    agree with the weights (a different class count is a fine-tuning run: ``rtseg train init=WEIGHTS``).
    """
    index = read_index()
    shipped = name in index and name in available_weights()
    if name not in _registry_list_models() and not shipped:
        raise KeyError(f"unknown model {name!r}{suggest(name, _registry_list_models() + available_weights())}; "
                       "see `rtseg models` and `rtseg weights`")
    if pretrained is False or pretrained is None:
        if shipped:  # the architecture of those weights, untrained
            rec_kw = dict(load_checkpoint(resolve_weights(name))["model_kwargs"])
            if num_classes is not None:
                rec_kw["num_classes"] = num_classes
            return _registry_create_model(index[name]["model"], **{**rec_kw, **kwargs})
        return _registry_create_model(name, num_classes=19 if num_classes is None else num_classes, **kwargs)
    if pretrained is True:
        weights = name if shipped else default_weights(name)
        if weights is None:
            have = ", ".join(available_weights()) or "none"
            raise FileNotFoundError(f"no shipped weights for {name!r} (shipped: {have}); pass pretrained=<checkpoint>")
    elif isinstance(pretrained, (str, os.PathLike)):
        weights = pretrained
    else:
        raise TypeError(f"pretrained must be a bool, a shipped weights name or a checkpoint path, got {pretrained!r}")
    model = load_model(weights)
    arch = index[name]["model"] if shipped else name
    if model.rtseg_name != arch:
        raise ValueError(f"weights {weights!r} are a {model.rtseg_name!r} model, not {arch!r}")
    have_kw = dict(model.rtseg_kwargs)
    want = dict(kwargs, **({} if num_classes is None else {"num_classes": num_classes}))
    clash = {k: (v, have_kw.get(k)) for k, v in want.items() if have_kw.get(k) != v}
    if clash:
        detail = ", ".join(f"{k}={v!r} (weights: {h!r})" for k, (v, h) in clash.items())
        raise ValueError(f"weights {weights!r} do not fit {detail}; to train on other classes from them use "
                         f"`rtseg train init={weights} ...`")
    return model
