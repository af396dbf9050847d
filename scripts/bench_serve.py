"""Throughput and latency of ``rtseg serve`` at 1, 8 and 50 concurrent clients (POST /predict, labels PNG).

    python scripts/bench_serve.py --weights enet_camvid --backend openvino --size 360x480 --seconds 20

Starts the real ``rtseg serve`` process on 127.0.0.1 (a free port), sends one 360x480 image (a CamVid val frame
when ../shared is there, else ``rtseg.deploy.bench.bench_image``) from N concurrent keep-alive clients for a fixed
time after a warm-up, and prints requests/s, p50 / p95 client latency, 503 answers, the server's own median
inference time (Server-Timing header), the machine and its load average. Clients retry a 503 after its
Retry-After. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMVID_FRAME = REPO.parent / "shared" / "data" / "camvid" / "val" / "0016E5_07959.png"


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "rtseg", "serve", "--weights", args.weights, "--backend", args.backend,
           "--precision", args.precision, "--host", "127.0.0.1", "--port", "0", "--queue-size", str(args.queue_size)]
    if args.size:
        cmd += ["--size", args.size]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.graph_argmax:
        cmd.append("--graph-argmax")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        print(f"  server: {line.rstrip()}", file=sys.stderr)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if m:
            return proc, m.group(1)
    raise SystemExit(f"rtseg serve exited with {proc.wait()} before listening")


async def run_clients(url: str, body: bytes, clients: int, seconds: float) -> dict:
    import httpx

    stop = time.perf_counter() + seconds
    lat, infer, busy = [], [], [0]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await http.post("/predict", files={"file": ("frame.png", body, "image/png")})
            if r.status_code == 503:
                busy[0] += 1
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                continue
            r.raise_for_status()
            lat.append(time.perf_counter() - t0)
            timing = dict(p.strip().split(";dur=") for p in r.headers["server-timing"].split(","))
            infer.append(float(timing["inference"]))

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    import numpy as np

    return {"clients": clients, "requests": len(lat), "busy_503": busy[0], "wall_s": round(wall, 2),
            "req_per_s": round(len(lat) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 1) if lat else None,
            "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 1) if lat else None,
            "server_inference_p50_ms": round(float(np.median(infer)), 1) if infer else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="enet_camvid")
    p.add_argument("--backend", default="openvino", choices=["torch", "onnxruntime", "openvino"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--size", default="360x480",
                   help="fixed model input HxW (static graph: OpenVINO's fastest form; '' = native, dynamic)")
    p.add_argument("--threads", type=int, default=None, help="server inference threads (default: all cores)")
    p.add_argument("--graph-argmax", action="store_true")
    p.add_argument("--clients", default="1,8,50", help="comma-separated concurrency levels (default 1,8,50)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per level (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up time per level (default 3)")
    p.add_argument("--queue-size", type=int, default=64,
                   help="server queue (default 64: > 50 clients, so the 50-client row measures queueing, not 503s)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args(argv)

    import numpy as np
    from PIL import Image

    from rtseg.deploy.bench import bench_image, machine_info

    if CAMVID_FRAME.is_file():
        image, what = np.asarray(Image.open(CAMVID_FRAME).convert("RGB")), f"CamVid {CAMVID_FRAME.name}"
    else:
        image, what = bench_image((360, 480)), "rtseg.deploy.bench.bench_image"
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    body = buf.getvalue()
    load0 = os.getloadavg()[0]
    proc, url = start_server(a)
    rows = []
    try:
        for n in (int(x) for x in a.clients.split(",")):
            asyncio.run(run_clients(url, body, n, a.warmup))
            rows.append(asyncio.run(run_clients(url, body, n, a.seconds)))
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(15)
    info = machine_info()
    info["load_avg_start"], info["load_avg_end"] = load0, os.getloadavg()[0]
    result = {"weights": a.weights, "backend": f"{a.backend}/{a.precision}", "size": a.size or None,
              "graph_argmax": a.graph_argmax,
              "image": f"{image.shape[0]}x{image.shape[1]} PNG ({len(body)} bytes, {what})",
              "command": " ".join(["python", "scripts/bench_serve.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": info, "rows": rows}
    print(f"rtseg serve, {a.weights} {a.backend}/{a.precision} at {a.size or 'native size'}, {result['image']}, "
          f"{a.seconds:g} s per row")
    print("| clients | requests/s | p50 ms | p95 ms | 503s | server inference p50 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['req_per_s']:.1f} | {r['p50_ms']} | {r['p95_ms']} | {r['busy_503']} | "
              f"{r['server_inference_p50_ms']} |")
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, openvino {info.get('openvino')}, "
          f"onnxruntime {info.get('onnxruntime')}; load average {load0:.2f} at start, {info['load_avg_end']:.2f} at end")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
