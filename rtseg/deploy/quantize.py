"""INT8 post-training quantization by the runtimes' own tools: OpenVINO NNCF and ONNX Runtime ``quantize_static``.

Both quantizers take the exported deploy graph, calibration inputs (``1 x 3 x H x W`` float32 model inputs) and
the float scopes -- op types and exported node names -- that stay in floating point. :class:`FloatScopes`
maps module paths (``"encoder.initial_block"``) to exported node names and back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.utils.logs import third_party_quiet

__all__ = ["INT8_KEEP_FLOAT", "INT8_PHASE_POOL", "INT8_SMOOTH_QUANT", "INT8_SUBPIXEL", "FloatScopes",
           "high_resolution_convs", "quantize_onnx", "quantize_openvino", "quantized_ops"]

#: Operator types int8 leaves in floating point (per runtime's op naming). Transposed convs: quantizing them
#: (and so their input, per tensor) cost the trained ``essnet_dg2s_cs_camvid`` 20 mIoU points on CamVid val
#: in OpenVINO (57.4 -> 37.5); kept in float the drop is 1.3 points, for ~3 % more int8 latency
#: (docs/deploy.md). ESSNet's decoder feeds the encoder output, whose channels span very different ranges,
#: into a 1x1 transposed conv; one per-tensor int8 scale for that tensor erases the small-range channels.
#: The in-graph argmax (running max: Greater/Maximum/Select; older IRs ReduceMax/Equal; ONNX ArgMax): quantizing the
#: logits it reads creates ties between classes.
INT8_KEEP_FLOAT = {"openvino": ("ConvolutionBackpropData", "ReduceMax", "Equal", "Greater", "Maximum", "Select"),
                   "onnx": ("ConvTranspose", "ArgMax")}


class FloatScopes:
    """Module paths of a deploy-form model <-> the node names its exported graph gives them.

    Exported node name ``/model/encoder/layers.1/conv/Conv`` (``/model`` is the in-graph argmax wrapper when
    ``argmax``) sits in modules ``encoder``, ``encoder.layers.1``, ``encoder.layers.1.conv``.
    """

    def __init__(self, modules: Iterable[str], argmax: bool) -> None:
        self.modules = set(modules)
        self.argmax = bool(argmax)

    def check(self, paths: Sequence[str]) -> None:
        bad = [p for p in paths if p not in self.modules]
        if bad:
            raise ValueError(f"int8_keep_float: {bad} are not modules of this model's deploy form "
                             f"(module paths like 'encoder.initial_block')")

    def prefixes(self, node: str) -> list[str]:
        """The module paths ``node`` may sit in, outermost first. "layers.1" is one name component but two
        module-path components, hence joined prefixes."""
        parts = node.strip("/").split("/")
        if self.argmax and parts and parts[0] == "model":
            parts = parts[1:]
        return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]

    def kept(self, names: Sequence[str], keep: Sequence[str]) -> list[str]:
        """The node names among ``names`` that belong to a ``keep`` module or one inside it."""
        keep = set(keep)
        return [n for n in names if any(m in keep for m in self.prefixes(n))]

    def module_of(self, node: str) -> str | None:
        """The deepest module path ``node`` belongs to (None if outside any)."""
        return next((m for m in reversed(self.prefixes(node)) if m in self.modules), None)

    def outermost(self, nodes: Iterable[str], also: Iterable[str] = ()) -> list[str]:
        """The outermost modules holding ``nodes`` (plus ``also``): "a.b" already covers "a.b.c"."""
        mods = {m for m in (self.module_of(n) for n in nodes) if m} | set(also)
        return sorted(m for m in mods if not any(m.startswith(o + ".") for o in mods))


def high_resolution_convs(net: Any, size: tuple[int, int], min_fraction: float = 0.5) -> list[str]:
    """Module paths of the blocks (parent modules) of the ``nn.Conv2d`` layers of ``net`` (a deploy-form
    model) whose input is at least ``min_fraction`` of the input height: the stem and the last decoder stage,
    which the default int8 rule keeps in float (docs/deploy.md). Found by one forward pass at ``size``."""
    import torch
    from torch import nn

    seen: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(mod: Any, inp: tuple) -> None:  # returns None: the input is left unchanged
            seen.setdefault(name, int(inp[0].shape[-2]))

        return record

    hooks = [m.register_forward_pre_hook(hook(name)) for name, m in net.named_modules()
             if isinstance(m, nn.Conv2d) and name]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
    # the block around each such conv (its parent module: conv + the concat / add / affine it feeds), outermost only
    blocks = {n.rpartition(".")[0] or n for n, h in seen.items() if h >= min_fraction * size[0]}
    return sorted(b for b in blocks if not any(b.startswith(o + ".") for o in blocks))


def quantized_ops(ir: Any) -> set[str]:
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


# ------------------------------------------------------------------------------------------ ONNX Runtime
def quantize_onnx(path: Path, calib: list[np.ndarray], work: Path, scopes: FloatScopes,
                  keep_float: Sequence[str]) -> Path:
    """ONNX Runtime ``quantize_static`` of the graph at ``path`` (QDQ, per-channel int8 weights, uint8
    activations) -> the int8 ONNX file in ``work``. ``keep_float``: module paths left in float."""
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

    pre, out = work / "model.pre.onnx", work / "model.int8.onnx"
    # ORT's symbolic shape inference drops "sym_shape_infer_temp.onnx" (+ external data) into the
    # *current* directory when it cannot infer every shape: run inside our temp folder instead.
    with _working_dir(work):
        try:  # ONNX Runtime's recommended pre-pass (shape inference, graph clean-up) before quantizing
            shape_inference.quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 -- optional step: quantize the unprocessed graph instead
            pre = path
        import onnx

        nodes = onnx.load(str(pre)).graph.node
        exclude = [n.name for n in nodes if n.op_type in INT8_KEEP_FLOAT["onnx"]]
        exclude += scopes.kept([n.name for n in nodes if n.op_type not in INT8_KEEP_FLOAT["onnx"]], keep_float)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    return out


# ------------------------------------------------------------------------------------------------ NNCF
def _nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise ImportError("int8 with openvino needs nncf: pip install 'rtseg[deploy]'") from None
    return nncf


def _nncf_settings(nncf: Any, ir: Any, n: int, scopes: FloatScopes, keep_float: Sequence[str]) -> tuple[Any, dict]:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # Activation ranges from histograms (NNCF's MSE-optimal clipping) rather than the default mean of
    # per-image min/max: essnet_dg2s_cs_camvid int8 -1.42 -> -0.39 mIoU on CamVid val (docs/deploy.md)
    kw = {"subset_size": n, "preset": nncf.QuantizationPreset.MIXED,
          "ignored_scope": nncf.IgnoredScope(
              types=list(INT8_KEEP_FLOAT["openvino"]), validate=False,
              names=scopes.kept([op.get_friendly_name() for op in ir.get_ordered_ops()], keep_float))}
    adv = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)
    return adv, kw


#: NNCF SmoothQuant alpha for convolutions, applied before every OpenVINO int8 quantization (0 = off). Per
#: input channel it moves activation range into the conv's weights (exact in float: the channel's producer is
#: divided by the scale, the conv's input weights multiplied), so the per-tensor activation quantizer in front
#: of a 1x1 conv no longer spends its 8 bits on a few wide channels -- the case of ESSNet's depthwise ->
#: pointwise pairs. Measured (CamVid val, default rule, docs/deploy.md): essnet_dg2s_cs_camvid -1.28 -> -0.53
#: mIoU (agreement 99.01 -> 99.19 %), no loss elsewhere, no speed cost at 512x1024.
INT8_SMOOTH_QUANT = 0.5

#: OpenVINO int8 graphs write the transposed convs whose sub-pixel form adds no multiply-adds (kernel = stride:
#: the ESSNet and ERFNet output convs) as ``Conv2d -> DepthToSpace`` (:func:`rtseg.nn.fuse.transposed_to_subpixel`,
#: exact) and keep them in float, as the type rule keeps every ``ConvolutionBackpropData``. The plugin runs a
#: transposed conv in f32 beside an int8 graph and reorders its full-resolution output for the argmax; the 1x1
#: conv runs at the float layers' bf16 and the shuffle is cheap: ESSNet-DG2S int8 at 512x1024 1.14x and 1.06x
#: faster in two interleaved A/Bs (docs/deploy.md). fp32 graphs keep ``ConvTranspose`` (measured: no gain there).
INT8_SUBPIXEL = True

#: OpenVINO int8 graphs pool the image (the ERFNet/ESSNet stems' 2x2 max-pool of 3 channels) as
#: phases -> ``ReduceMax`` (:class:`rtseg.nn.fuse.PhaseMaxPool2d`, exact): the plugin's ``MaxPool``
#: first reorders the 3-channel image into a 16-channel blocked layout. ESSNet-DG2S int8 at 512x1024: 1.03x,
#: 1.10x and 1.15x faster in three exploratory interleaved A/Bs (docs/deploy.md).
INT8_PHASE_POOL = True


def smooth_quant_openvino(ir: Any, calib: list[np.ndarray], alpha: float) -> Any:
    """NNCF's SmoothQuant on the convolutions of the OpenVINO model ``ir`` (a copy), statistics from
    ``calib``: run as its own NNCF pipeline step, so the model type stays a CNN for the quantization that
    follows (``nncf.quantize`` runs SmoothQuant only with ``model_type=TRANSFORMER``, which also stops
    quantizing residual Adds)."""
    nncf = _nncf()
    from nncf.quantization.algorithms.pipeline import Pipeline
    from nncf.quantization.algorithms.smooth_quant.algorithm import SmoothQuant

    step = SmoothQuant(len(calib), inplace_statistics=True, alpha_map={"convolution": alpha, "matmul": -1})
    with third_party_quiet():
        return Pipeline([[step]]).run(ir.clone(), nncf.Dataset(calib))


def quantize_openvino(ir: Any, calib: list[np.ndarray], scopes: FloatScopes, keep_float: Sequence[str],
                      control: list[tuple[np.ndarray, Any]] | None = None,
                      metric: Callable[[Any, list], float] | None = None,
                      max_drop: float = 0.01) -> tuple[Any, list[str]]:
    """NNCF int8 of the OpenVINO model ``ir`` -> (int8 model, module paths kept in float).

    With ``control`` (model input, label) items and ``metric(compiled, items) -> mIoU``, NNCF's
    accuracy-controlled quantization returns the most sensitive layers to float until the metric drops by at
    most ``max_drop``; the modules it reverted are added to the returned list.
    """
    nncf = _nncf()
    if INT8_SMOOTH_QUANT:  # first: the float scopes below then also cover its Multiply nodes
        ir = smooth_quant_openvino(ir, calib, INT8_SMOOTH_QUANT)
    adv, kw = _nncf_settings(nncf, ir, len(calib), scopes, keep_float)
    if control is None:
        with third_party_quiet():  # NNCF's INFO lines and bars stay out of rtseg's output (the CLI: unless -v)
            return nncf.quantize(ir, nncf.Dataset(calib), advanced_parameters=adv, **kw), list(keep_float)
    with third_party_quiet():
        q = nncf.quantize_with_accuracy_control(
        ir.clone(), nncf.Dataset(calib), nncf.Dataset(control, lambda it: it[0]), metric, max_drop=max_drop,
        advanced_quantization_parameters=adv, **kw)
    # layers quantized by plain NNCF with the same settings but left in float here: the reverted ones
    quantized = quantized_ops(nncf.quantize(ir.clone(), nncf.Dataset(calib), advanced_parameters=adv, **kw))
    reverted = sorted(quantized - quantized_ops(q))
    return q, list(keep_float) + [m for m in scopes.outermost(reverted, keep_float) if m not in keep_float]
