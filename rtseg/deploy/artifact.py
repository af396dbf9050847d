"""The self-describing metadata of rtseg deployment artifacts (``.onnx`` / OpenVINO ``.xml`` files).

``rtseg export`` writes it into the file itself -- ONNX ``metadata_props``, OpenVINO IR ``rt_info`` under
``rtseg`` -- as string key/value pairs (structured values JSON-encoded), so a runtime needs nothing beside
the file to feed it and read its output: class names and palette, input size and convention, output kind
(logits or labels), precision, the float modules an int8 graph kept, rtseg version, the source
checkpoint's SHA-256 and the pixel agreement with fp32 measured at export.

:func:`read_metadata` validates it. A file without it (not written by rtseg) is refused with a one-line
:class:`ArtifactError` naming the file: its input convention, classes and normalisation are unknown, and
running it as if it were an rtseg graph would silently give wrong labels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACT_SUFFIXES", "ArtifactError", "ArtifactInfo", "is_artifact_path",
           "read_metadata"]

#: artifact file suffix -> the runtime that runs it
ARTIFACT_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}
#: version of this metadata layout (key ``rtseg_artifact``)
ARTIFACT_VERSION = "1"
INPUT_CONVENTION = "image: B x 3 x H x W float32 RGB in [0, 1]; normalisation inside the graph"
_REQUIRED = ("rtseg_model", "num_classes", "size_divisor", "input_size", "output")
_JSON_KEYS = ("class_names", "palette", "int8_keep_float", "agreement_fp32", "calibration", "mean")


class ArtifactError(ValueError):
    """A file is not a (valid) rtseg deployment artifact."""


def is_artifact_path(path: Any) -> bool:
    """True for a path (str / PathLike) whose suffix is an artifact's (``.onnx``, ``.xml``)."""
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in ARTIFACT_SUFFIXES


def encode(meta: dict[str, Any]) -> dict[str, str]:
    """Metadata values -> strings (JSON for the structured keys), as the file formats store them."""
    return {k: json.dumps(v) if k in _JSON_KEYS else str(v) for k, v in meta.items() if v is not None or k in _JSON_KEYS}


class ArtifactInfo(dict):
    """Parsed, validated artifact metadata (a dict) with typed accessors."""

    @property
    def num_classes(self) -> int:
        return int(self["num_classes"])

    @property
    def size(self) -> tuple[int, int] | None:
        s = self["input_size"]
        return None if s == "dynamic" else tuple(int(v) for v in s.split("x"))

    @property
    def divisor(self) -> int:
        return int(self["size_divisor"])

    @property
    def labels_out(self) -> bool:
        return self["output"] == "labels"

    @property
    def precision(self) -> str:
        return self.get("precision") or "fp32"


def _raw_onnx(path: Path) -> dict[str, str]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 -- any parse failure is "not an ONNX file"
        raise ArtifactError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    return {p.key: p.value for p in proto.metadata_props}


def _raw_openvino(path: Path) -> dict[str, str]:
    import openvino as ov

    if not path.with_suffix(".bin").is_file():
        raise ArtifactError(f"{path}: the OpenVINO weights file {path.with_suffix('.bin').name} is missing beside it")
    try:
        rt = ov.Core().read_model(str(path)).get_rt_info()
    except Exception as e:  # noqa: BLE001
        raise ArtifactError(f"{path}: not a readable OpenVINO IR ({str(e).strip().splitlines()[0][:120]})") from None
    sub = rt["rtseg"] if "rtseg" in list(rt.keys()) else {}
    return {k: v.astype(str) for k, v in sub.items()}


def read_metadata(path: str | os.PathLike) -> ArtifactInfo:
    """Validated metadata of an rtseg artifact; :class:`ArtifactError` (one line, naming the file) otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ARTIFACT_SUFFIXES:
        raise ArtifactError(f"{path}: not an rtseg artifact (expected {' or '.join(ARTIFACT_SUFFIXES)})")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    raw = _raw_onnx(path) if suffix == ".onnx" else _raw_openvino(path)
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ArtifactError(f"{path}: not an rtseg artifact (no rtseg metadata: {', '.join(missing)} missing); "
                            f"write one with `rtseg export`")
    info = ArtifactInfo({k: (json.loads(v) if k in _JSON_KEYS else v) for k, v in raw.items()})
    try:
        ok = info.num_classes > 0 and info.divisor > 0 and info["output"] in ("labels", "logits")
        info.size  # noqa: B018 -- parses
    except (ValueError, TypeError):
        ok = False
    if not ok or info.precision not in ("fp32", "bf16", "int8"):
        raise ArtifactError(f"{path}: invalid rtseg metadata (num_classes={raw['num_classes']!r}, "
                            f"input_size={raw['input_size']!r}, output={raw['output']!r})")
    return info
