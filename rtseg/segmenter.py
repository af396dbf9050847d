"""``rtseg.Segmenter``: one inference front end over PyTorch, ONNX Runtime and OpenVINO, fp32 / bf16 / int8.

Every backend runs the deploy form of the model (:func:`rtseg.export.deploy_model`: BatchNorm folded,
grouped convs) with the normalisation inside the graph, so a backend only has to be fed ``B x 3 x H x W``
float RGB in [0, 1]. Images are resized to the model input size when one is fixed (``size=``) and the
logits are resized back to each image's own resolution before the argmax, so ``predict`` always returns
labels at the source resolution. Without a fixed size the graphs are shape-dynamic and images are padded
to a multiple of ``size_divisor`` with the per-channel mean (zero after normalisation -- exactly what the
PyTorch model's own padding does), then cropped back.

INT8 is post-training static quantization by the runtime's own tool: OpenVINO NNCF ``nncf.quantize`` or
ONNX Runtime ``quantize_static`` (QDQ, per-channel weights), calibrated on ``calibration`` images. Layers
named in ``int8_keep_float`` (module paths) stay in float; with ``int8_control`` (labelled images) OpenVINO
runs NNCF's accuracy-controlled quantization, which returns the most sensitive layers to float until the mIoU
on those images drops by at most ``int8_max_drop``. Shipped weights record the layers it chose
(``int8_keep_float`` in ``rtseg/weights/index.json``) and use them by default.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BACKENDS", "PRECISIONS", "Segmenter", "cpu_supports_bf16", "load_images"]

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
#: Operator types int8 leaves in floating point (per runtime's op naming). Transposed convs: quantizing them
#: (and so their input, per tensor) cost the trained ``essnet_dg2s_cs_camvid`` 20 mIoU points on CamVid val
#: in OpenVINO (57.4 -> 37.5); kept in float the drop is 1.3 points, for ~3 % more int8 latency
#: (docs/deploy.md). ESSNet's decoder feeds the encoder output, whose channels span very different ranges,
#: into a 1x1 transposed conv; one per-tensor int8 scale for that tensor erases the small-range channels.
#: The in-graph argmax (ReduceMax/Equal, ArgMax): quantizing the logits it reads creates ties between classes.
INT8_KEEP_FLOAT = {"openvino": ("ConvolutionBackpropData", "ReduceMax", "Equal"), "onnx": ("ConvTranspose", "ArgMax")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

ImageLike = np.ndarray | str | os.PathLike


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16), which bf16 inference needs."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _read_image(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def load_images(source: Any, limit: int | None = None) -> list[np.ndarray]:
    """``H x W x 3`` uint8 RGB images from a folder, glob pattern, list of paths / arrays or a ``SegDataset``.

    With ``limit``, at most ``limit`` images spread evenly over the source (calibration wants variety).
    """
    from rtseg.data.base import SegDataset

    def pick(n: int) -> list[int]:
        if limit is None or n <= limit:
            return list(range(n))
        return sorted({int(i) for i in np.linspace(0, n - 1, limit)})

    if isinstance(source, SegDataset):
        return [source[i][0] for i in pick(len(source))]
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files = [p]
        else:
            files = sorted(Path(f) for f in glob.glob(str(source), recursive=True))
        if not files:
            raise FileNotFoundError(f"{source}: no images found")
        return [_read_image(files[i]) for i in pick(len(files))]
    items = list(source)
    if not items:
        raise ValueError("no images given")
    return [_as_image(items[i]) for i in pick(len(items))]


def _as_image(img: ImageLike) -> np.ndarray:
    if isinstance(img, (str, os.PathLike)):
        return _read_image(img)
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got an array of shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0-255), got dtype {a.dtype}")
    return a


def _labelled_pairs(source: Any) -> list[tuple[np.ndarray, Any]]:
    """(H x W x 3 uint8 image, H x W label) pairs from a ``SegDataset`` or an iterable of pairs."""
    from rtseg.data.base import SegDataset

    pairs = [source[i][:2] for i in range(len(source))] if isinstance(source, SegDataset) else list(source)
    if not pairs:
        raise ValueError("int8_control: no labelled images given")
    return [(_as_image(im), lab) for im, lab in pairs]


def _quantized_ops(ir: Any) -> set[str]:
    """Names of the operations of an OpenVINO model that read a FakeQuantize output (run in int8)."""
    out = set()
    for op in ir.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            continue
        if any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs()):
            out.add(op.get_friendly_name())
    return out


@contextlib.contextmanager
def _working_dir(path: str | os.PathLike) -> Any:
    """``contextlib.chdir`` for Python 3.10."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class Segmenter:
    """Segment images with an rtseg model on a chosen runtime and numeric precision.

    Args:
        weights: rtseg checkpoint path, shipped weights name, or a model from :func:`rtseg.create_model`.
        backend: ``"torch"`` (eager, BatchNorm folded), ``"onnxruntime"`` or ``"openvino"`` (CPU).
        precision: ``"fp32"``; ``"bf16"`` (torch autocast or OpenVINO's bf16 inference precision; needs a CPU
            with AVX512-BF16/AMX); ``"int8"`` (onnxruntime / openvino, needs ``calibration``).
        size: fixed model input ``(H, W)``: images are resized to it and the logits back. ``None`` runs every
            image at its own resolution (shape-dynamic graphs).
        threads: CPU threads (default: all cores).
        calibration: int8 calibration images (folder, glob, list of paths/arrays, or a ``SegDataset``).
        calibration_size: how many calibration images to use (spread evenly over ``calibration``).
        graph_argmax: put the argmax inside the runtime graph, which then returns ``uint8`` labels instead
            of float logits (writing and reading back the full-resolution logits is a large share of the
            memory traffic: OpenVINO int8 ``essnet_dg2s`` at 512x1024 62.3 ms with logits out, 48.3 ms with
            the argmax inside, interleaved A/B in docs/deploy.md). Labels of a resized input
            are brought back to the source resolution by nearest-neighbour resizing instead of resizing the
            logits; :meth:`logits` is then unavailable.
        int8_keep_float: module paths (``"encoder.initial_block"``, ``"decoder.layers.1.conv1L_1"``) whose
            layers stay in float in the int8 graph, on both int8 backends. ``None``: the list recorded for
            shipped weights loaded by name (``rtseg.load_model("essnet_dg2s_cs_camvid")`` or the name itself;
            found by ``int8_control`` when they were shipped), else none.
        int8_control: labelled images (a ``SegDataset`` or ``(image, label)`` pairs; not the images you
            report accuracy on) for OpenVINO's accuracy-controlled quantization: NNCF returns the layers
            whose quantization costs most mIoU on them to float until the drop is at most
            ``int8_max_drop``; the chosen modules are appended to :attr:`int8_keep_float` (reuse them at
            other sizes without re-running the search, which takes minutes).
        int8_max_drop: the allowed mIoU drop on ``int8_control`` as a fraction (0.01 = 1 point).

    ``predict(image)`` maps an ``H x W x 3`` uint8 RGB image (or a path) to ``H x W`` uint8 labels;
    a list (or a ``B x H x W x 3`` array) gives a list (``B x H x W`` array). ``logits`` returns float32
    ``C x H x W`` per image, at the source resolution.
    """

    def __init__(
        self,
        weights: str | os.PathLike | nn.Module,
        backend: str = "torch",
        precision: str = "fp32",
        size: tuple[int, int] | None = None,
        threads: int | None = None,
        calibration: Any = None,
        calibration_size: int = 32,
        graph_argmax: bool = False,
        int8_keep_float: Sequence[str] | None = None,
        int8_control: Any = None,
        int8_max_drop: float = 0.01,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        if precision == "int8" and backend == "torch":
            raise ValueError("precision='int8' runs on backend='openvino' or 'onnxruntime' (quantized by their tools)")
        if precision == "bf16" and backend == "onnxruntime":
            raise ValueError("ONNX Runtime's CPU provider has no bf16 convolutions: use backend='openvino' or 'torch'")
        if precision == "bf16" and not cpu_supports_bf16():
            raise ValueError("precision='bf16' needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has none")
        if precision == "int8" and calibration is None:
            raise ValueError("precision='int8' needs calibration images (calibration=folder, glob, list or dataset)")
        if int8_control is not None and (precision != "int8" or backend != "openvino"):
            raise ValueError("int8_control (accuracy-controlled quantization) needs backend='openvino', precision='int8'")
        if not 0 <= int8_max_drop < 1:
            raise ValueError(f"int8_max_drop is a fraction of mIoU (0.01 = 1 point), got {int8_max_drop}")
        if isinstance(weights, nn.Module):
            model = weights
        else:
            from rtseg.checkpoint import load_model

            model = load_model(weights)
        shipped = (getattr(model, "rtseg_meta", None) or {}).get("shipped_as")
        if int8_keep_float is None and shipped and precision == "int8":  # the layers its accuracy-controlled int8 kept in float
            from rtseg.hub import weights_info

            int8_keep_float = (weights_info().get(shipped) or {}).get("int8_keep_float")
        self.model = model.eval()
        self.backend, self.precision = backend, precision
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.graph_argmax = bool(graph_argmax)
        self.threads = int(threads or os.cpu_count() or 1)
        self.num_classes = int(model.num_classes)
        meta = getattr(model, "rtseg_meta", None) or {}
        self.class_names = meta.get("class_names")
        self.divisor = int(getattr(model, "size_divisor", 1))
        #: module paths whose layers run in float in the int8 graph (given, recorded, or found by int8_control)
        self.int8_keep_float: list[str] = list(int8_keep_float or [])
        if self.int8_keep_float:
            self._check_modules(self.int8_keep_float)
        self.int8_control, self.int8_max_drop = int8_control, float(int8_max_drop)
        self.mean = model.mean.detach().flatten().float() if hasattr(model, "mean") else torch.zeros(3)
        if self.size is not None and (self.size[0] % self.divisor or self.size[1] % self.divisor):
            raise ValueError(f"size {self.size[0]}x{self.size[1]} must be a multiple of {self.divisor} for "
                             f"{getattr(model, 'rtseg_name', type(model).__name__)}")
        self._tmp = tempfile.mkdtemp(prefix="rtseg-segmenter-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        t0 = time.perf_counter()
        calib = None
        if precision == "int8":
            calib = [self._prep(torch.from_numpy(np.require(im, requirements="W")).permute(2, 0, 1)[None].float().div_(255),
                                self.size or self._export_size())[0].numpy()
                     for im in load_images(calibration, calibration_size)]
        self._run = getattr(self, f"_build_{backend}")(calib)
        self.int8_control = None  # used up by the build; do not keep the labelled images alive
        self.build_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------------------------ backends
    def _default_size(self) -> tuple[int, int]:
        from rtseg.models._registry import model_info

        name = getattr(self.model, "rtseg_name", None)
        return tuple(model_info(name).default_size) if name else (512, 1024)

    def _export_size(self) -> tuple[int, int]:
        return self.size or tuple(-(-s // self.divisor) * self.divisor for s in self._default_size())

    def _deploy_modules(self) -> set[str]:
        if getattr(self, "_modules", None) is None:
            from rtseg.export import deploy_model

            self._modules = {n for n, _ in deploy_model(self.model).named_modules() if n}
        return self._modules

    def _check_modules(self, paths: Sequence[str]) -> None:
        known = self._deploy_modules()
        bad = [p for p in paths if p not in known]
        if bad:
            raise ValueError(f"int8_keep_float: {bad} are not modules of this model's deploy form "
                             f"(module paths like 'encoder.initial_block')")

    def _module_prefixes(self, node: str) -> list[str]:
        """Exported node name (``/model/encoder/layers.1/conv/Conv``; ``/model`` is the in-graph argmax
        wrapper) -> the module paths it may sit in, outermost first (``encoder``, ``encoder.layers.1``, ...).
        "layers.1" is one name component but two module-path components, hence joined prefixes."""
        parts = node.strip("/").split("/")
        if self.graph_argmax and parts and parts[0] == "model":
            parts = parts[1:]
        return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]

    def _kept_float(self, names: Sequence[str]) -> list[str]:
        """The exported node names that belong to an :attr:`int8_keep_float` module or one inside it."""
        keep = set(self.int8_keep_float)
        return [n for n in names if any(m in keep for m in self._module_prefixes(n))]

    def _node_module(self, node: str) -> str | None:
        """Exported node name -> the deepest module path it belongs to (None if outside any)."""
        known = self._deploy_modules()
        return next((m for m in reversed(self._module_prefixes(node)) if m in known), None)

    def _build_torch(self, calib: Any) -> Any:
        from rtseg.export import deploy_model

        net = deploy_model(self.model)
        torch.set_num_threads(self.threads)
        bf16 = self.precision == "bf16"

        argmax = self.graph_argmax

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = net(torch.from_numpy(x))
                return out.argmax(1).to(torch.uint8).numpy() if argmax else out.float().numpy()

        self.deploy_model = net
        return run

    def _onnx(self) -> Path:
        from rtseg.export import export_onnx

        return export_onnx(self.model, Path(self._tmp) / "model.onnx", size=self._export_size(),
                           dynamic=self.size is None, dynamic_batch=True, fold=True, argmax=self.graph_argmax,
                           argmax_form="max_equal" if self.backend == "openvino" else "argmax")

    def _build_onnxruntime(self, calib: list[np.ndarray] | None) -> Any:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("backend='onnxruntime' needs onnxruntime: pip install 'rtseg[deploy]'") from None
        path = self._onnx()
        if calib is not None:
            path = self._quantize_ort(path, calib)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        self.model_path = path
        return lambda x: sess.run(None, {name: x})[0]

    def _quantize_ort(self, path: Path, calib: list[np.ndarray]) -> Path:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
            shape_inference,
        )

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(calib)

            def get_next(self) -> dict[str, np.ndarray] | None:
                x = next(self.it, None)
                return None if x is None else {"image": x}

        pre = Path(self._tmp) / "model.pre.onnx"
        out = Path(self._tmp) / "model.int8.onnx"
        # ORT's symbolic shape inference drops "sym_shape_infer_temp.onnx" (+ external data) into the
        # *current* directory when it cannot infer every shape: run inside our temp folder instead.
        with _working_dir(self._tmp):
            try:  # ONNX Runtime's recommended pre-pass (shape inference, graph clean-up) before quantizing
                shape_inference.quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
            except Exception:  # noqa: BLE001 -- optional step: quantize the unprocessed graph instead
                pre = path
            import onnx

            nodes = onnx.load(str(pre)).graph.node
            keep_float = [n.name for n in nodes if n.op_type in INT8_KEEP_FLOAT["onnx"]]
            keep_float += self._kept_float([n.name for n in nodes if n.op_type not in INT8_KEEP_FLOAT["onnx"]])
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep_float)
        return out

    def _build_openvino(self, calib: list[np.ndarray] | None) -> Any:
        try:
            import openvino as ov
        except ImportError:
            raise ImportError("backend='openvino' needs openvino: pip install 'rtseg[deploy]'") from None
        ir = ov.convert_model(str(self._onnx()))
        if self.size is not None:  # fully static graph at batch 1: the fastest form for the CPU plugin
            ir.reshape([1, 3, *self.size])
        if calib is not None:
            try:
                import nncf
            except ImportError:
                raise ImportError("int8 with openvino needs nncf: pip install 'rtseg[deploy]'") from None
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            # Activation ranges from histograms (NNCF's MSE-optimal clipping) rather than the default mean of
            # per-image min/max: essnet_dg2s_cs_camvid int8 -1.42 -> -0.39 mIoU on CamVid val (docs/deploy.md)
            kw = {"subset_size": len(calib), "preset": nncf.QuantizationPreset.MIXED,
                  "ignored_scope": nncf.IgnoredScope(
                      types=list(INT8_KEEP_FLOAT["openvino"]), validate=False,
                      names=self._kept_float([op.get_friendly_name() for op in ir.get_ordered_ops()]))}
            adv = AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)
            if self.int8_control is None:
                ir = nncf.quantize(ir, nncf.Dataset(calib), advanced_parameters=adv, **kw)
            else:
                ir = self._quantize_with_accuracy_control(nncf, ir, calib, adv, kw)
        config = {
            # explicit: on bf16-capable CPUs the plugin's default inference precision is bf16, not f32
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads,
        }
        self.ov_model = ir
        self.compiled = compiled = ov.Core().compile_model(ir, "CPU", config)
        request = compiled.create_infer_request()
        static = self.size is not None

        def run(x: np.ndarray) -> np.ndarray:
            if static and x.shape[0] != 1:
                return np.concatenate([run(x[i : i + 1]) for i in range(x.shape[0])])
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()

        return run

    def _quantize_with_accuracy_control(self, nncf: Any, ir: Any, calib: list[np.ndarray], adv: Any,
                                        kw: dict[str, Any]) -> Any:
        """NNCF ``quantize_with_accuracy_control`` with mIoU on the labelled ``int8_control`` images as the
        metric; the layers it returns to float are added to :attr:`int8_keep_float` (as module paths)."""
        from rtseg.eval.metrics import SegMetrics

        items = []  # (model input, label tensor at the source resolution, source size, resized?)
        for im, lab in _labelled_pairs(self.int8_control):
            x = torch.from_numpy(np.require(im, requirements="W")).permute(2, 0, 1)[None].float().div_(255)
            h, w = x.shape[-2:]
            lab = torch.as_tensor(np.asarray(lab))
            if tuple(lab.shape) != (h, w):
                raise ValueError(f"int8_control: label {tuple(lab.shape)} and image {(h, w)} sizes differ")
            xin, resized = self._prep(x, self.size or self._export_size())
            items.append((xin.numpy(), lab, (h, w), resized))

        def validate(compiled: Any, data: Any) -> float:
            m = SegMetrics(self.num_classes)
            for xin, lab, (h, w), resized in data:
                out = torch.from_numpy(np.ascontiguousarray(compiled(xin)[0]))
                out = self._post(out, h, w, resized)
                m.update(out[0] if self.graph_argmax else out[0].argmax(0), lab)
            return float(m.compute()["miou"])

        q = nncf.quantize_with_accuracy_control(
            ir.clone(), nncf.Dataset(calib), nncf.Dataset(items, lambda it: it[0]), validate, max_drop=self.int8_max_drop,
            advanced_quantization_parameters=adv, **kw)
        # layers quantized by plain NNCF with the same settings but left in float here: the reverted ones
        quantized = _quantized_ops(nncf.quantize(ir.clone(), nncf.Dataset(calib), advanced_parameters=adv, **kw))
        reverted = sorted(quantized - _quantized_ops(q))
        mods = {m for m in (self._node_module(n) for n in reverted) if m} | set(self.int8_keep_float)
        # the outermost modules only ("encoder.layers.0" already keeps "encoder.layers.0.conv" in float)
        outer = {m for m in mods if not any(m.startswith(o + ".") for o in mods)}
        self.int8_keep_float += sorted(outer - set(self.int8_keep_float))
        return q

    # ------------------------------------------------------------------------------------ inference
    def _post(self, out: torch.Tensor, h: int, w: int, resized: bool) -> torch.Tensor:
        """Runtime output at the model size -> the source resolution (labels or logits)."""
        if self.graph_argmax:
            if resized:
                return F.interpolate(out[:, None].float(), size=(h, w), mode="nearest-exact")[:, 0].to(torch.uint8)
            return out[..., :h, :w]
        if resized:
            return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out[..., :h, :w]

    def _prep(self, x: torch.Tensor, size: tuple[int, int] | None) -> tuple[torch.Tensor, bool]:
        """Resize ``B x 3 x H x W`` to ``size`` (if given) or pad to the divisor with the mean; -> (x, resized)."""
        h, w = x.shape[-2:]
        if size is not None and (h, w) != tuple(size):
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True), True
        if self.backend != "torch":
            ph, pw = (-h) % self.divisor, (-w) % self.divisor
            if ph or pw:
                out = self.mean.view(1, 3, 1, 1).expand(x.shape[0], 3, h + ph, w + pw).clone()
                out[..., :h, :w] = x
                return out, False
        return x, False

    def forward_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` float RGB in [0, 1] -> ``B x C x H x W`` float32 logits at the same resolution
        (with ``graph_argmax``: ``B x H x W`` uint8 labels)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected B x 3 x H x W, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xin, resized = self._prep(x.float().contiguous(), self.size)
        out = torch.from_numpy(np.ascontiguousarray(self._run(xin.numpy())))
        return self._post(out, h, w, resized)

    def _batches(self, images: Any) -> tuple[list[np.ndarray], bool, bool]:
        """-> (list of H x W x 3 uint8, single?, stacked array input?)."""
        if isinstance(images, (str, os.PathLike)):
            return [_as_image(images)], True, False
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                return [_as_image(images)], True, False
            if images.ndim == 4:
                return [_as_image(a) for a in images], False, True
            raise ValueError(f"expected H x W x 3 or B x H x W x 3 images, got shape {images.shape}")
        items = [_as_image(a) for a in images]
        return items, False, False

    def _each(self, images: Any, labels: bool) -> Any:
        items, single, stacked = self._batches(images)
        outs = []
        for im in items:
            x = torch.from_numpy(np.require(im, requirements="W")).permute(2, 0, 1)[None].float().div_(255.0)
            out = self.forward_tensor(x)[0]  # labels already with graph_argmax (logits() refuses that case)
            outs.append(out.argmax(0).to(torch.uint8).numpy() if labels and not self.graph_argmax else out.numpy())
        if single:
            return outs[0]
        return np.stack(outs) if stacked else outs

    def predict(self, images: Any) -> Any:
        """``H x W x 3`` uint8 RGB (or a path) -> ``H x W`` uint8 labels; lists / ``B x H x W x 3`` arrays map
        to lists / ``B x H x W`` arrays."""
        return self._each(images, labels=True)

    def logits(self, images: Any) -> Any:
        """Like :meth:`predict` but float32 ``C x H x W`` class scores at the source resolution."""
        if self.graph_argmax:
            raise ValueError("this Segmenter was built with graph_argmax=True: its graph returns labels, not "
                             "logits (build one without graph_argmax for class scores)")
        return self._each(images, labels=False)

    def as_module(self) -> nn.Module:
        """An ``nn.Module`` view (``B x 3 x H x W`` [0, 1] -> logits) for :func:`rtseg.evaluate`; with
        ``graph_argmax`` the "logits" are the one-hot labels (same argmax, so the same scores)."""
        return _SegmenterModule(self)

    def info(self) -> dict[str, Any]:
        """Backend, precision, size, threads and model, for logs and benchmark records."""
        return {"model": getattr(self.model, "rtseg_name", type(self.model).__name__), "backend": self.backend,
                "precision": self.precision, "size": list(self.size) if self.size else None,
                "threads": self.threads, "graph_argmax": self.graph_argmax, "build_s": round(self.build_seconds, 2),
                **({"int8_keep_float": list(self.int8_keep_float)} if self.precision == "int8" else {})}

    def close(self) -> None:
        """Delete the exported graphs of this segmenter (also done when it is garbage-collected)."""
        self._finalizer()

    def __repr__(self) -> str:
        i = self.info()
        return f"Segmenter({i['model']}, backend={i['backend']}, precision={i['precision']}, size={i['size']})"


class _SegmenterModule(nn.Module):
    def __init__(self, seg: Segmenter) -> None:
        super().__init__()
        self.seg = seg
        self.num_classes = seg.num_classes
        self.rtseg_name = f"{seg.info()['model']}[{seg.backend}/{seg.precision}]"
        self.rtseg_meta = getattr(seg.model, "rtseg_meta", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.seg.forward_tensor(x.cpu())
        if self.seg.graph_argmax:  # labels -> one-hot scores, so evaluate's argmax recovers them exactly
            return F.one_hot(out.long(), self.num_classes).permute(0, 3, 1, 2).float()
        return out
