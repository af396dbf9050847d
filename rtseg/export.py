"""Export rtseg models to ONNX and verify the exported graph against PyTorch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from rtseg._io import atomic_open

__all__ = ["ExportError", "export_onnx", "verify_onnx"]

DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The model cannot be exported (declared by its registry entry, or the exporter failed)."""


class _ArgmaxHead(nn.Module):
    """Wraps a model so the graph returns uint8 labels (B x H x W) instead of float logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).argmax(1).to(torch.uint8)


def _check_exportable(model: nn.Module) -> None:
    from rtseg.models._registry import model_info

    name = getattr(model, "rtseg_name", None)
    if name is not None and not model_info(name).exportable:
        raise ExportError(f"model {name!r} declares it cannot be exported to ONNX")


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (512, 1024),
                opset: int = DEFAULT_OPSET, dynamic: bool = False, argmax: bool = False) -> Path:
    """Write ``model`` (eval mode) as ONNX to ``path`` atomically.

    Graph input ``image``: ``B x 3 x H x W`` float32 RGB in [0, 1] (normalisation is inside the graph);
    output ``logits`` (``B x C x H x W`` float32) or, with ``argmax=True``, ``labels`` (``B x H x W`` uint8).
    ``dynamic=True`` makes batch, height and width symbolic.
    """
    _check_exportable(model)
    model = model.eval()
    net = _ArgmaxHead(model) if argmax else model
    x = torch.rand(1, 3, *size)
    out_name = "labels" if argmax else "logits"
    axes = ({"image": {0: "batch", 2: "height", 3: "width"}, out_name: {0: "batch", 1 + (not argmax): "height",
             2 + (not argmax): "width"}} if dynamic else None)
    path = Path(path)
    try:
        with warnings.catch_warnings(), atomic_open(path, "wb") as f:
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter handles every rtseg model at opset 17 and is several times
            # faster than the dynamo exporter; the latter is used where the former is unavailable.
            try:
                torch.onnx.export(net, (x,), f, opset_version=opset, dynamo=False, input_names=["image"],
                                  output_names=[out_name], dynamic_axes=axes, do_constant_folding=True)
            except (TypeError, ImportError):
                prog = torch.onnx.export(net, (x,), None, opset_version=max(opset, 18), dynamo=True,
                                         input_names=["image"], output_names=[out_name], dynamic_axes=axes)
                prog.save(f)
    except ExportError:
        raise
    except Exception as e:  # exporter failures become one clear error naming the model
        raise ExportError(f"ONNX export of {getattr(model, 'rtseg_name', type(model).__name__)} failed: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    return path


def verify_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] | None = None,
                image: torch.Tensor | None = None) -> dict[str, Any]:
    """Run the ONNX file in ONNX Runtime and compare with PyTorch on the same input.

    Returns ``max_abs`` (logit error; None for argmax graphs) and ``agreement`` (fraction of pixels with
    the same argmax label).
    """
    import onnxruntime as ort

    if image is None:
        if size is None:
            raise ValueError("verify_onnx needs size or image")
        image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: image.numpy()})[0]
    with torch.inference_mode():
        ref = model.eval()(image).numpy()
    ref_lab = ref.argmax(1)
    if out.ndim == 3:  # in-graph argmax
        return {"max_abs": None, "agreement": float((out == ref_lab).mean())}
    return {"max_abs": float(np.abs(out - ref).max()), "agreement": float((out.argmax(1) == ref_lab).mean())}
