"""Fixtures of the ``rtseg serve`` tests. Each test module skips itself, with the install hint, when the
``rtseg[serve]`` extra or httpx is missing; the fixtures import what they need when used."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for files a test keeps for people to look at (screenshots, load-test numbers)."""
    from .serve_helpers import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def segmenter():
    """The shipped ``enet_camvid`` on PyTorch, one thread (the machine is shared)."""
    import rtseg

    seg = rtseg.Segmenter("enet_camvid", backend="torch", threads=1)  # OpenVINO stays out of this process (Makefile)
    yield seg
    seg.close()


@pytest.fixture(scope="session")
def cli_server() -> Iterator:
    """A real ``rtseg serve --weights enet_camvid`` process: PyTorch, one inference thread, queue of 32."""
    from .serve_helpers import ServerProcess

    server = ServerProcess("--weights", "enet_camvid", "--threads", "1", "--queue-size", "32")
    yield server
    server.close()
    assert server.proc.returncode in (0, -15), "".join(server.lines)
