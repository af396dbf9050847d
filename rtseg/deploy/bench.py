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

import os
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rtseg.deploy.artifact import is_artifact_path
from rtseg.deploy.backends import Backend, TorchBackend
from rtseg.deploy.segmenter import Segmenter
from rtseg.utils.machine import machine_info
from rtseg.utils.timing import time_calls

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


def _load(spec: str | nn.Module, num_classes: int) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec.eval()
    from rtseg.checkpoint import load_model
    from rtseg.models._registry import create_model, list_models

    if not Path(spec).exists() and spec in list_models():
        return create_model(spec, num_classes=num_classes).eval()
    return load_model(spec)


# --------------------------------------------------------------------------------------------- driver
def _row_backend(model: nn.Module, backend: str, precision: str, setting: str, size: tuple[int, int],
                 threads: int, kw: dict[str, Any]) -> tuple[Backend, Any]:
    """-> (backend object that runs the row, its Segmenter or None for the baseline row)."""
    if setting == "baseline":  # the model as trained, eager, torch.no_grad(): the released code's setting
        return TorchBackend(model, "fp32", threads, labels_out=False, no_grad=True), None
    if isinstance(model, (str, os.PathLike)):  # an exported artifact file: its own runtime and precision
        seg = Segmenter(model, backend=backend, threads=threads)
        return seg.runtime, seg
    calib = None
    if precision == "int8":
        calib = kw["calibration"] if kw["calibration"] is not None else [bench_image(size, s) for s in range(1, 9)]
    seg = Segmenter(model, backend, precision, size=size, threads=threads, calibration=calib,
                    calibration_size=kw["calibration_size"], graph_argmax=kw["graph_argmax"],
                    int8_keep_float=kw["int8_keep_float"] if precision == "int8" else None)
    return seg.runtime, seg


def _measure(run: Backend, ref: np.ndarray | None, xn: np.ndarray, warmup: int, runs: int, tput_s: float,
             tput_batch: int, profile: bool) -> dict[str, Any]:
    timing = time_calls(lambda: run.run(xn), warmup=warmup, runs=runs)  # the one timing loop (rtseg.utils)
    out = run.run(xn)
    labels = out if out.ndim == 3 else out.argmax(1)  # in-graph argmax: labels already
    p50 = timing.median_ms
    return {"p50_ms": round(p50, 2), "p90_ms": round(timing.p90_ms, 2), "fps": round(1e3 / p50, 2),
            "agreement": round(float((labels == ref).mean()), 5) if ref is not None else float("nan"),
            "throughput_fps": round(run.throughput(xn, tput_batch, tput_s), 2) if tput_s > 0 else None,
            "profile": run.profile(xn) if profile else {}, "_labels": labels}


def _artifact_rows(path: str, backends: Sequence[str], threads: int, opts: dict[str, Any],
                   log: Any) -> list[BenchResult]:
    """Rows for an exported artifact file: timed at its own input size; agreement with its fp32 PyTorch
    source is the one recorded at export (``agreement_fp32``; NaN when the file records none)."""
    rows = []
    for backend in backends:
        _reset_peak_rss()
        t0 = time.perf_counter()
        try:
            run, seg = _row_backend(path, backend, "", "deploy", (0, 0), threads, {})
        except (ValueError, ImportError) as e:
            if log:
                log(f"skip {path} {backend}: {e}")
            continue
        size = seg.size
        if size is None:
            raise ValueError(f"{path}: a dynamic-size artifact: give the size to time it at (bench a checkpoint)")
        image = bench_image(size)
        xn = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).contiguous().numpy()
        build = time.perf_counter() - t0
        m = _measure(run, None, xn, opts["warmup"], opts["runs"], opts["throughput_seconds"],
                     opts["throughput_batch"], opts["profile"])
        m.pop("_labels")
        m["agreement"] = float((seg.artifact or {}).get("agreement_fp32") or float("nan"))
        rows.append(BenchResult(model=f"{seg.name} ({Path(path).name})", size=list(size), backend=seg.backend,
                                precision=seg.precision, setting="artifact", threads=threads,
                                peak_rss_mb=round(_peak_rss_mb(), 1), build_s=round(build, 2), runs=opts["runs"],
                                int8_keep_float=list(seg.int8_keep_float), **m))
        if log:
            log(format_row(rows[-1]))
        seg.close()
    return rows


def _model_rows(model: nn.Module, size: tuple[int, int], todo: list[tuple[str, str, str]], threads: int,
                opts: dict[str, Any], log: Any) -> list[BenchResult]:
    name = getattr(model, "rtseg_name", type(model).__name__)
    image = bench_image(size)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).contiguous()
    xn = x.numpy()
    torch.set_num_threads(threads)
    with torch.no_grad():
        ref = model(x).argmax(1).numpy()
    rows = []
    for backend, precision, setting in todo:
        _reset_peak_rss()
        t0 = time.perf_counter()
        try:
            run, seg = _row_backend(model, backend, precision, setting, size, threads, opts)
        except (ValueError, ImportError) as e:
            if log:
                log(f"skip {name} {size[0]}x{size[1]} {backend}/{precision}: {e}")
            continue
        build = time.perf_counter() - t0
        m = _measure(run, ref, xn, opts["warmup"], opts["runs"], opts["throughput_seconds"],
                     opts["throughput_batch"], opts["profile"])
        m.pop("_labels")
        rows.append(BenchResult(model=name, size=list(size), backend=seg.backend if seg else "torch",
                                precision=precision, setting=setting, threads=threads,
                                peak_rss_mb=round(_peak_rss_mb(), 1), build_s=round(build, 2), runs=opts["runs"],
                                int8_keep_float=list(seg.int8_keep_float) if seg and precision == "int8" else [],
                                **m))
        if log:
            log(format_row(rows[-1]))
        if seg is not None:
            seg.close()
    return rows


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

    ``models``: registry names (random weights with ``num_classes`` outputs), checkpoints, or exported
    artifact files (``.xml`` / ``.onnx``: timed as written -- their runtime, precision and size --, one row
    per backend of ``configs`` that runs the file; ``sizes`` and precisions do not apply). ``int8`` rows
    are calibrated on ``calibration`` images, or on synthetic :func:`bench_image` images when None (fine for
    speed, not for accuracy). Agreement is measured on one :func:`bench_image` against fp32 eager PyTorch.
    ``graph_argmax=True`` times the deploy graphs with the argmax inside (``uint8`` labels out, as
    ``rtseg export --argmax`` writes them); their rows have setting ``deploy+argmax``. ``int8_keep_float``:
    module paths int8 leaves in float (default: for shipped weights given by name, the list recorded with
    them -- see :class:`rtseg.Segmenter`).
    """
    threads = int(threads or os.cpu_count() or 1)
    opts = {"warmup": warmup, "runs": runs, "throughput_seconds": throughput_seconds,
            "throughput_batch": throughput_batch, "profile": profile, "calibration": calibration,
            "calibration_size": calibration_size, "graph_argmax": graph_argmax, "int8_keep_float": int8_keep_float}
    rows: list[BenchResult] = []
    for spec in models:
        if is_artifact_path(spec):  # the runtimes of configs that run this file (.xml: openvino; .onnx: both)
            runs = ("openvino",) if str(spec).lower().endswith(".xml") else ("onnxruntime", "openvino")
            backends = [b for b in dict.fromkeys(b for b, _ in configs) if b in runs] or ["auto"]
            rows += _artifact_rows(str(spec), backends, threads, opts, log)
            continue
        model = _load(spec, num_classes)
        deploy = "deploy+argmax" if graph_argmax else "deploy"
        todo = ([("torch", "fp32", "baseline")] if baseline else []) + [(b, p, deploy) for b, p in configs]
        for size in sizes:
            rows += _model_rows(model, (int(size[0]), int(size[1])), todo, threads, opts, log)
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
