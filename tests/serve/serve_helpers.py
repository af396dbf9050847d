"""Helpers of the ``rtseg serve`` tests: servers on 127.0.0.1 (uvicorn in a thread, or the real ``rtseg serve``
process), test frames (CamVid when ../shared is there, synthetic otherwise)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("RTSEG_SHARED", REPO.parent / "shared"))
CAMVID_VAL = SHARED / "data" / "camvid" / "val"
ARTIFACTS = Path(os.environ.get("RTSEG_TEST_ARTIFACTS", REPO / "test-artifacts")) / "serve"



def camvid_paths(n: int) -> list[Path]:
    """The first ``n`` CamVid val frames (one driving sequence) or [] when ../shared is absent."""
    return sorted(CAMVID_VAL.glob("*.png"))[:n] if CAMVID_VAL.is_dir() else []


def synthetic_frames(n: int, h: int = 360, w: int = 480) -> list[np.ndarray]:
    """Street-like frames (sky, buildings, road, a moving box): used when CamVid is absent."""
    frames = []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        im = np.zeros((h, w, 3), np.uint8)
        im[: h // 3] = (135, 170, 215)
        im[h // 3 : 2 * h // 3] = (120, 90, 80)
        im[2 * h // 3 :] = (90, 90, 95)
        x0 = (40 + 15 * i) % (w - 80)
        im[(yy > h // 2) & (yy < h // 2 + 60) & (xx > x0) & (xx < x0 + 80)] = (30, 30, 160)
        frames.append(im)
    return frames


def make_frames(n: int, h: int = 360, w: int = 480) -> list[np.ndarray]:
    """``n`` ``h x w x 3`` uint8 RGB frames: CamVid val (resized when needed) or synthetic."""
    paths = camvid_paths(n)
    if len(paths) < n:
        return synthetic_frames(n, h, w)
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            out.append(np.asarray(im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)))
    return out


def png_bytes(image: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, **kw).save(buf, format="PNG")
    return buf.getvalue()



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(app) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on 127.0.0.1; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", ws="auto", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class ServerProcess:
    """A real ``rtseg serve`` process (``python -m rtseg serve ... --port 0``) and its address."""

    def __init__(self, *args: str, timeout: float = 120) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "rtseg", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"rtseg serve exited ({self.proc.wait()}):\n{''.join(self.lines)}")
            self.lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if m:
                self.url = m.group(1)
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"rtseg serve did not start in {timeout} s:\n{''.join(self.lines)}")
        # keep draining its output so a chatty server can never block on a full pipe
        threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stdout], daemon=True).start()
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"rtseg serve never answered /health:\n{''.join(self.lines)}")
            time.sleep(0.1)

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def write_y4m(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Write ``H x W x 3`` uint8 RGB frames as an uncompressed YUV4MPEG2 clip (4:2:0; what Chromium's fake
    camera reads with ``--use-file-for-fake-video-capture``; no ffmpeg needed)."""
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 needs even frame sizes, got {w}x{h}")
    path = Path(path)
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            y, cb, cr = Image.fromarray(rgb).convert("YCbCr").split()
            f.write(b"FRAME\n")
            f.write(y.tobytes())
            for plane in (cb, cr):
                f.write(plane.resize((w // 2, h // 2), Image.BILINEAR).tobytes())
    return path


def find_chromium() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) from the Debian packages, or None when not installed."""
    import shutil

    browser = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
    driver = next((p for p in (shutil.which("chromedriver"), "/usr/lib/chromium/chromedriver")
                   if p and Path(p).is_file()), None)
    return (browser, driver) if browser and driver else None
