"""The deploy layer: export artifacts, run them on any runtime, benchmark and predict.

- :mod:`~rtseg.deploy.exporter`: deploy form, ONNX / OpenVINO IR / TorchScript export at fp32 / bf16 / int8,
  verification;
- :mod:`~rtseg.deploy.artifact`: the metadata an exported file carries, and its validation;
- :mod:`~rtseg.deploy.backends`: one object per runtime (torch, ONNX Runtime, OpenVINO) running a graph;
- :mod:`~rtseg.deploy.quantize`: int8 by NNCF / ONNX Runtime;
- :mod:`~rtseg.deploy.segmenter`: :class:`Segmenter`, the front (validation, pre/post-processing);
- :mod:`~rtseg.deploy.predictor` / :mod:`~rtseg.deploy.bench`: ``rtseg predict`` / ``rtseg bench``.

Layering: deploy imports utils, data, models, grouping/fuse, hub (read side), checkpoint and metrics /
visualize; never train, report or the CLI.
"""

from rtseg.deploy.artifact import ArtifactError, ArtifactInfo, read_metadata
from rtseg.deploy.backends import (
    BACKENDS,
    Backend,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    available_backends,
    open_artifact,
    resolve_backend,
)
from rtseg.deploy.bench import (
    BenchResult,
    bench_image,
    benchmark,
    format_row,
    machine_info,
    markdown_table,
    to_json,
)
from rtseg.deploy.exporter import (
    FORMATS,
    ExportError,
    ExportResult,
    deploy_model,
    export,
    export_onnx,
    export_openvino,
    export_torchscript,
    graph_metadata,
    verify_export,
    verify_onnx,
)
from rtseg.deploy.images import IMAGE_SUFFIXES, load_images, read_image
from rtseg.deploy.predictor import (
    VIDEO_SUFFIXES,
    PredictSummary,
    Source,
    predict,
    resolve_sources,
    run_pipeline,
)
from rtseg.deploy.quantize import INT8_KEEP_FLOAT, FloatScopes, quantized_ops
from rtseg.deploy.segmenter import PRECISIONS, Segmenter, cpu_supports_bf16, palette_for

__all__ = [
    "BACKENDS",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "INT8_KEEP_FLOAT",
    "PRECISIONS",
    "VIDEO_SUFFIXES",
    "ArtifactError",
    "ArtifactInfo",
    "Backend",
    "BenchResult",
    "ExportError",
    "ExportResult",
    "FloatScopes",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "PredictSummary",
    "Segmenter",
    "Source",
    "TorchBackend",
    "available_backends",
    "bench_image",
    "benchmark",
    "cpu_supports_bf16",
    "deploy_model",
    "export",
    "export_onnx",
    "export_openvino",
    "export_torchscript",
    "format_row",
    "graph_metadata",
    "load_images",
    "machine_info",
    "markdown_table",
    "open_artifact",
    "palette_for",
    "predict",
    "quantized_ops",
    "read_image",
    "read_metadata",
    "resolve_backend",
    "resolve_sources",
    "run_pipeline",
    "to_json",
    "verify_export",
    "verify_onnx",
]
