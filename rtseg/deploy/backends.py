"""Runtime backends: one small object per runtime that runs an rtseg deploy graph.

Every backend takes ``B x 3 x H x W`` float32 RGB in [0, 1] (normalisation is inside the graph) and returns
float32 logits ``B x C x H x W`` or, for graphs with the argmax inside (:attr:`Backend.labels_out`), uint8
labels ``B x H x W``. The interface (``run``, ``describe``, ``profile``, ``throughput``, ``save``, ``close``)
is all :class:`rtseg.deploy.Segmenter`, ``bench`` and ``export`` use.

- :class:`TorchBackend`: eager PyTorch (fp32, bf16 autocast);
- :class:`OnnxRuntimeBackend`: an ONNX file in ONNX Runtime's CPU provider (fp32, int8 QDQ);
- :class:`OpenVINOBackend`: an OpenVINO model (in memory, an ``.xml`` IR or an ``.onnx`` file) on the CPU
  plugin (fp32, bf16 inference precision, int8).

:func:`open_artifact` opens an exported rtseg file (``.onnx`` / ``.xml``) with the runtime its suffix names;
:func:`resolve_backend` turns ``"auto"`` into the fastest installed runtime (OpenVINO, ONNX Runtime, torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rtseg.deploy.artifact import ARTIFACT_SUFFIXES, ArtifactInfo, read_metadata
from rtseg.utils.io import atomic_open
from rtseg.utils.machine import cpu_supports_bf16  # re-exported by rtseg.deploy

__all__ = ["AUTO_ORDER", "BACKENDS", "Backend", "OnnxRuntimeBackend", "OpenVINOBackend", "TorchBackend",
           "available_backends", "open_artifact", "resolve_backend"]

BACKENDS = ("torch", "onnxruntime", "openvino")
#: ``backend="auto"`` takes the first installed of these: fastest first on the CPUs measured (docs/deploy.md)
AUTO_ORDER = ("openvino", "onnxruntime", "torch")
_MODULE = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def available_backends() -> list[str]:
    """The backends whose runtime package is installed, in :data:`AUTO_ORDER`."""
    return [b for b in AUTO_ORDER if importlib.util.find_spec(_MODULE[b]) is not None]


def resolve_backend(backend: str, precision: str = "fp32") -> str:
    """``"auto"`` -> the fastest installed backend that runs ``precision`` (int8: not torch; bf16: not
    ONNX Runtime); any other name is checked and returned."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
        return backend
    runs = {"int8": ("openvino", "onnxruntime"), "bf16": ("openvino", "torch")}.get(precision, BACKENDS)
    for b in available_backends():
        if b in runs:
            return b
    raise ImportError(f"no installed runtime runs precision {precision!r}: pip install 'rtseg[deploy]'")


class Backend:
    """Runs one deploy graph. Subclasses set :attr:`name` and implement :meth:`_infer` (one batch)."""

    name = "?"

    def __init__(self, precision: str, threads: int, labels_out: bool, batch1: bool = False) -> None:
        self.precision, self.threads, self.labels_out = precision, int(threads), bool(labels_out)
        self.batch1 = batch1  # the graph takes batch 1 only: larger batches are run image by image

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``B x 3 x H x W`` float32 -> logits ``B x C x H x W`` float32 or labels ``B x H x W`` uint8."""
        if self.batch1 and batch.shape[0] != 1:
            return np.concatenate([self._infer(batch[i : i + 1]) for i in range(batch.shape[0])])
        return self._infer(batch)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Runtime, precision, threads and output kind, for logs and benchmark records."""
        return {"backend": self.name, "precision": self.precision, "threads": self.threads,
                "output": "labels" if self.labels_out else "logits"}

    def profile(self, x: np.ndarray) -> dict[str, float]:
        """Milliseconds by layer type for one run on ``x`` (largest first)."""
        raise NotImplementedError

    def throughput(self, x: np.ndarray, batch: int, seconds: float) -> float:
        """Images per second over ``seconds``, running batches of ``batch`` copies of ``x``."""
        xb = np.ascontiguousarray(np.repeat(x, batch, axis=0))
        self.run(xb)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.run(xb)
            done += batch
        return done / (time.perf_counter() - t0)

    def concurrent(self, streams: int) -> Callable[[np.ndarray], np.ndarray] | None:
        """A run function that ``streams`` threads may call at once, each request on its own share of the
        :attr:`threads` (OpenVINO streams); None where this runtime has no such form (then callers run one
        request at a time through :meth:`run`)."""
        return None

    def save(self, path: str | os.PathLike, meta: dict[str, str]) -> Path:
        """Write the graph with rtseg ``meta`` (string pairs, :func:`rtseg.deploy.graph_metadata`) to ``path``
        atomically (ONNX / OpenVINO backends)."""
        raise ValueError(f"the {self.name} backend has no file form: export to onnx or openvino")

    def close(self) -> None:
        """Release the runtime objects (also done when the backend is garbage-collected)."""


def _sorted_ms(acc: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in sorted(acc.items(), key=lambda kv: -kv[1]) if v >= 0.01}


# ------------------------------------------------------------------------------------------------ torch
class TorchBackend(Backend):
    """Eager PyTorch on ``net`` (a deploy-form model, or the model as trained for the baseline).

    ``no_grad=True`` runs under ``torch.no_grad()`` instead of ``torch.inference_mode()`` (what released
    ``eval`` scripts do: the benchmark's baseline row)."""

    name = "torch"

    def __init__(self, net: nn.Module, precision: str = "fp32", threads: int | None = None,
                 labels_out: bool = False, no_grad: bool = False) -> None:
        super().__init__(precision, threads or os.cpu_count() or 1, labels_out)
        self.net = net.eval()
        self.no_grad = no_grad
        torch.set_num_threads(self.threads)

    def _context(self) -> Any:
        return torch.no_grad() if self.no_grad else torch.inference_mode()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self._context(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.net(torch.from_numpy(batch))
            return out.argmax(1).to(torch.uint8).numpy() if self.labels_out else out.float().numpy()

    def profile(self, x: np.ndarray) -> dict[str, float]:
        from torch.profiler import ProfilerActivity, profile

        with self._context(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            self.net(torch.from_numpy(x))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                self.net(torch.from_numpy(x))
        return _sorted_ms({e.key.replace("aten::", ""): e.self_cpu_time_total / 1e3 for e in prof.key_averages()})


# ------------------------------------------------------------------------------------------ ONNX Runtime
def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("backend='onnxruntime' needs onnxruntime: pip install 'rtseg[deploy]'") from None
    return ort


class OnnxRuntimeBackend(Backend):
    """An ONNX file in ONNX Runtime (CPU provider, all graph optimisations)."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, precision: str = "fp32", threads: int | None = None,
                 labels_out: bool = False) -> None:
        if precision == "bf16":
            raise ValueError("ONNX Runtime's CPU provider has no bf16 convolutions: use backend='openvino' or 'torch'")
        ort = _ort()
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        super().__init__(precision, opts.intra_op_num_threads, labels_out, batch1=inp.shape[0] == 1)
        self._input = inp.name

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: batch})[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": str(self.path)}

    def profile(self, x: np.ndarray) -> dict[str, float]:
        ort = _ort()
        with tempfile.TemporaryDirectory() as tmp:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "ort")
            sess = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            for _ in range(3):
                sess.run(None, {self._input: x})
            trace = json.loads(Path(sess.end_profiling()).read_text())
        acc: dict[str, float] = defaultdict(float)
        for ev in trace:
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                acc[ev.get("args", {}).get("op_name", "?")] += ev.get("dur", 0) / 1e3 / 3
        return _sorted_ms(acc)

    def save(self, path: str | os.PathLike, meta: dict[str, str]) -> Path:
        import onnx

        proto = onnx.load(str(self.path))
        old = {p.key: p.value for p in proto.metadata_props}
        del proto.metadata_props[:]
        for k, v in {**old, **meta}.items():
            proto.metadata_props.add(key=k, value=v)
        path = Path(path)
        if path.resolve() == self.path.resolve():
            raise ValueError(f"{path}: refusing to overwrite the graph being exported")
        with atomic_open(path, "wb") as f:
            f.write(proto.SerializeToString())
        return path

    def close(self) -> None:
        self.session = None


# ------------------------------------------------------------------------------------------------ OpenVINO
def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise ImportError("backend='openvino' needs openvino: pip install 'rtseg[deploy]'") from None
    return ov


#: int8 OpenVINO graphs run their float (unquantized) layers at bf16 on AVX512-BF16/AMX CPUs (else f32)
INT8_FLOAT_BF16 = True
#: OpenVINO's CPU pinning (on by default for LATENCY on Linux)
CPU_PINNING = bool(int(os.environ.get("RTSEG_OV_PINNING", "0")))


class OpenVINOBackend(Backend):
    """An OpenVINO model (``ov.Model``, or a path to an ``.xml`` IR / ``.onnx`` file) on the CPU plugin.

    ``precision``: ``fp32`` runs with f32 inference precision, ``bf16`` with the plugin's bf16 inference
    precision (AVX512-BF16/AMX CPUs), ``int8`` (the graph's own FakeQuantize ops) with its float layers at
    bf16 on such CPUs and f32 elsewhere (:data:`INT8_FLOAT_BF16`). ``static``: a fixed input size
    ``(H, W)`` -- the graph is reshaped to batch 1 at that size (the fastest form for the CPU plugin)."""

    name = "openvino"

    def __init__(self, model: Any, precision: str = "fp32", threads: int | None = None, labels_out: bool = False,
                 static: tuple[int, int] | None = None) -> None:
        ov = _ov()
        self.ir = ov.Core().read_model(str(model)) if isinstance(model, (str, os.PathLike)) else model
        if static is not None:
            self.ir.reshape([1, 3, *static])
        super().__init__(precision, threads or os.cpu_count() or 1, labels_out,
                         batch1=self.ir.inputs[0].get_partial_shape()[0].is_static
                         and self.ir.inputs[0].get_partial_shape()[0].get_length() == 1)
        # explicit: on bf16-capable CPUs the plugin's default inference precision is bf16, not f32. int8 graphs:
        # the layers left in float (the FakeQuantize-free ones) run at bf16 where the CPU has it -- measured on
        # essnet_dg2s_cs_camvid at 512x1024: 4.7 % faster, fp32 agreement 99.01 -> 98.99 % (docs/deploy.md)
        self.float_precision = self.inference_precision(precision)
        try:
            self.compiled = ov.Core().compile_model(self.ir, "CPU", self._config("LATENCY"))
        except RuntimeError:
            if precision != "int8" or self.float_precision != "bf16":
                raise
            # OpenVINO 2026.4's CPU plugin fails to compile some int8 graphs at bf16 ("object is not
            # initialized"; e.g. essnet_dg2s with decoder.layers.1 left in float): those run their float layers at f32
            self.float_precision = "f32"
            self.compiled = ov.Core().compile_model(self.ir, "CPU", self._config("LATENCY"))
        self.request = self.compiled.create_infer_request()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "inference_precision": self.float_precision}

    def _config(self, hint: str, **extra: Any) -> dict[str, Any]:
        return {"INFERENCE_PRECISION_HINT": self.float_precision, "ENABLE_CPU_PINNING": CPU_PINNING,
                "PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": self.threads, **extra}

    @staticmethod
    def inference_precision(precision: str) -> str:
        """The CPU plugin's ``INFERENCE_PRECISION_HINT`` to try first for an rtseg precision (the one a built
        backend runs: :attr:`float_precision`)."""
        if precision == "bf16" or (precision == "int8" and INT8_FLOAT_BF16 and cpu_supports_bf16()):
            return "bf16"
        return "f32"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        return self.request.get_output_tensor(0).data.copy()

    def profile(self, x: np.ndarray) -> dict[str, float]:
        req = _ov().Core().compile_model(self.ir, "CPU", self._config("LATENCY", PERF_COUNT=True)).create_infer_request()
        for _ in range(2):
            req.infer({0: x})
        acc: dict[str, float] = defaultdict(float)
        for p in req.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                acc[f"{p.node_type}:{p.exec_type.split('_')[0]}"] += p.real_time.total_seconds() * 1e3
        return _sorted_ms(acc)

    def concurrent(self, streams: int) -> Callable[[np.ndarray], np.ndarray] | None:
        """The graph compiled again with ``streams`` CPU streams over the same :attr:`threads` (each stream
        ``threads // streams`` threads, its own infer request per calling thread), so ``streams`` frames run
        at once with no intra-op synchronisation between the cores: the video pipeline's form. None for
        ``streams < 2`` or fewer threads than streams."""
        streams = int(streams)
        if streams < 2 or self.threads < streams:
            return None
        ov = _ov()
        compiled = ov.Core().compile_model(self.ir, "CPU", self._config("THROUGHPUT", NUM_STREAMS=streams))
        local = threading.local()

        def run(batch: np.ndarray) -> np.ndarray:
            req = getattr(local, "request", None)
            if req is None:
                req = local.request = compiled.create_infer_request()
            if self.batch1 and batch.shape[0] != 1:
                return np.concatenate([run(batch[i : i + 1]) for i in range(batch.shape[0])])
            req.infer({0: batch})
            return req.get_output_tensor(0).data.copy()

        run.compiled = compiled  # type: ignore[attr-defined]  # kept alive with the function
        return run

    def throughput(self, x: np.ndarray, batch: int, seconds: float) -> float:
        """OpenVINO's THROUGHPUT hint with an async request queue (``batch`` is not used)."""
        ov = _ov()
        compiled = ov.Core().compile_model(self.ir, "CPU", self._config("THROUGHPUT"))
        n_req = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        queue = ov.AsyncInferQueue(compiled, n_req)
        for _ in range(n_req):
            queue.start_async({0: x})
        queue.wait_all()
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            queue.start_async({0: x})
            done += 1
        queue.wait_all()
        return done / (time.perf_counter() - t0)

    def save(self, path: str | os.PathLike, meta: dict[str, str]) -> Path:
        return self.save_model(self.ir, path, meta)

    @staticmethod
    def save_model(ir: Any, path: str | os.PathLike, meta: dict[str, str]) -> Path:
        """IR ``path`` (``.xml``) and its ``.bin``, written under temporary names and renamed into place
        (``.bin`` first, so a finished ``.xml`` always has its weights)."""
        ov = _ov()
        path = Path(path)
        if path.suffix != ".xml":
            raise ValueError(f"{path}: an OpenVINO IR path must end in .xml (the weights go to a .bin beside it)")
        ir = ir.clone()
        for k, v in meta.items():
            ir.set_rt_info(v, ["rtseg", k])
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
            tmp_xml = Path(tmp) / path.name
            ov.save_model(ir, str(tmp_xml), compress_to_fp16=False)  # fp32 weights; precision is a runtime choice
            os.replace(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(tmp_xml, path)
        return path

    def close(self) -> None:
        self.request = self.compiled = None


# ------------------------------------------------------------------------------------------------ artifacts
def open_artifact(path: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                  ) -> tuple[Backend, ArtifactInfo]:
    """Open an exported rtseg file: ``.xml`` in OpenVINO, ``.onnx`` in ONNX Runtime (``backend="auto"``; an
    ``.onnx`` file also runs in ``"openvino"``). Returns (backend, validated metadata); no calibration runs,
    an int8 file is already quantized."""
    info = read_metadata(path)
    suffix = Path(path).suffix.lower()
    name = ARTIFACT_SUFFIXES[suffix] if backend == "auto" else backend
    if name == "torch" or (suffix == ".xml" and name != "openvino"):
        raise ValueError(f"{path}: a {suffix} artifact runs in "
                         f"{'openvino' if suffix == '.xml' else 'onnxruntime or openvino'}, not {name}")
    threads = int(threads or os.cpu_count() or 1)
    if name == "openvino":
        return OpenVINOBackend(path, info.precision, threads, info.labels_out, static=info.size), info
    if info.precision == "bf16":
        raise ValueError(f"{path}: a bf16 artifact runs in openvino (ONNX Runtime has no bf16 CPU convolutions)")
    return OnnxRuntimeBackend(path, info.precision, threads, info.labels_out), info
