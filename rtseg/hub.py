"""Weights shipped with rtseg, resolvable by name (``rtseg.load_model("enet_camvid")``).

``rtseg/weights/<name>.pt`` are ordinary rtseg checkpoints; ``rtseg/weights/index.json`` holds one record
per file -- dataset, classes, validation scores measured at the labels' full resolution, parameters, MACs
at the evaluation size, the exact training command, training time, and the file's sha256, which
:func:`resolve_weights` checks before a file is used. Records are written by :func:`rtseg.packaging.package_weights`
(``scripts/ship_weights.py``) from a finished run; the README's weights table and ``rtseg report`` read them.

This module is the read side (name -> verified file, record); writing records is :mod:`rtseg.packaging`, a
layer above, because it evaluates and profiles the weights it ships.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rtseg.errors import CheckpointError
from rtseg.models._registry import suggest

__all__ = ["WEIGHTS_DIR", "available_weights", "read_index", "resolve_weights", "sha256", "weights_info"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
INDEX = "index.json"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_index(weights_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    p = (weights_dir or WEIGHTS_DIR) / INDEX
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: unreadable weights index ({e})") from None


def available_weights(weights_dir: Path | None = None) -> list[str]:
    """Names of the shipped weights (files present and listed in the index)."""
    d = weights_dir or WEIGHTS_DIR
    return sorted(n for n in read_index(d) if (d / f"{n}.pt").is_file())


def weights_info(name: str | None = None, weights_dir: Path | None = None) -> Any:
    """The index record of shipped weights ``name`` (all records, name -> record, when ``name`` is None)."""
    index = {n: r for n, r in read_index(weights_dir).items() if n in available_weights(weights_dir)}
    if name is None:
        return index
    if name not in index:
        resolve_weights(name, weights_dir)  # raises the helpful error
    return index[name]


def resolve_weights(name: str, weights_dir: Path | None = None) -> Path:
    """Path of shipped weights ``name`` after checking its sha256; ``FileNotFoundError`` naming the argument
    for an unknown name, :class:`CheckpointError` for a file that does not match its recorded hash."""
    d = weights_dir or WEIGHTS_DIR
    p = d / f"{name}.pt"
    record = read_index(d).get(name)
    if p.is_file() and record is not None:
        digest = sha256(p)
        if digest != record["sha256"]:
            raise CheckpointError(
                f"{p}: sha256 {digest[:12]}... does not match the recorded {record['sha256'][:12]}... "
                "(corrupted or replaced file; reinstall rtseg or re-run scripts/ship_weights.py)"
            )
        return p
    have = available_weights(d)
    hint = suggest(name, have) or (f" (shipped: {', '.join(have)})" if have else " (no weights are shipped yet)")
    raise FileNotFoundError(f"{name}: no such checkpoint file or shipped weights{hint}")
