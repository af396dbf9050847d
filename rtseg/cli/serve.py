"""``rtseg serve``: the command-line face of :func:`rtseg.serve.serve` (web page + HTTP API)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rtseg.cli._common import parse_size

    p = subparsers.add_parser(
        "serve",
        help="web page and HTTP API for live segmentation of images, videos and a webcam (rtseg[serve])",
        description="Load one model and serve it: the page at /, POST /predict (labels / overlay PNG, JSON "
        "class shares), GET /health, WebSocket /ws for live frames, API docs at /docs. Needs the "
        "optional extra: pip install 'rtseg[serve]'.",
    )
    p.add_argument("--weights", required=True, help="rtseg checkpoint file or shipped weights name")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"], default="torch")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    p.add_argument("--size", type=parse_size, default=None,
                   help="fixed model input HxW (images are resized to it and back); default: native resolution")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all cores)")
    p.add_argument("--calib", default=None, help="int8: calibration images (folder or glob)")
    p.add_argument("--calib-count", type=int, default=32, help="int8: number of calibration images (default 32)")
    p.add_argument("--graph-argmax", action="store_true", help="argmax inside the runtime graph (faster)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body in MiB (default 10)")
    p.add_argument("--max-megapixels", type=float, default=16.8,
                   help="largest decoded image in megapixels (default 16.8 = 4096x4096)")
    p.add_argument("--queue-size", type=int, default=16,
                   help="requests waiting or running before new ones get 503 (default 16)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="warning",
                   help="uvicorn log level (default warning; info logs every request)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtseg.cli._common import UsageError
    from rtseg.serve import EXTRA_HINT, missing_dependencies

    missing = missing_dependencies()  # before the model is built: that takes seconds
    if missing:
        raise UsageError(f"needs {', '.join(missing)}: {EXTRA_HINT}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    for name in ("max_upload_mb", "max_megapixels", "queue_size"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.precision == "int8" and args.calib is None:
        raise UsageError("--precision int8 needs --calib (a folder or glob of training images)")
    from rtseg.serve.app import serve

    kw = {"threads": args.threads, "graph_argmax": args.graph_argmax}
    if args.calib is not None:
        kw.update(calibration=args.calib, calibration_size=args.calib_count)
    serve(args.weights, backend=args.backend, precision=args.precision, size=args.size, host=args.host,
          port=args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
          max_pixels=int(args.max_megapixels * 1e6), queue_size=args.queue_size, log_level=args.log_level, **kw)
    return 0
