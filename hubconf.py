"""torch.hub entry points: ``torch.hub.load("path/to/rtseg", "enet", source="local", pretrained=True)``.

One entry point per registered architecture (``enet``, ``erfnet``, ``essnet_dg2s``, ...) and one per shipped
weights name (``enet_camvid``, ...). Each is :func:`rtseg.create_model`: ``pretrained=False`` (default) gives
random weights (``num_classes``, default 19, and builder kwargs apply), ``pretrained=True`` the shipped weights
(for an architecture, its best shipped weights), ``pretrained="<checkpoint>"`` those weights.
``rtseg.list_models()`` and ``rtseg.list_models(pretrained=True)`` list the names.
"""

from __future__ import annotations

from typing import Any

dependencies = ["torch", "numpy", "PIL", "yaml", "tqdm"]

import rtseg as _rtseg  # noqa: E402  (torch.hub reads `dependencies` before importing the rest)


def _entry(name: str):
    def entry(pretrained: bool | str = False, **kwargs: Any):
        return _rtseg.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"rtseg.create_model({name!r}, pretrained=..., **kwargs)"
    return entry


for _name in [*_rtseg.list_models(), *_rtseg.list_models(pretrained=True)]:
    globals()[_name] = _entry(_name)
del _name
