"""Fixtures of the ``rtseg serve`` tests (skipped with the install hint when the extra is missing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="rtseg serve tests need the extra: pip install 'rtseg[serve]'")
pytest.importorskip("httpx", reason="rtseg serve tests need httpx: pip install 'rtseg[dev]'")

from serve_helpers import ARTIFACTS, ServerProcess


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for files a test keeps for people to look at (screenshots, load-test numbers)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def segmenter():
    """The shipped ``enet_camvid`` on PyTorch, one thread (the machine is shared)."""
    import rtseg

    seg = rtseg.Segmenter("enet_camvid", threads=1)
    yield seg
    seg.close()


@pytest.fixture(scope="session")
def cli_server() -> Iterator[ServerProcess]:
    """A real ``rtseg serve --weights enet_camvid`` process: PyTorch, one inference thread, queue of 32."""
    server = ServerProcess("--weights", "enet_camvid", "--threads", "1", "--queue-size", "32")
    yield server
    server.close()
    assert server.proc.returncode in (0, -15), "".join(server.lines)
