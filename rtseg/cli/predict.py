"""``rtseg predict``: the command-line face of :func:`rtseg.deploy.predictor`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtseg.cli._common import UsageError, parse_size, positive_int, threads_int
from rtseg.deploy.artifact import is_artifact_path
from rtseg.deploy.predictor import VIDEO_SUFFIXES, X264_PRESETS, predict
from rtseg.utils.deps import require, require_runtime


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment images, folders, globs, videos or a camera into label PNGs / overlays / videos",
        description="Segment SOURCEs (image files, folders, glob patterns, mp4/avi/... videos, camera index) and "
        "write palette label PNGs, colour overlays and side-by-side videos into --out.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image, folder, glob pattern, video, or camera index")
    p.add_argument("--weights", required=True, help="rtseg checkpoint file, shipped weights name, or an exported "
                   "artifact (.xml / .onnx from `rtseg export`: runs as written, no calibration)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                   help="default auto: the fastest installed runtime (openvino, onnxruntime, torch); for an "
                        "artifact, the runtime its suffix names")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default=None,
                   help="default fp32 (an artifact: its own precision)")
    p.add_argument("--queue", type=int, default=4, help="videos: frames each pipeline queue holds (default 4)")
    p.add_argument("--size", type=parse_size, default=None,
                   help="fixed model input HxW (images are resized to it and back); default: native resolution")
    p.add_argument("--threads", type=threads_int, default=None, help="CPU inference threads (default: all cores)")
    p.add_argument("--calib", default=None, help="int8: calibration images (folder or glob)")
    p.add_argument("--calib-count", type=positive_int, default=32, help="int8: number of calibration images (default 32)")
    p.add_argument("--int8-keep-float", action="append", default=None, metavar="MODULE",
                   help="int8: module path left in float (repeatable; default: for shipped weights, the list "
                        "recorded with them; 'none': no module)")
    p.add_argument("--graph-argmax", action=argparse.BooleanOptionalAction, default=True,
                   help="argmax inside the runtime graph (default: on; uint8 labels out: no logits copy and no "
                        "argmax per frame in the front; with --size the labels of resized frames are resized "
                        "back nearest-neighbour, --no-graph-argmax resizes the logits bilinearly instead)")
    p.add_argument("--overlay", action="store_true", help="also write colour overlays")
    p.add_argument("--side-by-side", action="store_true", help="also write image | overlay (PNG, or mp4 for video)")
    p.add_argument("--save-frames", action="store_true", help="videos: also write every frame's label PNG")
    p.add_argument("--video-preset", choices=X264_PRESETS, default="ultrafast",
                   help="videos: x264 preset (default ultrafast: the least CPU beside the graph; veryfast writes "
                        "~2/3 the bytes for ~3.5x the encode CPU)")
    p.add_argument("--streams", type=positive_int, default=None,
                   help="videos/cameras, OpenVINO: frames inferred at once, each on its share of the threads "
                        "(default: 2 for video files, higher end-to-end FPS; 1 for cameras, lowest latency)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.precision == "int8" and args.calib is None and not is_artifact_path(args.weights):
        raise UsageError("--precision int8 needs --calib (a folder or glob of training images), or an int8 "
                         "artifact from `rtseg export --precision int8` as --weights")
    require_runtime(args.backend, args.precision)  # before any model is built or exported
    if any(Path(s).suffix.lower() in VIDEO_SUFFIXES or s.isdigit() for s in map(str, args.sources)):
        require("av", "video", "video and camera input")
    kw = {"threads": args.threads or None, "graph_argmax": args.graph_argmax}
    if args.calib is not None:
        kw.update(calibration=args.calib, calibration_size=args.calib_count)
    if args.int8_keep_float is not None:
        kw["int8_keep_float"] = [] if args.int8_keep_float == ["none"] else args.int8_keep_float
    try:
        s = predict(args.weights, args.sources, args.out, backend=args.backend, precision=args.precision,
                    size=args.size, overlay=args.overlay, side_by_side=args.side_by_side,
                    save_frames=args.save_frames, alpha=args.alpha, progress=not args.quiet,
                    queue_depth=args.queue, video_preset=args.video_preset, streams=args.streams, **kw)
    except ValueError as e:  # artifact / option refusals: one line
        raise UsageError(str(e)) from None
    what = ", ".join(x for x in (f"{s.images} images" if s.images else "", f"{s.frames} frames" if s.frames else "")
                     if x) or "nothing"
    threads = f"{s.threads} thread{'s' * (s.threads != 1)}"
    print(f"segmented {what} in {s.seconds:.1f} s with {s.backend}/{s.precision}, {threads} ({s.fps:.1f} FPS end "
          f"to end, incl. decode/encode), {len(s.outputs)} files in {args.out}")
    if s.graph_fps:
        print(f"graph alone: {s.graph_fps:.1f} FPS; end to end = {100 * s.fps / s.graph_fps:.0f}% of it")
    if s.graph_fps_streams:
        print(f"graph alone, {s.streams} streams at once: {s.graph_fps_streams:.1f} FPS; end to end = "
              f"{100 * s.fps / s.graph_fps_streams:.0f}% of it")
    for msg in s.skipped:
        print(f"skipped: {msg}")
    return 1 if s.skipped and not (s.images or s.frames) else 0
