"""``rtseg.Segmenter``: one inference front over runtime backends (PyTorch, ONNX Runtime, OpenVINO), fp32 /
bf16 / int8, from a checkpoint, a model, or an exported rtseg artifact file.

The front validates inputs and does the pre- and post-processing; a :class:`rtseg.deploy.backends.Backend`
object runs the graph. Every backend runs the deploy form of the model (:func:`rtseg.deploy.deploy_model`:
BatchNorm folded, grouped convs) with the normalisation inside the graph, so a backend only has to be fed
``B x 3 x H x W`` float RGB in [0, 1]. Images are resized to the model input size when one is fixed
(``size=``) and the logits are resized back to each image's own resolution before the argmax, so ``predict``
always returns labels at the source resolution. Without a fixed size the graphs are shape-dynamic and images
are padded to a multiple of ``size_divisor`` with the per-channel mean (zero after normalisation -- exactly
what the PyTorch model's own padding does), then cropped back.

``Segmenter("model.xml")`` / ``Segmenter("model.onnx")`` runs a file written by ``rtseg export`` with the
runtime its suffix names, its size, classes, palette and precision read from the file: an int8 file is
already quantized, nothing is calibrated.

INT8 is post-training static quantization by the runtime's own tool (:mod:`rtseg.deploy.quantize`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtseg.data.inputs import as_rgb_arrays, is_single
from rtseg.deploy.artifact import ArtifactInfo, is_artifact_path
from rtseg.deploy.backends import (
    BACKENDS,
    Backend,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    cpu_supports_bf16,
    open_artifact,
    resolve_backend,
)
from rtseg.deploy.images import labelled_pairs, load_images
from rtseg.eval.result import SegResult

__all__ = ["BACKENDS", "PRECISIONS", "Segmenter", "cpu_supports_bf16", "palette_for"]

PRECISIONS = ("fp32", "bf16", "int8")
#: int8 float modules of a checkpoint without a recorded list and without ``int8_keep_float``: "high-res"
#: keeps the convs that read at least half the input resolution in float
#: (:func:`rtseg.deploy.quantize.high_resolution_convs`; measured in docs/deploy.md), "none" keeps none
INT8_DEFAULT_RULE = "high-res"


def _dataset_palette(meta: dict[str, Any]) -> Any:
    ds = str(meta.get("dataset") or "").lower()
    if ds == "camvid":
        from rtseg.data.camvid import CAMVID_PALETTE

        return CAMVID_PALETTE
    if ds == "synthetic":
        from rtseg.data.synthetic import SYNTHETIC_PALETTE

        return SYNTHETIC_PALETTE
    if ds == "cityscapes":
        try:
            from rtseg.data.cityscapes import cityscapes_meta

            return cityscapes_meta().palette
        except Exception:  # noqa: BLE001 -- cityscapesscripts is optional; fall back to generated colours
            return None
    return None


def palette_for(model: Any, num_classes: int) -> np.ndarray:
    """``num_classes x 3`` uint8 colours: the checkpoint's palette, its dataset's, or a generated one."""
    from rtseg.data.base import default_palette

    meta = getattr(model, "rtseg_meta", None) or {}
    pal = np.asarray(meta["palette"], np.uint8) if meta.get("palette") is not None else _dataset_palette(meta)
    if pal is None or len(pal) < num_classes:
        base = default_palette(num_classes)
        if pal is not None:
            base[: len(pal)] = pal
        pal = base
    return np.asarray(pal, np.uint8)[:num_classes]


def _to_tensor(im: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``1 x 3 x H x W`` float in [0, 1]. In NumPy (one thread, same values as
    torch's ``float().div(255)``): torch's intra-op threads spinning next to the runtime's own pool made this
    step 8x slower on a 2-core CPU."""
    return torch.from_numpy(np.divide(im.transpose(2, 0, 1)[None], np.float32(255.0), dtype=np.float32))


def labels_of(logits: torch.Tensor) -> torch.Tensor:
    """``C x H x W`` logits -> ``H x W`` uint8 argmax (the first maximal class, as ``torch.argmax``). NumPy's
    argmax: torch's argmax over the channel dim took 95 ms at 12 x 360 x 480 where NumPy takes 23 ms."""
    return torch.from_numpy(np.argmax(logits.numpy(), axis=0).astype(np.uint8))


def _check_args(backend: str, precision: str, calibration: Any, int8_control: Any, int8_max_drop: float) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and backend == "torch":
        raise ValueError("precision='int8' runs on backend='openvino' or 'onnxruntime' (quantized by their tools)")
    if precision == "bf16" and backend == "onnxruntime":
        raise ValueError("ONNX Runtime's CPU provider has no bf16 convolutions: use backend='openvino' or 'torch'")
    if precision == "bf16" and not cpu_supports_bf16():
        raise ValueError("precision='bf16' needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has none")
    if precision == "int8" and calibration is None:
        raise ValueError("precision='int8' needs calibration images (calibration=folder, glob, list or dataset), "
                         "or an int8 file written by `rtseg export --precision int8`")
    if isinstance(int8_control, str) and int8_control != "fp32":
        raise ValueError(f"int8_control: labelled images or 'fp32' (labels from the fp32 graph), got {int8_control!r}")
    if int8_control is not None and (precision != "int8" or backend != "openvino"):
        raise ValueError("int8_control (accuracy-controlled quantization) needs backend='openvino', precision='int8'")
    if not 0 <= int8_max_drop < 1:
        raise ValueError(f"int8_max_drop is a fraction of mIoU (0.01 = 1 point), got {int8_max_drop}")


class Segmenter:
    """Segment images with an rtseg model on a chosen runtime and numeric precision.

    Args:
        weights: rtseg checkpoint path, shipped weights name, a model from :func:`rtseg.create_model`, or an
            artifact written by ``rtseg export`` (``.xml`` OpenVINO IR or ``.onnx``; its precision, size and
            in-graph argmax come from the file).
        backend: ``"auto"`` (default: the fastest installed runtime -- OpenVINO, then ONNX Runtime, then
            torch; for an artifact, the runtime its suffix names), ``"torch"`` (eager, BatchNorm folded),
            ``"onnxruntime"`` or ``"openvino"`` (CPU). :attr:`backend` says which one runs.
        precision: ``"fp32"`` (default); ``"bf16"`` (torch autocast or OpenVINO's bf16 inference precision;
            needs a CPU with AVX512-BF16/AMX); ``"int8"`` (onnxruntime / openvino, needs ``calibration``).
            For an artifact: ``None`` or the file's own precision.
        size: fixed model input ``(H, W)``: images are resized to it and the logits back. ``None`` runs every
            image at its own resolution (shape-dynamic graphs). An artifact's fixed size is used by default.
        threads: CPU threads (default: all cores).
        calibration: int8 calibration images (folder, glob, list of paths/arrays, or a ``SegDataset``).
        calibration_size: how many calibration images to use (spread evenly over ``calibration``).
        graph_argmax: put the argmax inside the runtime graph, which then returns ``uint8`` labels instead
            of float logits (less memory traffic: OpenVINO int8 ``essnet_dg2s`` at 512x1024 62.3 ms with
            logits out, 48.3 ms with the argmax inside, docs/deploy.md). Labels of a resized input are
            brought back to the source resolution by nearest-neighbour resizing; :meth:`logits` is then
            unavailable.
        int8_keep_float: module paths (``"encoder.initial_block"``) whose layers stay in float in the int8
            graph, on both int8 backends. ``None``: the list recorded for shipped weights loaded by name,
            else none.
        int8_control: labelled images (a ``SegDataset`` or ``(image, label)`` pairs) for OpenVINO's
            accuracy-controlled quantization: NNCF returns the layers whose quantization costs most mIoU on
            them to float until the drop is at most ``int8_max_drop``; the chosen modules are appended to
            :attr:`int8_keep_float`. ``"fp32"``: no labels needed -- the calibration images, labelled by the
            fp32 graph itself, and the mIoU of int8 against those labels (int8's job is to reproduce fp32).
        int8_max_drop: the allowed mIoU drop on ``int8_control`` as a fraction (0.01 = 1 point).

    ``predict(image)`` maps an ``H x W x 3`` uint8 RGB image (or a path) to ``H x W`` uint8 labels;
    a list (or a ``B x H x W x 3`` array) gives a list (``B x H x W`` array). ``logits`` returns float32
    ``C x H x W`` per image, at the source resolution. :attr:`speed` holds the time spent in pre-processing,
    the graph and post-processing (ms, summed over calls).
    """

    def __init__(
        self,
        weights: str | os.PathLike | nn.Module,
        backend: str = "auto",
        precision: str | None = None,
        size: tuple[int, int] | None = None,
        threads: int | None = None,
        calibration: Any = None,
        calibration_size: int = 32,
        graph_argmax: bool = False,
        int8_keep_float: Sequence[str] | None = None,
        int8_control: Any = None,
        int8_max_drop: float = 0.01,
    ) -> None:
        self.threads = int(threads or os.cpu_count() or 1)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.speed = {"pre": 0.0, "infer": 0.0, "post": 0.0, "images": 0}
        self._speed_lock = threading.Lock()
        self.artifact: ArtifactInfo | None = None
        self._tmp = tempfile.mkdtemp(prefix="rtseg-segmenter-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        t0 = time.perf_counter()
        if is_artifact_path(weights):
            if calibration is not None or int8_control is not None or int8_keep_float:
                raise ValueError(f"{weights}: an exported artifact is already built; calibration / int8 options "
                                 f"apply when exporting (`rtseg export --precision int8 --calib ...`)")
            self._open_artifact(weights, backend, precision, graph_argmax)
        else:
            precision = precision or "fp32"
            backend = resolve_backend(backend, precision)
            _check_args(backend, precision, calibration, int8_control, int8_max_drop)
            self._init_model(weights, backend, precision, graph_argmax, int8_keep_float)
            self.int8_control, self.int8_max_drop = int8_control, float(int8_max_drop)
            calib = None if precision != "int8" else self._model_inputs(load_images(calibration, calibration_size))
            self.calibration_count = len(calib or [])
            self.runtime: Backend = getattr(self, f"_build_{backend}")(calib)
            self.int8_control = None  # used up by the build; do not keep the labelled images alive
        self.build_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------------------------ set-up
    def _open_artifact(self, path: str | os.PathLike, backend: str, precision: str | None, argmax: bool) -> None:
        self.runtime, info = open_artifact(path, backend, self.threads)
        if precision not in (None, info.precision):
            raise ValueError(f"{path}: the file is {info.precision}; precision={precision!r} needs its own export")
        if self.size is not None and info.size is not None and self.size != info.size:
            raise ValueError(f"{path}: the graph's input is fixed at {info.size[0]}x{info.size[1]}, not "
                             f"{self.size[0]}x{self.size[1]} (export it with --dynamic or at that size)")
        self.artifact, self.model = info, None
        self.backend, self.precision = self.runtime.name, info.precision
        self.size = self.size or info.size
        self.graph_argmax = info.labels_out  # the file decides (graph_argmax= is ignored for artifacts)
        self.num_classes, self.divisor = info.num_classes, info.divisor
        self.class_names = info.get("class_names")
        self.int8_keep_float = list(info.get("int8_keep_float") or [])
        self.mean = torch.tensor(info.get("mean") or [0.0, 0.0, 0.0]).float()
        pal = info.get("palette")
        self.palette = np.asarray(pal, np.uint8) if pal else palette_for(None, self.num_classes)
        self.name = info["rtseg_model"]

    def _init_model(self, weights: Any, backend: str, precision: str, argmax: bool,
                    keep_float: Sequence[str] | None) -> None:
        if isinstance(weights, nn.Module):
            model = weights
        else:
            from rtseg.checkpoint import load_model

            model = load_model(weights)
        meta = getattr(model, "rtseg_meta", None) or {}
        recorded = None
        if keep_float is None and meta.get("shipped_as") and precision == "int8":
            from rtseg.hub import weights_info  # the layers its accuracy-controlled int8 kept in float

            recorded = keep_float = (weights_info().get(meta["shipped_as"]) or {}).get("int8_keep_float")
        self.model = model.eval()
        self.backend, self.precision, self.graph_argmax = backend, precision, bool(argmax)
        self.num_classes = int(model.num_classes)
        self.class_names = meta.get("class_names")
        self.palette = palette_for(model, self.num_classes)
        self.name = getattr(model, "rtseg_name", type(model).__name__)
        self.divisor = int(getattr(model, "size_divisor", 1))
        self.mean = model.mean.detach().flatten().float() if hasattr(model, "mean") else torch.zeros(3)
        if self.size is not None and (self.size[0] % self.divisor or self.size[1] % self.divisor):
            raise ValueError(f"size {self.size[0]}x{self.size[1]} must be a multiple of {self.divisor} for {self.name}")
        self._scopes = self._deployed = None
        #: how :attr:`int8_keep_float` was chosen: "given", "recorded" (shipped weights) or "high-res" (the rule)
        self.int8_rule = "recorded" if recorded is not None else "given" if keep_float is not None else "high-res"
        if keep_float is None and precision == "int8" and INT8_DEFAULT_RULE == "high-res":
            from rtseg.deploy.quantize import high_resolution_convs

            keep_float = high_resolution_convs(self._deploy_form(), self.export_size())
        #: module paths whose layers run in float in the int8 graph (given, recorded, the default rule, or
        #: found by int8_control)
        self.int8_keep_float: list[str] = list(keep_float or [])
        if self.int8_keep_float:
            self.float_scopes().check(self.int8_keep_float)

    def _model_inputs(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self.preprocess(_to_tensor(im), self.size or self.export_size())[0].numpy() for im in images]

    def export_size(self) -> tuple[int, int]:
        """The graph's trace size: :attr:`size`, else the model's default size rounded up to the divisor."""
        if self.size is not None:
            return self.size
        from rtseg.models._registry import model_info

        name = getattr(self.model, "rtseg_name", None)
        default = tuple(model_info(name).default_size) if name else (512, 1024)
        return tuple(-(-s // self.divisor) * self.divisor for s in default)

    def float_scopes(self) -> Any:
        """:class:`rtseg.deploy.quantize.FloatScopes` of this model's deploy form (module <-> node names)."""
        if self._scopes is None:
            from rtseg.deploy.quantize import FloatScopes

            self._scopes = FloatScopes((n for n, _ in self._deploy_form().named_modules() if n), self.graph_argmax)
        return self._scopes

    def _deploy_form(self) -> nn.Module:
        """The model's deploy form, built once, for the int8 rules to read (module names, a forward pass at
        the export size); the backends export their own copy."""
        if self._deployed is None:
            from rtseg.deploy.exporter import deploy_model

            self._deployed = deploy_model(self.model)
        return self._deployed

    # ------------------------------------------------------------------------------------ backends
    def _build_torch(self, calib: Any) -> Backend:
        from rtseg.deploy.exporter import deploy_model

        return TorchBackend(deploy_model(self.model), self.precision, self.threads, self.graph_argmax)

    def _onnx(self, subpixel: bool = False, phase_pool: bool = False) -> Path:
        from rtseg.deploy.exporter import OPENVINO_ARGMAX_FORM, export_onnx

        return export_onnx(self.model, Path(self._tmp) / "model.onnx", size=self.export_size(),
                           dynamic=self.size is None, dynamic_batch=True, fold=True, argmax=self.graph_argmax,
                           argmax_form=OPENVINO_ARGMAX_FORM if self.backend == "openvino" else "argmax",
                           subpixel=subpixel, phase_pool=phase_pool)

    def _build_onnxruntime(self, calib: list[np.ndarray] | None) -> Backend:
        from rtseg.deploy.backends import _ort

        _ort()  # a clear ImportError before exporting
        path = self._onnx()
        if calib is not None:
            from rtseg.deploy.quantize import quantize_onnx

            path = quantize_onnx(path, calib, Path(self._tmp), self.float_scopes(), self.int8_keep_float)
        return OnnxRuntimeBackend(path, self.precision, self.threads, self.graph_argmax)

    def _build_openvino(self, calib: list[np.ndarray] | None) -> Backend:
        from rtseg.deploy.backends import _ov
        from rtseg.deploy.quantize import INT8_PHASE_POOL, INT8_SUBPIXEL

        # int8: the kernel = stride transposed convs as Conv2d -> DepthToSpace (exact), kept in float like every
        # transposed conv (the type rule); the int8 ESSNet-DG2S graph runs 1.06-1.14x faster (docs/deploy.md)
        subpixel = self._subpixel_modules() if calib is not None and INT8_SUBPIXEL else []
        # and the image's 2x2 max-pools as phases -> ReduceMax (exact; no 16-channel reorder of the image)
        ir = _ov().convert_model(str(self._onnx(subpixel=bool(subpixel),
                                                phase_pool=calib is not None and INT8_PHASE_POOL)))
        if self.size is not None:  # fully static graph at batch 1: the fastest form for the CPU plugin
            ir.reshape([1, 3, *self.size])
        if calib is not None:
            from rtseg.deploy.quantize import quantize_openvino

            control = (None if self.int8_control is None else self._fp32_control(ir, calib)
                       if isinstance(self.int8_control, str) else self._control_items())
            given = list(self.int8_keep_float)
            ir, kept = quantize_openvino(
                ir, calib, self.float_scopes(), given + [m for m in subpixel if m not in given], control=control,
                metric=self._control_miou, max_drop=self.int8_max_drop)
            self.int8_keep_float = [m for m in kept if m in given or m not in subpixel]
        return OpenVINOBackend(ir, self.precision, self.threads, self.graph_argmax)

    def _subpixel_modules(self) -> list[str]:
        """Module paths of the transposed convs the int8 OpenVINO graph writes in sub-pixel form."""
        from rtseg.nn.fuse import SubPixelConv2d

        return [n for n, m in self._deploy_form().named_modules() if SubPixelConv2d.waste_free(m)]

    def _fp32_control(self, ir: Any, calib: list[np.ndarray]) -> list[tuple]:
        """Control items from the calibration inputs labelled by the fp32 graph ``ir`` (``int8_control="fp32"``)."""
        fp32 = OpenVINOBackend(ir, "fp32", self.threads, self.graph_argmax)
        items = []
        for xin in calib:
            out = fp32.run(xin)[0]
            lab = torch.from_numpy(np.ascontiguousarray(out if self.graph_argmax else out.argmax(0)).astype(np.int64))
            items.append((xin, lab, tuple(xin.shape[-2:]), False))
        fp32.close()
        return items

    def _control_items(self) -> list[tuple]:
        """(model input, label tensor at the source resolution, source size, resized?) per labelled image."""
        items = []
        for im, lab in labelled_pairs(self.int8_control):
            x = _to_tensor(im)
            h, w = x.shape[-2:]
            lab = torch.as_tensor(np.asarray(lab))
            if tuple(lab.shape) != (h, w):
                raise ValueError(f"int8_control: label {tuple(lab.shape)} and image {(h, w)} sizes differ")
            xin, resized = self.preprocess(x, self.size or self.export_size())
            items.append((xin.numpy(), lab, (h, w), resized))
        return items

    def _control_miou(self, compiled: Any, data: Any) -> float:
        from rtseg.eval.metrics import SegMetrics

        m = SegMetrics(self.num_classes)
        for xin, lab, (h, w), resized in data:
            out = self.postprocess(torch.from_numpy(np.ascontiguousarray(compiled(xin)[0])), h, w, resized)
            m.update(out[0] if self.graph_argmax else out[0].argmax(0), lab)
        return float(m.compute()["miou"])

    # ------------------------------------------------------------------------------------ inference
    def preprocess(self, x: torch.Tensor, size: tuple[int, int] | None) -> tuple[torch.Tensor, bool]:
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

    def postprocess(self, out: torch.Tensor, h: int, w: int, resized: bool) -> torch.Tensor:
        """Runtime output at the model size -> the source resolution (labels or logits)."""
        if self.graph_argmax:
            if resized:
                return F.interpolate(out[:, None].float(), size=(h, w), mode="nearest-exact")[:, 0].to(torch.uint8)
            return out[..., :h, :w]
        if resized:
            return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out[..., :h, :w]

    def forward_tensor(self, x: torch.Tensor, run: Callable[[np.ndarray], np.ndarray] | None = None) -> torch.Tensor:
        """``B x 3 x H x W`` float RGB in [0, 1] -> ``B x C x H x W`` float32 logits at the same resolution
        (with ``graph_argmax``: ``B x H x W`` uint8 labels). ``run``: the graph's run function (default
        ``self.runtime.run``; :meth:`concurrent` passes a thread-safe one)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected B x 3 x H x W, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        t0 = time.perf_counter()
        xin, resized = self.preprocess(x.float().contiguous(), self.size)
        t1 = time.perf_counter()
        out = torch.from_numpy(np.ascontiguousarray((run or self.runtime.run)(xin.numpy())))
        t2 = time.perf_counter()
        out = self.postprocess(out, h, w, resized)
        self._add_speed(pre=(t1 - t0) * 1e3, infer=(t2 - t1) * 1e3, post=(time.perf_counter() - t2) * 1e3,
                        images=x.shape[0])
        return out

    def _add_speed(self, **parts: float) -> None:
        with self._speed_lock:  # predict may run in several threads at once (:meth:`concurrent`)
            for k, v in parts.items():
                self.speed[k] += v

    def _each(self, images: Any, labels: bool, run: Callable[[np.ndarray], np.ndarray] | None = None) -> Any:
        # paths, H x W [x C] arrays, PIL images, lists of them or B x H x W x 3 batches (rtseg.data.inputs)
        items, single = as_rgb_arrays(images), is_single(images)
        stacked = isinstance(images, np.ndarray) and images.ndim == 4
        outs = []
        for im in items:
            out = self.forward_tensor(_to_tensor(im), run)[0]  # labels already with graph_argmax (logits() refuses)
            if labels and not self.graph_argmax:
                t0 = time.perf_counter()
                out = labels_of(out)
                self._add_speed(post=(time.perf_counter() - t0) * 1e3)
            outs.append(out.numpy())
        if single:
            return outs[0]
        return np.stack(outs) if stacked else outs

    def concurrent(self, streams: int) -> tuple[Callable[[Any], Any], int]:
        """``(predict_fn, n)``: a :meth:`predict` that ``n`` threads may call at once, on the same graph
        compiled for ``streams`` parallel requests over this Segmenter's threads (OpenVINO streams, each on
        its share of the cores: no intra-op synchronisation, so frames keep the cores busy while other
        stages run beside them -- :func:`rtseg.deploy.run_pipeline`'s ``workers``). Runtimes without such a
        form, or ``streams < 2``, give ``(self.predict, 1)``. Compiles a second graph (about a second)."""
        run = self.runtime.concurrent(streams)
        if run is None:
            return self.predict, 1
        def predict(images: Any) -> Any:
            return self._each(images, labels=True, run=run)

        predict.run = run  # type: ignore[attr-defined]  # the graph alone (``predict``'s graph-FPS check)
        return predict, int(streams)

    def predict(self, images: Any) -> Any:
        """``H x W x 3`` uint8 RGB (or a path, a PIL image, a grey / RGBA / float array) -> ``H x W`` uint8
        labels; lists / ``B x H x W x 3`` arrays map to lists / ``B x H x W`` arrays."""
        return self._each(images, labels=True)

    def __call__(self, images: Any, logits: bool = False) -> Any:
        """Like :meth:`predict` but a :class:`rtseg.eval.result.SegResult` per image (``.labels``, ``.overlay(alpha)``,
        ``.save(path)``, ``.shares()``; ``.logits`` / ``.scores`` with ``logits=True``): one, or a list."""
        items, single = as_rgb_arrays(images), is_single(images)
        scores = self.logits(items) if logits else None
        labels = self.predict(items) if scores is None else [s.argmax(0).astype(np.uint8) for s in scores]
        names = list(self.class_names or [f"class {i}" for i in range(self.num_classes)])
        out = [SegResult(lab, names, self.palette, image=im, logits=None if scores is None else scores[i])
               for i, (im, lab) in enumerate(zip(items, labels))]
        return out[0] if single else out

    def logits(self, images: Any) -> Any:
        """Like :meth:`predict` but float32 ``C x H x W`` class scores at the source resolution."""
        if self.graph_argmax:
            raise ValueError("this Segmenter's graph returns labels, not logits (graph_argmax / an --argmax "
                             "export): build one without the in-graph argmax for class scores")
        return self._each(images, labels=False)

    def reset_speed(self) -> None:
        """Zero :attr:`speed`."""
        self.speed = {"pre": 0.0, "infer": 0.0, "post": 0.0, "images": 0}

    def as_module(self) -> nn.Module:
        """An ``nn.Module`` view (``B x 3 x H x W`` [0, 1] -> logits) for :func:`rtseg.eval.loop`; with
        ``graph_argmax`` the "logits" are the one-hot labels (same argmax, so the same scores)."""
        return _SegmenterModule(self)

    def info(self) -> dict[str, Any]:
        """Backend, precision, size, threads and model, for logs and benchmark records."""
        return {"model": self.name, "backend": self.backend, "precision": self.precision,
                "size": list(self.size) if self.size else None, "threads": self.threads,
                "graph_argmax": self.graph_argmax, "build_s": round(self.build_seconds, 2),
                **({"artifact": True} if self.artifact is not None else {}),
                **({"int8_keep_float": list(self.int8_keep_float),
                    "int8_rule": getattr(self, "int8_rule", "artifact")} if self.precision == "int8" else {})}

    def close(self) -> None:
        """Release the runtime and delete the exported graphs (also done when garbage-collected)."""
        self.runtime.close()
        self._finalizer()

    def __repr__(self) -> str:
        i = self.info()
        return f"Segmenter({i['model']}, backend={i['backend']}, precision={i['precision']}, size={i['size']})"


class _SegmenterModule(nn.Module):
    def __init__(self, seg: Segmenter) -> None:
        super().__init__()
        self.seg = seg
        self.num_classes = seg.num_classes
        self.rtseg_name = f"{seg.name}[{seg.backend}/{seg.precision}]"
        self.rtseg_meta = getattr(seg.model, "rtseg_meta", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.seg.forward_tensor(x.cpu())
        if self.seg.graph_argmax:  # labels -> one-hot scores, so evaluate's argmax recovers them exactly
            return F.one_hot(out.long(), self.num_classes).permute(0, 3, 1, 2).float()
        return out
