"""The one string lookup in rtseg: model names -> builder functions.

Builders register themselves with ``@register_model(...)``; everything else in the code base is
plain imports so that go-to-definition always works.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model", "suggest"]


@dataclass(frozen=True)
class ModelInfo:
    """Metadata attached to a registered builder (the single source of truth for docs and tables)."""

    name: str
    builder: Callable[..., nn.Module]
    family: str = ""
    paper: str = ""
    description: str = ""
    # Published numbers as reported by the paper, each with the input size and the paper's own
    # convention, e.g. {"params": 0.37e6, "gflops": 3.83, "flops_convention": "flops", "size": (512, 1024)}.
    published: dict[str, Any] = field(default_factory=dict)
    default_size: tuple[int, int] = (512, 1024)
    exportable: bool = True  # capability flag, tested both ways
    tags: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None,
    *,
    family: str = "",
    paper: str = "",
    description: str = "",
    published: dict[str, Any] | None = None,
    default_size: tuple[int, int] = (512, 1024),
    exportable: bool = True,
    tags: tuple[str, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(num_classes=..., **kw) -> nn.Module`` under ``name``.

    Duplicate names are refused so that two families can never silently shadow each other.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered (by {_REGISTRY[key].builder.__module__})")
        doc = description or (fn.__doc__ or "").strip().splitlines()[0] if (description or fn.__doc__) else ""
        _REGISTRY[key] = ModelInfo(
            name=key,
            builder=fn,
            family=family,
            paper=paper,
            description=doc,
            published=dict(published or {}),
            default_size=tuple(default_size),
            exportable=exportable,
            tags=tuple(tags),
        )
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching a shell-style ``pattern`` (``"essnet*"``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def suggest(name: str, choices: list[str] | None = None) -> str:
    """A ``did you mean ...?`` hint for an unknown name ('' when nothing is close)."""
    choices = list_models() if choices is None else choices
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def model_info(name: str) -> ModelInfo:
    """Registry metadata of ``name``; ``KeyError`` with a close-match suggestion if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}{suggest(name)}; see `rtseg models`") from None


def create_model(name: str, num_classes: int = 19, **kwargs: Any) -> nn.Module:
    """Build a registered model. Input B x 3 x H x W float RGB in [0, 1]; output B x num_classes x H x W.

    The constructor arguments are recorded on the model (``model.rtseg_name``/``rtseg_kwargs``) so
    that :func:`rtseg.save_model` can write a checkpoint that rebuilds itself.
    """
    info = model_info(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    model = info.builder(num_classes=num_classes, **kwargs)
    model.rtseg_name = name
    model.rtseg_kwargs = {"num_classes": num_classes, **kwargs}
    return model
