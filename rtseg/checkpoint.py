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
import sys
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
from rtseg.utils.io import atomic_torch_save, check_outputs_not_inputs

__all__ = ["FORMAT", "MAX_CLASSES", "CheckpointError", "convert_file", "create_model", "default_weights",
           "list_models", "load_checkpoint", "load_model", "resolve_checkpoint", "save_model", "validate_checkpoint"]

FORMAT = "rtseg-checkpoint"
VERSION = 1
#: bound on a checkpoint's ``num_classes`` checked before anything is built (a crafted 1e8 tried 51 GB)
MAX_CLASSES = 10_000
_PLAIN = (bool, int, float, str, type(None))

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


def _plain_value(v: Any, depth: int = 0) -> bool:
    if isinstance(v, _PLAIN):
        return True
    if depth < 4 and isinstance(v, (list, tuple)):
        return all(_plain_value(x, depth + 1) for x in v)
    if depth < 4 and isinstance(v, dict):
        return all(isinstance(k, str) and _plain_value(x, depth + 1) for k, x in v.items())
    return False


def validate_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Check the type and range of every field of a loaded checkpoint dict before anything is built from it.

    ``CheckpointError`` naming ``path`` and the field otherwise. Returns ``ckpt`` (``meta`` defaults to ``{}``).
    """
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            hint = "; it looks like a bare state_dict: convert it with `rtseg convert --source ...`"
        raise CheckpointError(f"{path}: not an rtseg checkpoint{hint}")

    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{path}: {msg}")

    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"checkpoint field 'version' must be a positive int, got {version!r}")
    if version > VERSION:
        raise bad(f"checkpoint version {version} is newer than this rtseg ({VERSION})")
    name = ckpt.get("model")
    if not isinstance(name, str):
        raise bad(f"checkpoint field 'model' must be a model name, got {type(name).__name__}")
    try:
        model_info(name)
    except KeyError as e:
        raise bad(str(e.args[0])) from None
    kwargs = ckpt.get("model_kwargs")
    if not isinstance(kwargs, dict) or not _plain_value(kwargs):
        raise bad("checkpoint field 'model_kwargs' must be a dict of plain values")
    n = kwargs.get("num_classes")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CLASSES:
        raise bad(f"model_kwargs num_classes must be an int in 1..{MAX_CLASSES}, got {n!r}")
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in sd.items()):
        raise bad("checkpoint field 'state_dict' must be a non-empty dict of name -> tensor")
    meta = ckpt.get("meta")
    if meta is None:
        meta = ckpt["meta"] = {}
    if not isinstance(meta, dict):
        raise bad(f"checkpoint field 'meta' must be a dict, got {type(meta).__name__}")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(c, str) for c in names)
                              or len(names) != n):
        raise bad(f"meta class_names must be a list of {n} strings (num_classes), got {str(names)[:80]}")
    if meta.get("grouping") is not None and not isinstance(meta["grouping"], dict):
        raise bad("meta grouping must be a dict")
    return ckpt


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate an rtseg checkpoint dict (safe: ``weights_only=True``; fields checked by
    :func:`validate_checkpoint`); ``path`` may also name shipped weights (``"enet_camvid"``, see
    :func:`resolve_checkpoint`), so every ``init=``/checkpoint argument takes those names too."""
    # a str is an argument as the user wrote it (names win, see resolve_checkpoint); a Path is a file already
    # chosen (load_model resolved it; "./enet_camvid" would otherwise lose its "./" and become the name)
    if not isinstance(path, Path) or not path.exists():
        try:
            path = resolve_checkpoint(path)
        except FileNotFoundError as e:
            raise CheckpointError(str(e)) from None
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    return validate_checkpoint(ckpt, path)


def _looks_like_path(text: str) -> bool:
    return os.sep in text or (os.altsep or "/") in text or text.startswith(("~", ".")) or Path(text).suffix != ""


def resolve_checkpoint(path_or_name: str | os.PathLike) -> Path:
    """The file a checkpoint argument means. A shipped weights name wins over a file of the same name in the
    working directory: to use that file, write it as a path (``./enet_camvid``); when both exist a note on
    stderr says which one was used. Anything else is a path."""
    return _resolve(path_or_name)[0]


def _resolve(path_or_name: str | os.PathLike) -> tuple[Path, bool]:
    """(file, whether it is shipped weights named by ``path_or_name``)."""
    text = os.fspath(path_or_name)
    if not _looks_like_path(text):
        try:
            shipped = resolve_weights(text)
        except FileNotFoundError:
            shipped = None
        if shipped is not None:
            if Path(text).exists():
                print(f"note: {text!r} is the name of shipped weights; using those ({shipped}), not the file "
                      f"./{text} (write ./{text} to use the file)", file=sys.stderr)
            return shipped, True
    path = Path(text).expanduser()
    if path.exists():
        return path, False
    return resolve_weights(text), True  # the helpful "no such checkpoint file or shipped weights" error


def _build(ckpt: dict[str, Any], path: Path) -> nn.Module:
    kwargs = dict(ckpt["model_kwargs"])
    try:
        model = _registry_create_model(ckpt["model"], **kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: model {ckpt['model']!r} cannot be built from the checkpoint's "
                              f"model_kwargs {str(kwargs)[:120]} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    grouping = ckpt["meta"].get("grouping")
    if grouping:  # masked (gradual-grouping) or converted structure: rebuild it before loading weights
        try:
            model = apply_grouping_meta(model, grouping)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the grouped model ({e})") from None
    return model


def _check_fit(target: dict[str, Any], sd: dict[str, torch.Tensor], path: Path, name: str) -> None:
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}" for k in target
             if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shape:
        def few(v: list) -> str:
            return f"{v[:3]}{'...' if len(v) > 3 else ''}"

        raise CheckpointError(f"{path}: weights do not fit model {name!r} (missing {few(missing)}, "
                              f"unexpected {few(unexpected)}, shape mismatch {few(shape)})")


def load_model(path_or_name: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in an rtseg checkpoint, in eval mode, with ``model.rtseg_meta`` set.

    Untrusted files are safe: ``weights_only`` loading, every field validated, and the model first built on
    the ``meta`` device (no memory) so that its tensor shapes are checked against the file's before the real
    model is allocated -- a crafted ``num_classes`` cannot make rtseg allocate more than the file holds.
    """
    path, by_name = _resolve(path_or_name)
    shipped = os.fspath(path_or_name) if by_name else None
    ckpt = load_checkpoint(path)
    try:
        with torch.device("meta"):
            ghost = _build(ckpt, path)
    except (NotImplementedError, RuntimeError):
        ghost = None  # a builder that computes on its weights: the bounds checked above still hold
    if ghost is not None:
        _check_fit(ghost.state_dict(), ckpt["state_dict"], path, ckpt["model"])
        del ghost
    model = _build(ckpt, path)
    _check_fit(model.state_dict(), ckpt["state_dict"], path, ckpt["model"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.rtseg_meta = dict(ckpt["meta"])
    if shipped is not None:  # its index record (e.g. the int8 float modules) goes with the model
        model.rtseg_meta["shipped_as"] = shipped
    return model.to(map_location).eval()


def convert_file(source: str, src: str | os.PathLike, dst: str | os.PathLike, **kwargs: Any) -> Path:
    """Convert the foreign state dict at ``src`` (``--source`` converter) into an rtseg checkpoint at ``dst``."""
    check_outputs_not_inputs([src], dst, [dst], what="dst")  # converting in place would destroy the source
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
