"""Weights shipped with rtseg, resolvable by name (``rtseg.load_model("enet_camvid")``)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"


def available_weights() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt")) if WEIGHTS_DIR.is_dir() else []


def resolve_weights(name: str) -> Path:
    """Path of shipped weights ``name``; ``FileNotFoundError`` naming the argument otherwise."""
    p = WEIGHTS_DIR / f"{name}.pt"
    if p.is_file():
        return p
    from rtseg.models._registry import suggest

    have = available_weights()
    hint = suggest(name, have) or (f" (shipped: {', '.join(have)})" if have else " (no weights are shipped yet)")
    raise FileNotFoundError(f"{name}: no such checkpoint file or shipped weights{hint}")
