"""``rtseg bench``: batch-1 latency, throughput, memory and agreement of models across runtimes and precisions.

For every model, input size and ``backend/precision`` the benchmark reports, after ``warmup`` runs:
p50 / p90 latency of the model graph alone (input already resized; no decode or resize; the argmax only with
``graph_argmax``, inside the graph as a deployment runs it), FPS at
batch 1 (1000 / p50), throughput-mode FPS (OpenVINO: ``THROUGHPUT`` hint with an async request queue;
ONNX Runtime / PyTorch: batch of ``throughput_batch``), peak resident memory while building and running that
configuration (``VmHWM`` reset through ``/proc/self/clear_refs``), and the pixel agreement of its labels with
fp32 PyTorch on the same image. ``profile=True`` adds a time breakdown by layer type (torch.profiler, ORT's
profiler, OpenVINO performance counters).

The ``baseline`` row reproduces the released ESSNet code's setting: the model as trained (BatchNorm modules
unfused), eager PyTorch fp32, ``torch.no_grad()``, NCHW, default threads -- what ``eval`` scripts in the
authors' repository run.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["BenchResult", "bench_image", "benchmark", "machine_info", "markdown_table"]


@dataclass
class BenchResult:
    """One benchmark row (``asdict`` -> the ``--json`` document)."""

    model: str
    size: list[int]
    backend: str
    precision: str
    setting: str
    threads: int
    p50_ms: float
    p90_ms: float
    fps: float
    throughput_fps: float | None
    peak_rss_mb: float
    agreement: float
    build_s: float
    runs: int
    profile: dict[str, float] = field(default_factory=dict)
    int8_keep_float: list[str] = field(default_factory=list)  # int8 rows: modules left in float


def machine_info() -> dict[str, Any]:
    """CPU model and flags of interest, core count and library versions, written next to the numbers."""
    cpu, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                            "isa": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni",
                                                                    "avx512_bf16", "amx_bf16", "amx_int8"}),
                            "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    for mod in ("onnxruntime", "openvino", "nncf"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def bench_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A deterministic ``H x W x 3`` uint8 test image with smooth regions and texture (no exact ties)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, size[0] // 32), max(2, size[1] // 32), generator=g)
    img = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    img = (img + 0.08 * torch.randn(1, 3, *size, generator=g)).clamp(0, 1)
    return (img[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timeit(fn: Any, x: np.ndarray, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)


def _pct(times: list[float], q: float) -> float:
    return times[min(len(times) - 1, round(q * (len(times) - 1)))]


def _load(spec: str | nn.Module, num_classes: int) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec.eval()
    from rtseg.checkpoint import load_model
    from rtseg.models._registry import create_model, list_models

    if not Path(spec).exists() and spec in list_models():
        return create_model(spec, num_classes=num_classes).eval()
    return load_model(spec)


# ------------------------------------------------------------------------------------------- profiling
def _profile_torch(net: nn.Module, x: torch.Tensor, bf16: bool) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net(x)
    out = {e.key.replace("aten::", ""): e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def _profile_ort(path: Path, x: np.ndarray, threads: int) -> dict[str, float]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(3):
            sess.run(None, {name: x})
        trace = json.loads(Path(sess.end_profiling()).read_text())
    acc: dict[str, float] = defaultdict(float)
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            acc[ev.get("args", {}).get("op_name", "?")] += ev.get("dur", 0) / 1e3 / 3
    return {k: round(v, 3) for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}


def _profile_ov(seg: Any, x: np.ndarray, threads: int, precision: str) -> dict[str, float]:
    import openvino as ov

    config = {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    req = ov.Core().compile_model(seg.ov_model, "CPU", config).create_infer_request()
    for _ in range(2):
        req.infer({0: x})
    acc: dict[str, float] = defaultdict(float)
    for p in req.get_profiling_info():
        if p.status == p.Status.EXECUTED:
            acc[f"{p.node_type}:{p.exec_type.split('_')[0]}"] += p.real_time.total_seconds() * 1e3
    return {k: round(v, 3) for k, v in sorted(acc.items(), key=lambda kv: -kv[1]) if v >= 0.01}


# ------------------------------------------------------------------------------------------- throughput
def _throughput(seg: Any, x: np.ndarray, batch: int, seconds: float, threads: int) -> float:
    if seg.backend == "openvino":
        import openvino as ov

        config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads,
                  "INFERENCE_PRECISION_HINT": "bf16" if seg.precision == "bf16" else "f32"}
        compiled = ov.Core().compile_model(seg.ov_model, "CPU", config)
        n_req = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, max(1, n_req))
        for _ in range(n_req):
            queue.start_async({0: x})
        queue.wait_all()
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            queue.start_async({0: x})
            done += 1
        queue.wait_all()
        return done / (time.perf_counter() - t0)
    xb = np.ascontiguousarray(np.repeat(x, batch, axis=0))
    seg._run(xb)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        seg._run(xb)
        done += batch
    return done / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------- driver
def benchmark(
    models: Sequence[str | nn.Module],
    sizes: Sequence[tuple[int, int]],
    configs: Sequence[tuple[str, str]] = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")),
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 30,
    throughput_seconds: float = 3.0,
    throughput_batch: int = 4,
    baseline: bool = True,
    profile: bool = False,
    calibration: Any = None,
    calibration_size: int = 32,
    num_classes: int = 19,
    graph_argmax: bool = False,
    int8_keep_float: Sequence[str] | None = None,
    log: Any = None,
) -> list[BenchResult]:
    """Benchmark every ``model x size x (backend, precision)``; one :class:`BenchResult` per row.

    ``models``: registry names (random weights with ``num_classes`` outputs) or checkpoints. ``int8`` rows
    are calibrated on ``calibration`` images, or on synthetic :func:`bench_image` images when None (fine for
    speed, not for accuracy). Agreement is measured on one :func:`bench_image` against fp32 eager PyTorch.
    ``graph_argmax=True`` times the deploy graphs with the argmax inside (``uint8`` labels out, as
    ``rtseg export --argmax`` writes them); their rows have setting ``deploy+argmax``. ``int8_keep_float``:
    module paths int8 leaves in float (default: for shipped weights given by name, the list recorded with
    them -- see :class:`rtseg.Segmenter`).
    """
    from rtseg.segmenter import Segmenter

    threads = int(threads or os.cpu_count() or 1)
    rows: list[BenchResult] = []
    for spec in models:
        model = _load(spec, num_classes)
        name = getattr(model, "rtseg_name", type(model).__name__)
        for size in sizes:
            size = (int(size[0]), int(size[1]))
            image = bench_image(size)
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).contiguous()
            xn = x.numpy()
            torch.set_num_threads(threads)
            with torch.no_grad():
                ref = model(x).argmax(1).numpy()
            deploy = "deploy+argmax" if graph_argmax else "deploy"
            todo = ([("torch", "fp32", "baseline")] if baseline else []) + [(b, p, deploy) for b, p in configs]
            for backend, precision, setting in todo:
                _reset_peak_rss()
                t0 = time.perf_counter()
                if setting == "baseline":
                    def run(a: np.ndarray, model: nn.Module = model) -> np.ndarray:
                        with torch.no_grad():
                            return model(torch.from_numpy(a)).numpy()
                    seg = None
                else:
                    calib = None
                    if precision == "int8":
                        calib = calibration if calibration is not None else [bench_image(size, s)
                                                                             for s in range(1, 9)]
                    try:
                        seg = Segmenter(model, backend, precision, size=size, threads=threads,
                                        calibration=calib, calibration_size=calibration_size,
                                        graph_argmax=graph_argmax,
                                        int8_keep_float=int8_keep_float if precision == "int8" else None)
                    except (ValueError, ImportError) as e:
                        if log:
                            log(f"skip {name} {size[0]}x{size[1]} {backend}/{precision}: {e}")
                        continue
                    run = seg._run
                build = time.perf_counter() - t0
                times = _timeit(run, xn, warmup, runs)
                out = run(xn)
                labels = out if out.ndim == 3 else out.argmax(1)  # in-graph argmax: labels already
                agreement = float((labels == ref).mean())
                tput = None
                if throughput_seconds > 0:
                    if seg is None:
                        class _Eager:
                            backend, precision = "torch", "fp32"
                            _run = staticmethod(run)
                        tput = _throughput(_Eager, xn, throughput_batch, throughput_seconds, threads)
                    else:
                        tput = _throughput(seg, xn, throughput_batch, throughput_seconds, threads)
                prof: dict[str, float] = {}
                if profile:
                    if seg is None:
                        prof = _profile_torch(model, x, False)
                    elif backend == "torch":
                        prof = _profile_torch(seg.deploy_model, x, precision == "bf16")
                    elif backend == "onnxruntime":
                        prof = _profile_ort(seg.model_path, xn, threads)
                    else:
                        prof = _profile_ov(seg, xn, threads, precision)
                p50 = statistics.median(times)
                row = BenchResult(model=name, size=list(size), backend=backend, precision=precision,
                                  setting=setting, threads=threads, p50_ms=round(p50, 2),
                                  p90_ms=round(_pct(times, 0.9), 2), fps=round(1e3 / p50, 2),
                                  throughput_fps=None if tput is None else round(tput, 2),
                                  peak_rss_mb=round(_peak_rss_mb(), 1), agreement=round(agreement, 5),
                                  build_s=round(build, 2), runs=runs, profile=prof,
                                  int8_keep_float=list(seg.int8_keep_float) if seg and precision == "int8" else [])
                rows.append(row)
                if log:
                    log(format_row(row))
                if seg is not None:
                    seg.close()
    return rows


def format_row(r: BenchResult) -> str:
    tp = "-" if r.throughput_fps is None else f"{r.throughput_fps:.1f}"
    return (f"{r.model:<14} {r.size[0]}x{r.size[1]:<5} {r.backend + '/' + r.precision:<18} {r.setting:<8} "
            f"p50 {r.p50_ms:8.2f} ms  p90 {r.p90_ms:8.2f} ms  {r.fps:7.2f} FPS  tput {tp:>7} FPS  "
            f"rss {r.peak_rss_mb:7.1f} MB  agree {100 * r.agreement:7.3f}%")


def markdown_table(rows: Sequence[BenchResult | dict[str, Any]]) -> str:
    """The rows as the Markdown table docs/benchmarks.md uses (rows may be results or their JSON dicts)."""
    head = ("| model | size | backend/precision | setting | p50 ms | p90 ms | FPS (p50) | throughput FPS | "
            "peak RSS MB | agreement vs fp32 torch |")
    out = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = asdict(r) if isinstance(r, BenchResult) else r
        tp = "-" if d["throughput_fps"] is None else f"{d['throughput_fps']:.1f}"
        out.append(f"| `{d['model']}` | {d['size'][0]}x{d['size'][1]} | {d['backend']}/{d['precision']} | "
                   f"{d['setting']} | {d['p50_ms']:.1f} | {d['p90_ms']:.1f} | {d['fps']:.1f} | {tp} | "
                   f"{d['peak_rss_mb']:.0f} | {100 * d['agreement']:.2f} % |")
    return "\n".join(out) + "\n"


def to_json(rows: Sequence[BenchResult]) -> dict[str, Any]:
    """The ``--json`` document: machine info plus one dict per row."""
    return {"machine": machine_info(), "results": [asdict(r) for r in rows]}
