"""Export rtseg models to ONNX, OpenVINO IR and TorchScript deployment artifacts, and verify every export.

``export(model, path, format, precision=...)`` writes an artifact: fp32 graphs for every format, an int8
graph (quantized once, here, on ``calibration`` images) for ONNX and OpenVINO, and bf16 for OpenVINO (the
IR is the fp32 graph tagged to run at the plugin's bf16 inference precision). Every ONNX / IR file carries
the self-describing metadata of :mod:`rtseg.deploy.artifact`, which ``rtseg.Segmenter(path)``,
``rtseg predict --weights path`` and ``rtseg bench path`` read.

Every exported graph is the *deploy form* of the model (:func:`deploy_model`: masked gradual-grouping
convs turned into grouped convs by ``rtseg.nn.grouping.convert_to_deploy``, BatchNorm folded
by :func:`rtseg.nn.fuse.fold_batchnorm`), with the input normalisation inside the graph:

- input ``image``: ``B x 3 x H x W`` float32 RGB in [0, 1];
- output ``logits`` (``B x C x H x W`` float32) or, with ``argmax=True``, ``labels`` (``B x H x W`` uint8).

Dynamic graphs (``dynamic=True``) take any batch, height and width that are multiples of the model's
``size_divisor`` (recorded in the graph's metadata): the model's pad-to-stride step is a Python-level
branch that the tracer resolves once, so callers pad (``rtseg.Segmenter`` does).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rtseg.deploy.artifact import ARTIFACT_VERSION, INPUT_CONVENTION, encode
from rtseg.hub import sha256 as file_sha256
from rtseg.utils.io import atomic_open

__all__ = [
    "ARGMAX_FORMS",
    "FORMATS",
    "FORMAT_PRECISIONS",
    "ArgmaxHead",
    "ExportError",
    "ExportResult",
    "deploy_model",
    "export",
    "export_onnx",
    "export_openvino",
    "export_torchscript",
    "graph_metadata",
    "source_sha256",
    "verify_export",
    "verify_onnx",
]

DEFAULT_OPSET = 17
#: format -> default file suffix
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}


class ExportError(RuntimeError):
    """The model cannot be exported (declared by its registry entry, or the exporter failed)."""


#: how the in-graph argmax is written: ``argmax`` (one ONNX ``ArgMax``), ``max_equal`` (``ReduceMax``, ``Equal``,
#: ``Where``, ``ReduceMin``) or ``running_max`` (a running maximum over the classes: per class one ``Greater``,
#: ``Max`` and ``Where`` on H x W planes). Same labels, ties included (the first maximal class). OpenVINO's CPU
#: plugin runs ``ArgMax`` as a ``TopK`` that took 35 % of ``essnet_dg2s``'s int8 time at 512x1024; in an
#: interleaved A/B (512x1024, p50) OpenVINO int8 66.2 -> 48.3 ms and fp32 129.4 -> 106.5 ms with ``max_equal``,
#: while ONNX Runtime is faster with ``ArgMax`` (108.9 vs 138.5 ms). ``max_equal``'s two reductions over the
#: blocked channel layout still cost ~13 % of the int8 graph; ``running_max`` reads each class plane once
#: (OpenVINO fuses the element-wise chain), see :data:`OPENVINO_ARGMAX_FORM` and docs/deploy.md.
ARGMAX_FORMS = ("argmax", "max_equal", "running_max")
#: the form OpenVINO graphs get (ONNX Runtime graphs: ``argmax``)
OPENVINO_ARGMAX_FORM = "running_max"
#: in-graph argmax on the phases of a final sub-pixel output conv (:class:`ArgmaxHead`); off: on the logits
ARGMAX_ON_PHASES = True


class ArgmaxHead(nn.Module):
    """Wraps a model so the graph returns uint8 labels (B x H x W) instead of float logits.

    With an ``example`` input, a model whose output is the ``pixel_shuffle`` of a
    :class:`~rtseg.nn.fuse.SubPixelConv2d` (the output conv of the int8 OpenVINO graphs, :func:`deploy_model`
    with ``subpixel``) gets its argmax taken on that conv's ``C*s*s`` phase channels (classes x phases) and
    only the uint8 labels interleaved (``DepthToSpace``): the same labels (ties included: the classes of one
    pixel are compared in the same order), without writing and re-reading the full-resolution float logits.
    The int8 ESSNet-DG2S graph at 512x1024 runs 1.07x faster so (docs/deploy.md).
    """

    def __init__(self, model: nn.Module, form: str = "argmax", example: torch.Tensor | None = None) -> None:
        super().__init__()
        if form not in ARGMAX_FORMS:
            raise ExportError(f"unknown argmax form {form!r}; choose from {', '.join(ARGMAX_FORMS)}")
        self.model, self.form = model, form
        #: module path of the SubPixelConv2d whose shuffled output the model returns (None: argmax on the logits)
        self.phases_of = final_subpixel(model, example) if example is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.phases_of is None:
            return self._labels(self.model(x))
        sub = self.model.get_submodule(self.phases_of)
        sub.emit_phases = True
        try:
            y = self.model(x)
        finally:
            sub.emit_phases = False
        r = sub.stride
        lab = self._labels(y.unflatten(1, (y.shape[1] // (r * r), r * r)))  # B x s*s x h x w
        return torch.nn.functional.pixel_shuffle(lab, r).squeeze(1)

    def _labels(self, y: torch.Tensor) -> torch.Tensor:
        """uint8 index of the largest entry along dim 1 (the first one on ties), dim 1 dropped."""
        if self.form == "argmax":
            return y.argmax(1).to(torch.uint8)
        c = y.shape[1]
        if self.form == "running_max":
            best = y[:, 0]
            label = torch.zeros(best.shape, dtype=torch.uint8, device=y.device)
            for k in range(1, c):  # strictly greater: a tie keeps the earlier class, as argmax does
                v = y[:, k]
                label = torch.where(v > best, torch.tensor(k, dtype=torch.uint8, device=y.device), label)
                best = torch.maximum(best, v)
            return label
        index = torch.arange(c, dtype=y.dtype, device=y.device).view(1, c, *([1] * (y.ndim - 2)))
        first = torch.where(y == y.amax(1, keepdim=True), index, torch.full_like(index, c))
        return first.amin(1).to(torch.uint8)  # the smallest maximal class, as argmax returns


def final_subpixel(model: nn.Module, example: torch.Tensor) -> str | None:
    """Path of the :class:`~rtseg.nn.fuse.SubPixelConv2d` whose output tensor ``model`` returns unchanged on
    ``example`` (checked by identity with a forward hook), or None (no such module, or ops after it)."""
    from rtseg.nn.fuse import SubPixelConv2d

    subs = [(n, m) for n, m in model.named_modules() if isinstance(m, SubPixelConv2d)]
    if not subs:
        return None
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o)) for n, m in subs]
    try:
        with torch.no_grad():
            y = model(example)
    finally:
        for h in hooks:
            h.remove()
    return next((n for n, o in outs.items() if o is y), None)


def _check_exportable(model: nn.Module) -> None:
    from rtseg.models._registry import model_info

    name = getattr(model, "rtseg_name", None)
    if name is not None and not model_info(name).exportable:
        raise ExportError(f"model {name!r} declares it cannot be exported to ONNX")


def _name(model: nn.Module) -> str:
    return getattr(model, "rtseg_name", None) or type(model).__name__


def deploy_model(model: nn.Module, subpixel: bool = False) -> nn.Module:
    """Eval-mode inference form of ``model`` (a copy): grouped convs, folded BatchNorm and the model's
    :meth:`~rtseg.models.SegmentationModel.export_form` operators; same outputs up to float rounding.

    :func:`rtseg.nn.grouping.convert_to_deploy` turns masked (gradual-grouping) convs into grouped ones and
    folds BatchNorm. Registry attributes (``rtseg_name``...) are kept. ``subpixel``: the transposed convs
    whose sub-pixel form adds no multiply-adds (kernel = stride: the ESSNet/ERFNet output convs) become
    ``Conv2d -> pixel_shuffle`` (:func:`rtseg.nn.fuse.transposed_to_subpixel`) -- what OpenVINO int8 graphs
    use (docs/deploy.md); fp32 graphs keep ``ConvTranspose`` (slower on ONNX Runtime, no gain on OpenVINO).
    """
    from rtseg.nn.fuse import transposed_to_subpixel
    from rtseg.nn.grouping import convert_to_deploy

    out = convert_to_deploy(model).eval()  # works on a copy
    if callable(getattr(out, "export_form", None)):
        out.export_form()  # e.g. ENet: mask unpooling instead of ScatterElements
    if subpixel:
        transposed_to_subpixel(out, inplace=True, waste_free=True)
    for attr in ("rtseg_name", "rtseg_kwargs", "rtseg_meta"):
        if hasattr(model, attr) and not hasattr(out, attr):
            setattr(out, attr, getattr(model, attr))
    return out


def graph_metadata(model: nn.Module, size: tuple[int, int] | None, argmax: bool, precision: str = "fp32",
                   **extra: Any) -> dict[str, str]:
    """String metadata stored in exported graphs (:mod:`rtseg.deploy.artifact`), so a runtime knows how to
    feed and read them: classes, palette, input size and convention, output kind, precision, provenance."""
    from rtseg._version import __version__
    from rtseg.deploy.segmenter import palette_for

    meta = getattr(model, "rtseg_meta", {}) or {}
    nc = int(getattr(model, "num_classes", 0))
    mean = model.mean.detach().flatten().float().tolist() if hasattr(model, "mean") else [0.0, 0.0, 0.0]
    return encode({
        "rtseg_artifact": ARTIFACT_VERSION,
        "rtseg_version": __version__,
        "rtseg_model": _name(model),
        "num_classes": nc,
        "class_names": meta.get("class_names"),
        "palette": palette_for(model, nc).tolist() if nc else None,
        "size_divisor": int(getattr(model, "size_divisor", 1)),
        "input_size": "dynamic" if size is None else f"{size[0]}x{size[1]}",
        "input": INPUT_CONVENTION,
        "mean": mean,
        "output": "labels" if argmax else "logits",
        "precision": precision,
        "int8_keep_float": extra.pop("int8_keep_float", None),
        "agreement_fp32": extra.pop("agreement_fp32", None),
        "calibration": extra.pop("calibration", None),
        **extra,
    })


def source_sha256(weights: Any) -> str | None:
    """SHA-256 of the checkpoint behind ``weights`` (a path or a shipped weights name); None for a model."""
    if isinstance(weights, nn.Module):
        return None
    p = Path(weights)
    if not p.is_file():
        from rtseg.hub import resolve_weights

        try:
            p = resolve_weights(str(weights))
        except Exception:  # noqa: BLE001 -- a registry name with random weights has no checkpoint
            return None
    return file_sha256(p)


def _example(size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0))


def _check_size(model: nn.Module, size: tuple[int, int], dynamic: bool) -> None:
    d = int(getattr(model, "size_divisor", 1))
    if dynamic and (size[0] % d or size[1] % d):
        raise ExportError(f"a dynamic export is traced at a size divisible by {d}; got {size[0]}x{size[1]}")


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (512, 1024),
                opset: int = DEFAULT_OPSET, dynamic: bool = False, argmax: bool = False,
                fold: bool = False, dynamic_batch: bool = False, argmax_form: str = "argmax",
                meta: dict[str, Any] | None = None, subpixel: bool = False, phase_pool: bool = False) -> Path:
    """Write ``model`` (eval mode) as ONNX to ``path`` atomically.

    Graph input ``image``: ``B x 3 x H x W`` float32 RGB in [0, 1] (normalisation is inside the graph);
    output ``logits`` (``B x C x H x W`` float32) or, with ``argmax=True``, ``labels`` (``B x H x W`` uint8).
    ``dynamic=True`` makes batch, height and width symbolic (sides must then be multiples of
    ``size_divisor``); ``dynamic_batch=True`` only the batch. ``fold=True`` exports :func:`deploy_model`
    of ``model`` (``export`` always does). ``argmax_form`` picks how the argmax is written (:data:`ARGMAX_FORMS`).
    ``meta``: extra :func:`graph_metadata` entries (e.g. ``source_sha256``). ``subpixel`` (with ``fold``): see
    :func:`deploy_model`. ``phase_pool``: the 2x2 max-pools of the image as phases -> ``ReduceMax``
    (:func:`rtseg.nn.fuse.image_pools_to_phase_max`, exact; the OpenVINO int8 graphs' form).
    """
    _check_exportable(model)
    if opset < 17:
        raise ExportError(f"opset {opset} is too old: rtseg exports opset >= 17")
    _check_size(model, size, dynamic)
    src = model
    model = deploy_model(model, subpixel=subpixel) if fold else model.eval()
    x = _example(size)
    if phase_pool:
        from rtseg.nn.fuse import image_pools_to_phase_max

        model = image_pools_to_phase_max(model, x, inplace=fold)[0]  # a copy of a model that is not ours
    net = ArgmaxHead(model, argmax_form, example=x if ARGMAX_ON_PHASES else None) if argmax else model
    out_name = "labels" if argmax else "logits"
    axes = ({"image": {0: "batch", 2: "height", 3: "width"}, out_name: {0: "batch", 1 + (not argmax): "height",
             2 + (not argmax): "width"}} if dynamic else None)
    if dynamic_batch and not dynamic:
        axes = {"image": {0: "batch"}, out_name: {0: "batch"}}
    path = Path(path)
    try:
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The TorchScript-based exporter handles every rtseg model (ENet's max-unpool scatter
                # included) at opset 17 and is several times faster than the dynamo exporter; the latter
                # is used where the former is unavailable.
                try:
                    torch.onnx.export(net, (x,), str(raw), opset_version=opset, dynamo=False,
                                      input_names=["image"], output_names=[out_name], dynamic_axes=axes,
                                      do_constant_folding=True)
                except (TypeError, ImportError):
                    prog = torch.onnx.export(net, (x,), None, opset_version=max(opset, 18), dynamo=True,
                                             input_names=["image"], output_names=[out_name],
                                             dynamic_axes=axes)
                    prog.save(str(raw))
            proto = onnx.load(str(raw))
            for k, v in graph_metadata(src, None if dynamic else size, argmax, **(meta or {})).items():
                proto.metadata_props.add(key=k, value=v)
            with atomic_open(path, "wb") as f:
                f.write(proto.SerializeToString())
    except ExportError:
        raise
    except Exception as e:  # exporter failures become one clear error naming the model
        raise ExportError(f"ONNX export of {_name(model)} failed: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    return path


def export_openvino(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (512, 1024),
                    dynamic: bool = False, argmax: bool = False, fold: bool = True,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write OpenVINO IR (``path`` = ``.xml``; the weights go to the ``.bin`` beside it), via ONNX, fp32 weights.

    Same graph contract as :func:`export_onnx`. Needs the ``openvino`` package (``pip install rtseg[deploy]``).
    """
    ov = _import("openvino", "OpenVINO export")
    path = Path(path)
    if path.suffix != ".xml":
        raise ExportError(f"{path}: an OpenVINO IR path must end in .xml (the weights go to a .bin beside it)")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "m.onnx", size=size, dynamic=dynamic, argmax=argmax, fold=fold,
                                argmax_form=OPENVINO_ARGMAX_FORM)  # OpenVINO runs ArgMax (TopK) slowly
        ir = ov.convert_model(str(onnx_path))
        from rtseg.deploy.backends import OpenVINOBackend

        # save() writes the .xml/.bin under temporary names and renames them into place
        OpenVINOBackend.save_model(ir, path, graph_metadata(model, None if dynamic else size, argmax, **(meta or {})))
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (512, 1024),
                       dynamic: bool = False, argmax: bool = False, fold: bool = True) -> Path:
    """Write a traced, frozen TorchScript module (``torch.jit.load``-able without rtseg), same contract."""
    _check_size(model, size, dynamic)
    net = deploy_model(model) if fold else model.eval()
    net = ArgmaxHead(net) if argmax else net
    path = Path(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(net.eval(), _example(size), check_trace=False))
        meta = graph_metadata(model, None if dynamic else size, argmax)
        with atomic_open(path, "wb") as f:
            torch.jit.save(traced, f, _extra_files={"rtseg.json": json.dumps(meta)})
    except Exception as e:
        raise ExportError(f"TorchScript export of {_name(model)} failed: {str(e).strip().splitlines()[0]}") from e
    return path


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs the {module!r} package: pip install 'rtseg[deploy]'") from None


def _run_exported(path: Path, fmt: str, image: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        ort = _import("onnxruntime", "running an ONNX graph")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: image})[0]
    if fmt == "openvino":
        ov = _import("openvino", "running an OpenVINO IR")
        # f32 explicitly: on CPUs with bf16 support the plugin's default inference precision is bf16
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled(image)[0]
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path)).eval()(torch.from_numpy(image)).numpy()
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def verify_export(model: nn.Module, path: str | os.PathLike, fmt: str = "onnx",
                  size: tuple[int, int] | None = None, image: torch.Tensor | None = None) -> dict[str, Any]:
    """Run the exported file in its runtime (ONNX Runtime / OpenVINO fp32 / TorchScript) and compare with
    the original (un-fused) PyTorch ``model`` on the same ``1 x 3 x H x W`` input.

    Returns ``max_abs`` (largest logit difference; None for argmax graphs), ``agreement`` (fraction of
    pixels with the same label) and ``size``.
    """
    if image is None:
        if size is None:
            raise ValueError("verify_export needs size or image")
        image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    out = _run_exported(Path(path), fmt, image.numpy())
    with torch.inference_mode():
        ref = model.eval()(image).numpy()
    ref_lab = ref.argmax(1)
    res: dict[str, Any] = {"size": list(image.shape[-2:])}
    if out.ndim == 3:  # in-graph argmax
        res.update(max_abs=None, agreement=float((out == ref_lab).mean()))
    else:
        res.update(max_abs=float(np.abs(out - ref).max()), agreement=float((out.argmax(1) == ref_lab).mean()))
    return res


def verify_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] | None = None,
                image: torch.Tensor | None = None) -> dict[str, Any]:
    """:func:`verify_export` for an ONNX file in ONNX Runtime (kept for existing callers)."""
    return verify_export(model, path, "onnx", size=size, image=image)


@dataclass
class ExportResult:
    """What :func:`export` wrote and how well it matches PyTorch (``checks``: one per verified size;
    ``agreement_fp32``: pixel agreement of a bf16 / int8 artifact's labels with fp32, measured at export)."""

    path: str
    format: str
    model: str
    size: list[int] | None
    argmax: bool
    fused: bool
    precision: str = "fp32"
    checks: list[dict[str, Any]] = field(default_factory=list)
    agreement_fp32: float | None = None
    int8_keep_float: list[str] = field(default_factory=list)
    build_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: format -> precisions it can be exported at (bf16 on OpenVINO: the fp32 IR run at bf16 inference precision)
FORMAT_PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8"), "torchscript": ("fp32",)}


def _check_request(format: str, precision: str, calibration: Any) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if precision not in FORMAT_PRECISIONS[format]:
        why = " (ONNX Runtime has no bf16 CPU convolutions: use --format openvino)" if precision == "bf16" else ""
        raise ExportError(f"{format} exports precision {' / '.join(FORMAT_PRECISIONS[format])}, not {precision}{why}")
    if precision == "int8" and calibration is None:
        raise ExportError("an int8 export needs calibration images (--calib FOLDER): int8 is calibrated once, here")


def _verify_fp32(model: nn.Module, res: ExportResult, size: tuple[int, int], dynamic: bool,
                 min_agreement: float) -> None:
    sizes = [size]
    if dynamic:
        d = int(getattr(model, "size_divisor", 1))
        sizes.append((size[0] + 2 * d, max(d, size[1] - d)))
    for s in sizes:
        check = verify_export(model, res.path, res.format, size=s)
        res.checks.append(check)
        if check["agreement"] < min_agreement:
            raise ExportError(f"{res.path}: the {res.format} graph agrees with PyTorch on only "
                              f"{100 * check['agreement']:.3f}% of the pixels at {s[0]}x{s[1]}")


def _agreement_images(calibration: Any, size: tuple[int, int], n: int = 8) -> list[np.ndarray]:
    from rtseg.deploy.images import load_images

    if calibration is not None:
        return load_images(calibration, n)
    from rtseg.deploy.bench import bench_image

    return [bench_image(size, seed) for seed in range(100, 100 + n)]


def _export_built(model: nn.Module, path: Path, format: str, size: tuple[int, int], dynamic: bool, argmax: bool,
                  precision: str, seg_kw: dict[str, Any], meta: dict[str, Any], min_agreement: float) -> ExportResult:
    """bf16 / int8: build the graph once in a :class:`Segmenter` (int8: calibrate it), save it with its
    metadata, and check that the file gives the labels of the in-process graph."""
    import time

    from rtseg.deploy.segmenter import Segmenter

    t0 = time.perf_counter()
    backend = "openvino" if format == "openvino" else "onnxruntime"
    seg = Segmenter(model, backend=backend, precision=precision, size=None if dynamic else size,
                    graph_argmax=argmax, **seg_kw)
    ref = Segmenter(model, backend="torch", precision="fp32", size=None if dynamic else size)
    images = _agreement_images(seg_kw.get("calibration"), size)
    built = [seg.predict(im) for im in images]
    agreement = float(np.mean([(a == ref.predict(im)).mean() for a, im in zip(built, images)]))
    ref.close()
    calib = None
    if precision == "int8":
        from rtseg.deploy.quantize import INT8_SMOOTH_QUANT

        calib = {"images": seg.calibration_count, "source": str(seg_kw["calibration"]),
                 "smooth_quant_alpha": INT8_SMOOTH_QUANT if backend == "openvino" else None}
    seg.runtime.save(path, graph_metadata(model, None if dynamic else size, argmax, precision,
                                          int8_keep_float=list(seg.int8_keep_float) if precision == "int8" else None,
                                          agreement_fp32=round(agreement, 5), calibration=calib, **meta))
    res = ExportResult(path=str(path), format=format, model=_name(model), size=None if dynamic else list(size),
                       argmax=argmax, fused=True, precision=precision, agreement_fp32=round(agreement, 5),
                       int8_keep_float=list(seg.int8_keep_float) if precision == "int8" else [])
    seg.close()
    again = Segmenter(path, threads=seg_kw.get("threads"))  # the round trip: the file gives the same labels
    same = float(np.mean([(a == again.predict(im)).mean() for a, im in zip(built, images)]))
    again.close()
    res.checks.append({"size": list(size), "max_abs": None, "agreement": same, "against": "in-process graph"})
    if same < min_agreement:
        raise ExportError(f"{path}: the written {format} file agrees with the graph it was saved from on only "
                          f"{100 * same:.3f}% of the pixels")
    res.build_s = round(time.perf_counter() - t0, 2)
    return res


def export(model: nn.Module, path: str | os.PathLike, format: str = "onnx", size: tuple[int, int] = (512, 1024),
           dynamic: bool = False, argmax: bool = False, opset: int = DEFAULT_OPSET, verify: bool = True,
           min_agreement: float = 0.999, precision: str = "fp32", calibration: Any = None,
           calibration_size: int = 32, int8_keep_float: Any = None, source: Any = None,
           threads: int | None = None, int8_control: Any = None, int8_max_drop: float = 0.01) -> ExportResult:
    """Export the deploy form of ``model`` to ``format`` (``onnx``/``openvino``/``torchscript``) at
    ``precision`` and verify it.

    The graph takes ``B x 3 x H x W`` float RGB in [0, 1] at ``size`` (``dynamic=True``: any batch and any
    sides divisible by ``size_divisor``; fp32 is verified at ``size`` and at a second, different size).
    fp32 raises :class:`ExportError` when the exported graph disagrees with PyTorch on more than
    ``1 - min_agreement`` of the pixels. ``precision="int8"`` (onnx, openvino) calibrates once on
    ``calibration`` images (``calibration_size`` of them; ``int8_keep_float``: module paths left in float,
    default as :class:`rtseg.Segmenter`; ``int8_control`` / ``int8_max_drop``: labelled images for OpenVINO's
    accuracy-controlled search, as there) and records the agreement of its labels with fp32 on up to 8 of
    them; ``"bf16"`` (openvino) the same on them or synthetic images. ``source``: the checkpoint path or
    name the model came from (its SHA-256 goes into the metadata).
    """
    _check_request(format, precision, calibration)
    _check_exportable(model)
    size = (int(size[0]), int(size[1]))
    path = Path(path)
    meta = {"source_sha256": source_sha256(source) if source is not None else None}
    if precision != "fp32":
        seg_kw = {"calibration": calibration, "calibration_size": calibration_size, "threads": threads,
                  "int8_keep_float": int8_keep_float, "int8_control": int8_control,
                  "int8_max_drop": int8_max_drop} if precision == "int8" else {"threads": threads}
        return _export_built(model, path, format, size, dynamic, argmax, precision, seg_kw, meta, min_agreement)
    if format == "onnx":
        p = export_onnx(model, path, size=size, opset=opset, dynamic=dynamic, argmax=argmax, fold=True, meta=meta)
    elif format == "openvino":
        p = export_openvino(model, path, size=size, dynamic=dynamic, argmax=argmax, meta=meta)
    else:
        p = export_torchscript(model, path, size=size, dynamic=dynamic, argmax=argmax)
    res = ExportResult(path=str(p), format=format, model=_name(model), size=None if dynamic else list(size),
                       argmax=argmax, fused=True)
    if verify:
        _verify_fp32(model, res, size, dynamic, min_agreement)
    return res
