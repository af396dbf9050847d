"""Shared fixtures: ../shared reference data (skipped with a reason when absent), thread limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RTSEG_SHARED", REPO.parent / "shared"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path of ../shared (reference weights, parity pairs, CamVid); skips the test when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data folder {SHARED} is absent (set RTSEG_SHARED to point at it)")
    return SHARED


def shared_file(shared: Path, rel: str) -> Path:
    p = shared / rel
    if not p.exists():
        pytest.skip(f"{p} is absent from the shared reference data")
    return p
