"""``rtseg serve`` under load, on 127.0.0.1 only: 50 concurrent clients until 500 requests are served, bounded in
time. Every answer is 200 with the labels of *that* request's image, or 503 (queue full; the client waits the
Retry-After and tries again); the server's memory does not grow over the 500 served requests. p50 / p95
latency go to test-artifacts/serve/load_HxW.json (and stdout). The 360x480 variant is marked slow."""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="rtseg serve tests need the extra: pip install 'rtseg[serve]'")
pytest.importorskip("httpx", reason="rtseg serve tests need httpx: pip install 'rtseg[dev]'")

import httpx

from .serve_helpers import make_frames, png_bytes

CLIENTS = 50
REQUESTS = 500
WARMUP = 50
SIZES = [  # (H, W), time limit in s. Small frames: the default test is about the server's queueing, not the model
    pytest.param((72, 96), 150, id="72x96"),
    pytest.param((360, 480), 900, id="360x480", marks=pytest.mark.slow),  # CamVid's own size: minutes on 1 thread
]
MAX_RSS_GROWTH = 16 * 2**20


async def _load(url: str, bodies: list[bytes], n: int, clients: int,
                time_limit: float) -> list[tuple[int, int, float, bytes]]:
    """``clients`` concurrent clients send until ``n`` requests are served (200); a 503 is retried after its
    Retry-After. -> every answer as (status, image index, seconds, body)."""
    left = [n]
    out: list[tuple[int, int, float, bytes]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while left[0] > 0:
            left[0] -= 1
            idx = i % len(bodies)
            i += 1
            t0 = time.perf_counter()
            r = await http.post("/predict", files={"file": ("f.png", bodies[idx], "image/png")})
            out.append((r.status_code, idx, time.perf_counter() - t0, r.content))
            if r.status_code == 503:
                left[0] += 1  # not served: try again, after the wait the server asks for
                await asyncio.sleep(float(r.headers["retry-after"]))

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.wait_for(asyncio.gather(*(client(k, http) for k in range(clients))), time_limit)
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


@pytest.mark.parametrize("size, time_limit", SIZES)
def test_fifty_clients_all_succeed_or_get_503_without_memory_growth(cli_server, segmenter, artifacts, size, time_limit):
    frames = make_frames(5, *size)
    bodies = [png_bytes(f) for f in frames]
    expected = [segmenter.predict(f) for f in frames]
    warm = asyncio.run(_load(cli_server.url, bodies, WARMUP, CLIENTS, time_limit))  # threadpools, allocator arenas
    assert {s for s, *_ in warm} <= {200, 503}
    rss0 = cli_server.rss_bytes()
    t0 = time.perf_counter()
    answers = asyncio.run(_load(cli_server.url, bodies, REQUESTS, CLIENTS, time_limit))
    wall = time.perf_counter() - t0
    rss1 = cli_server.rss_bytes()

    statuses = [s for s, *_ in answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    ok = [(idx, dt, body) for s, idx, dt, body in answers if s == 200]
    busy = [body for s, _, _, body in answers if s == 503]
    assert len(ok) == REQUESTS
    for idx, _, body in ok:  # each answer belongs to its own request: no mix-ups between concurrent ones
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), expected[idx])
    for body in busy:
        assert "server busy" in json.loads(body)["error"]
    assert httpx.get(cli_server.url + "/health").json()["queue"]["pending"] == 0

    lat = [dt for _, dt, _ in ok]
    report = {"clients": CLIENTS, "served": len(ok), "busy_503": len(busy),
              "image": f"{size[0]}x{size[1]}", "wall_s": round(wall, 2), "ok_per_s": round(len(ok) / wall, 1),
              "p50_ms": round(_pct(lat, 50), 1), "p95_ms": round(_pct(lat, 95), 1),
              "rss_before_mib": round(rss0 / 2**20, 1), "rss_after_mib": round(rss1 / 2**20, 1)}
    (artifacts / f"load_{size[0]}x{size[1]}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nrtseg serve load: {report}")
    assert rss1 - rss0 < MAX_RSS_GROWTH, f"server memory grew {(rss1 - rss0) / 2**20:.1f} MiB over {REQUESTS} requests"
