"""Measure the latency of shipped weights and record it in rtseg/weights/index.json (README + report read it).

    python scripts/bench_weights.py --calib ../shared/data/camvid/train            # every shipped model
    python scripts/bench_weights.py enet_camvid --backend onnxruntime/fp32 --size 360x480

Runs ``rtseg.deploy.benchmark`` (batch 1, p50 after warm-up, all cores) on each shipped model at its
evaluation size, stores the deploy rows, and regenerates the README tables. Run it on an otherwise idle
machine: the load average is stored with the numbers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = ["onnxruntime/fp32", "openvino/fp32", "openvino/int8"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="shipped weights (default: all)")
    p.add_argument("--backend", action="append", help=f"backend/precision, repeatable (default: {DEFAULT})")
    p.add_argument("--size", default=None, help="HxW (default: each model's MACs size, its evaluation size)")
    p.add_argument("--calib", default=None, help="int8 calibration image folder (CamVid train)")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--argmax", action="store_true", help="time the graphs with the argmax inside (uint8 labels)")
    p.add_argument("--repeat", type=int, default=1,
                   help="benchmark every model this many times, in turns, and record the run with the median "
                        "p50 per backend/precision (single runs on a shared VM move by 10-30 %%)")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be >= 1")

    from rtseg.cli import parse_size
    from rtseg.deploy.bench import benchmark, format_row, machine_info
    from rtseg.hub import available_weights, weights_info
    from rtseg.packaging import record_latency

    names = a.names or available_weights()
    configs = [tuple(b.split("/")) for b in (a.backend or DEFAULT)]
    runs: dict[str, list] = {name: [] for name in names}
    for _ in range(a.repeat):  # in turns, so a slow spell of the machine hits every model alike
        for name in names:
            rec = weights_info(name)
            size = parse_size(a.size) if a.size else tuple(rec["macs_size"])
            rows = benchmark([name], [size], configs, warmup=a.warmup, runs=a.runs, throughput_seconds=0,
                             baseline=False, calibration=a.calib, calibration_size=a.calib_count,
                             graph_argmax=a.argmax)
            for r in rows:
                print(format_row(r), flush=True)
            runs[name] += rows
    for name, rows in runs.items():
        by_cfg: dict[tuple[str, str], list] = {}
        for r in rows:
            by_cfg.setdefault((r.backend, r.precision), []).append(r)
        # the median run per backend/precision (the lower middle one for an even count)
        chosen = [sorted(rs, key=lambda r: r.p50_ms)[(len(rs) - 1) // 2] for rs in by_cfg.values()]
        if a.repeat > 1:
            print(f"{name}: median of {a.repeat} runs: "
                  + ", ".join(f"{r.backend}/{r.precision} {r.p50_ms:.1f} ms" for r in chosen), flush=True)
        record_latency(name, chosen, machine_info(), repeat=a.repeat)
    subprocess.run([sys.executable, str(REPO / "scripts" / "update_readme.py")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
