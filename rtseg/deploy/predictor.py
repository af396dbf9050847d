"""``rtseg.deploy.predictor``: segment image files, folders, glob patterns, videos and cameras into label PNGs,
colour overlays and side-by-side videos, on any :class:`rtseg.Segmenter` backend.

Outputs in ``out_dir`` (``<stem>`` = the source file's name without suffix):

- image: ``<stem>.png`` (indexed PNG: raw class ids in the pixels, the palette for viewing),
  ``<stem>_overlay.png`` with ``overlay=True``, ``<stem>_side.png`` (image | overlay) with ``side_by_side=True``;
- video / camera: ``<stem>_overlay.mp4`` and/or ``<stem>_side.mp4``; with neither flag, ``<stem>_labels.mp4``
  (colourised labels); ``save_frames=True`` also writes every frame's label PNG into ``<stem>_labels/``.

Missing files, unsupported formats and unopenable videos are refused before any work starts; a frame that
cannot be decoded mid-video is reported and skipped, and the rest of the video is still written.

Videos and cameras run as a pipeline of three stages over bounded queues -- decode (thread), inference
(caller's thread), overlay + encode (thread) -- so decoding and encoding overlap with the graph; frames
keep their order (one thread per stage, FIFO queues) and none is dropped (a full queue blocks its producer).
The summary reports the end-to-end FPS and the graph's own FPS (the graph alone on a frame, after the run).
"""

from __future__ import annotations

import glob
import os
import queue
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.deploy.images import IMAGE_SUFFIXES, read_image
from rtseg.deploy.segmenter import Segmenter, palette_for
from rtseg.utils.io import atomic_path, check_out_dir, remove_stale_temps

__all__ = ["VIDEO_SUFFIXES", "PredictSummary", "Source", "palette_for", "predict", "resolve_sources"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class Source:
    """One input: ``kind`` is ``"image"``, ``"video"`` or ``"camera"``; ``path`` a file or ``/dev/videoN``."""

    kind: str
    path: str

    @property
    def stem(self) -> str:
        return Path(self.path).stem if self.kind != "camera" else f"camera{Path(self.path).name[5:]}"


@dataclass
class PredictSummary:
    """What :func:`predict` did: counts, written files, skipped inputs (with reasons) and throughput."""

    images: int = 0
    frames: int = 0
    outputs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = ""
    precision: str = ""
    threads: int = 0
    #: the time the graph ran (ms, summed), and the graph's own FPS measured alone on a frame after a video
    infer_ms: float = 0.0
    graph_fps: float | None = None
    #: videos run with ``streams`` parallel requests (:meth:`Segmenter.concurrent`): that form's own FPS alone
    streams: int = 1
    graph_fps_streams: float | None = None

    @property
    def fps(self) -> float:
        n = self.images + self.frames
        return n / self.seconds if self.seconds > 0 else 0.0


def _classify(path: Path) -> Source:
    suf = path.suffix.lower()
    if suf in IMAGE_SUFFIXES:
        return Source("image", str(path))
    if suf in VIDEO_SUFFIXES:
        return Source("video", str(path))
    raise ValueError(f"{path}: unsupported format {suf or '(no suffix)'!r}; images: "
                     f"{' '.join(IMAGE_SUFFIXES)}; videos: {' '.join(VIDEO_SUFFIXES)}")


def resolve_sources(sources: Sequence[str | os.PathLike]) -> list[Source]:
    """Expand files, folders (their images and videos, sorted), glob patterns and camera indices ("0").

    Raises ``FileNotFoundError`` / ``ValueError`` naming the offending argument.
    """
    out: list[Source] = []
    for s in sources:
        text = os.fspath(s)
        p = Path(text)
        if p.is_dir():
            found = [_classify(f) for f in sorted(p.iterdir())
                     if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
            if not found:
                raise FileNotFoundError(f"{text}: folder holds no images or videos")
            out += found
        elif p.is_file():
            out.append(_classify(p))
        elif text.isdigit():
            dev = f"/dev/video{int(text)}"
            if not Path(dev).exists():
                raise FileNotFoundError(f"camera {text}: {dev} does not exist (no such camera on this machine)")
            out.append(Source("camera", dev))
        elif any(c in text for c in "*?["):
            files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
            if not files:
                raise FileNotFoundError(f"{text}: pattern matches no files")
            out += [_classify(f) for f in files]
        else:
            raise FileNotFoundError(f"{text}: no such file, folder or camera")
    if not out:
        raise ValueError("no input sources given")
    return out


# ------------------------------------------------------------------------------------------------- video
def _av():
    try:
        import av
    except ImportError:
        raise ImportError("video input needs PyAV: pip install 'rtseg[video]'") from None
    return av


class _Frames:
    """Decoded RGB frames of a video/camera; undecodable packets are counted in ``bad`` and skipped."""

    def __init__(self, src: Source) -> None:
        av = _av()
        try:
            if src.kind == "camera":
                self.container = av.open(src.path, format="v4l2")
            else:
                self.container = av.open(src.path)
        except (av.FFmpegError, OSError) as e:
            raise ValueError(f"{src.path}: cannot open as video ({e})") from None
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{src.path}: contains no video stream")
        self.stream = self.container.streams.video[0]
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 25)
        self.total = self.stream.frames or None
        self.bad: list[str] = []
        self.src = src
        self._error = av.FFmpegError

    def __iter__(self) -> Iterator[np.ndarray]:
        index = 0
        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except self._error as e:
                self.bad.append(f"{self.src.path}: packet {index} (pts {packet.pts}) could not be decoded "
                                f"({type(e).__name__}: {e}); frame skipped")
                index += 1
                continue
            for frame in frames:
                if getattr(frame, "corrupt", False):  # decoded with errors (concealment): do not trust it
                    self.bad.append(f"{self.src.path}: frame {index} is corrupt; skipped")
                else:
                    yield frame.to_ndarray(format="rgb24")
                index += 1

    def close(self) -> None:
        self.container.close()


class _VideoWriter:
    """An mp4 (H.264 when available, else MPEG-4 part 2) written frame by frame; odd sizes are padded."""

    def __init__(self, path: Path, fps: float, preset: str = "ultrafast") -> None:
        av = _av()
        from fractions import Fraction

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # written under a temp name (same suffix: the container follows it) and renamed when closed: a kill
        # leaves no unplayable mp4 under the final name (#14)
        self._atomic = atomic_path(path)
        self.container = av.open(str(self._atomic.__enter__()), mode="w")
        codec = next(c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available)
        # x264 "ultrafast" by default: it runs beside the graph on the same cores; at 360x480 it costs 2.0-2.7 ms
        # of CPU a frame against "veryfast"'s 7.7-9.7 and "medium"'s 19.4, for files ~1.5x larger than
        # veryfast's at the same CRF (docs/deploy.md); ``preset`` trades encode CPU for file size
        opts = {"preset": preset} if codec == "libx264" else {}
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=opts)
        self.stream.pix_fmt = "yuv420p"
        self.av = av
        self.n = 0

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self.n == 0:
            self.stream.height, self.stream.width = h + h % 2, w + w % 2
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for pkt in self.stream.encode(frame):
            self.container.mux(pkt)
        self.n += 1

    def close(self, error: BaseException | None = None) -> None:
        """Finish the file and move it into place; with ``error`` (a failed run) remove it instead."""
        own: BaseException | None = None
        try:
            if error is None:
                for pkt in self.stream.encode():
                    self.container.mux(pkt)
            self.container.close()
        except BaseException as e:  # noqa: BLE001 -- raised below, once the temp file is removed
            own = e
        error = error or own
        if error is None:
            self._atomic.__exit__(None, None, None)
        else:
            self._atomic.__exit__(type(error), error, error.__traceback__)
        if own is not None and own is error:  # finishing the file failed: the video was not written
            raise own


# ----------------------------------------------------------------------------------------------- pipeline
_END = object()


class _Stage(threading.Thread):
    """A pipeline stage thread; its exception is kept and re-raised by the caller after ``join``."""

    def __init__(self, target: Any, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.fn, self.error = target, None

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as e:  # noqa: BLE001 -- handed to the caller
            self.error = e


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up when ``stop`` is set (another stage failed); False then."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    """Blocking get that gives up (returns ``_END``) when ``stop`` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _END


def run_pipeline(frames: Iterator[np.ndarray], infer: Any, sink: Any, depth: int = 4, workers: int = 1) -> int:
    """Decode -> infer -> sink, overlapped: ``frames`` is iterated in a thread, ``infer(image)`` runs here
    (and, with ``workers > 1``, in ``workers - 1`` more threads at once: ``infer`` must then be thread-safe,
    e.g. :meth:`Segmenter.concurrent`), ``sink(index, image, labels)`` in a final thread. At most ``depth +
    workers`` frames are in flight between decode and sink. Returns the number of frames sunk. Frame order is
    kept (the sink thread re-orders what parallel workers finish out of order; one worker over FIFO queues
    is in order already) and no frame is dropped (a full pipeline blocks the decoder); an error in any stage
    stops the others and is raised here."""
    workers = max(1, int(workers))
    q_in: queue.Queue = queue.Queue(maxsize=depth)
    q_out: queue.Queue = queue.Queue()  # bounded by ``slots``
    slots = threading.BoundedSemaphore(depth + workers)  # frames decoded but not yet sunk
    stop = threading.Event()
    count = [0]

    def decode() -> None:
        try:
            for i, image in enumerate(frames):
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if not _put(q_in, (i, image), stop):
                    return
        except BaseException:
            stop.set()
            raise
        _put(q_in, _END, stop)

    def encode() -> None:
        pending: dict[int, tuple] = {}
        ended = 0
        try:
            while ended < workers:
                item = _get(q_out, stop)
                if item is _END:
                    if stop.is_set():
                        return
                    ended += 1
                    continue
                pending[item[0]] = item
                while count[0] in pending:
                    sink(*pending.pop(count[0]))
                    count[0] += 1
                    slots.release()
            if pending:  # cannot happen: every decoded frame is inferred once; guard the order promise
                raise RuntimeError(f"video pipeline: frames {sorted(pending)} finished without frame {count[0]}")
        except BaseException:
            stop.set()
            raise

    def work() -> None:
        try:
            while (item := _get(q_in, stop)) is not _END:
                if not _put(q_out, (item[0], item[1], infer(item[1])), stop):
                    return
            _put(q_in, _END, stop)  # for the next worker
            _put(q_out, _END, stop)
        except BaseException:
            stop.set()
            raise

    stages = [_Stage(decode, "rtseg-decode"), _Stage(encode, "rtseg-encode")]
    stages += [_Stage(work, f"rtseg-infer-{k}") for k in range(1, workers)]
    for t in stages:
        t.start()
    try:
        work()
    finally:
        for t in stages:
            t.join()
    for t in stages:
        if t.error is not None:
            raise t.error
    return count[0]


def _graph_fps(seg: Segmenter, image: np.ndarray, runs: int = 20) -> float:
    """The graph's own FPS on ``image`` (pre-processed once; ``runs`` timed runs after 3 warm-ups, median)."""
    import torch

    x = torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1)[None].float().div_(255.0)
    xin = np.ascontiguousarray(seg.preprocess(x, seg.size)[0].numpy())
    times = []
    for k in range(runs + 3):
        t0 = time.perf_counter()
        seg.runtime.run(xin)
        if k >= 3:
            times.append(time.perf_counter() - t0)
    return 1.0 / sorted(times)[len(times) // 2]


def _graph_fps_concurrent(seg: Segmenter, image: np.ndarray, run: Any, workers: int, frames: int = 60) -> float:
    """The concurrent graph's own FPS: ``workers`` threads run ``run`` on ``image`` (pre-processed once) at
    once, ``frames`` runs in all after a warm-up each."""
    import torch

    x = torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1)[None].float().div_(255.0)
    xin = np.ascontiguousarray(seg.preprocess(x, seg.size)[0].numpy())
    each = max(1, frames // workers)
    go = threading.Barrier(workers + 1)

    def loop() -> None:
        try:
            run(xin)
        except BaseException:
            go.abort()  # the caller's wait fails instead of hanging
            raise
        go.wait()
        for _ in range(each):
            run(xin)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return each * workers / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- predict
#: x264's presets, fastest first (``predict(video_preset=)``, ``rtseg predict --video-preset``)
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def _side_by_side(image: np.ndarray, over: np.ndarray, gap: int = 4) -> np.ndarray:
    h = image.shape[0]
    return np.concatenate([image, np.full((h, gap, 3), 255, np.uint8), over], axis=1)


class _Run:
    """One :func:`predict` call: output naming, the summary, progress, and the per-source writers."""

    def __init__(self, seg: Segmenter, out: Path, opts: dict[str, Any], progress: bool, n_images: int) -> None:
        self.seg, self.out, self.opts = seg, out, opts
        self.palette = seg.palette
        self.summary = PredictSummary(backend=seg.backend, precision=seg.precision, threads=seg.threads)
        self.used: dict[str, int] = {}
        self.bar = None
        if progress:
            from rtseg.utils.progress import tqdm

            self.bar = tqdm(total=n_images or None, unit="img", desc="predict", dynamic_ncols=True)
        self.concurrent: dict[int, tuple[Any, int]] = {}  # videos: streams -> (infer, workers), built once
        self.start = time.perf_counter()

    def unique(self, stem: str) -> str:  # two sources named a.png in different folders must not overwrite
        self.used[stem] = self.used.get(stem, 0) + 1
        return stem if self.used[stem] == 1 else f"{stem}_{self.used[stem]}"

    def tick(self, kind: str) -> None:
        if kind == "image":
            self.summary.images += 1
        else:
            self.summary.frames += 1
        if self.bar is not None:
            self.bar.update(1)
            el = time.perf_counter() - self.start
            self.bar.set_postfix(fps=f"{(self.summary.images + self.summary.frames) / el:.1f}" if el > 0 else "-")

    def warn(self, msg: str) -> None:
        self.summary.skipped.append(msg)
        if self.bar is not None:
            self.bar.write(f"warning: {msg}")
        else:
            warnings.warn(msg, stacklevel=3)

    def image(self, src: Source) -> None:
        from rtseg.eval.visualize import overlay as blend
        from rtseg.eval.visualize import save_label_png, save_png

        stem, o = self.unique(src.stem), self.opts
        try:
            image = read_image(src.path)
        except (ValueError, FileNotFoundError) as e:
            self.warn(str(e))
            return
        labels = self.seg.predict(image)
        self.summary.outputs.append(str(save_label_png(labels, self.out / f"{stem}.png", self.palette)))
        if o["overlay"] or o["side_by_side"]:
            ov = blend(image, labels, self.palette, o["alpha"])
            if o["overlay"]:
                self.summary.outputs.append(str(save_png(ov, self.out / f"{stem}_overlay.png")))
            if o["side_by_side"]:
                self.summary.outputs.append(str(save_png(_side_by_side(image, ov), self.out / f"{stem}_side.png")))
        self.tick("image")

    def _sink(self, stem: str, fps: float, writers: dict[str, _VideoWriter]) -> Any:
        from rtseg.eval.visualize import colorize, save_label_png
        from rtseg.eval.visualize import overlay as blend

        o = self.opts
        kinds = [k for k, on in (("overlay", o["overlay"]), ("side", o["side_by_side"])) if on] or ["labels"]

        def sink(i: int, image: np.ndarray, labels: np.ndarray) -> None:
            ov = blend(image, labels, self.palette, o["alpha"]) if kinds != ["labels"] else None
            for k in kinds:
                if k not in writers:
                    writers[k] = _VideoWriter(self.out / f"{stem}_{k}.mp4", fps, o["preset"])
                frame = ov if k == "overlay" else _side_by_side(image, ov) if k == "side" else colorize(labels, self.palette)
                writers[k].write(frame)
            if o["save_frames"]:
                save_label_png(labels, self.out / f"{stem}_labels" / f"frame_{i:06d}.png", self.palette)
            self.tick("frame")
            self.last = image

        return sink

    def video(self, src: Source) -> None:
        stem = self.unique(src.stem)
        frames = _Frames(src)
        writers: dict[str, _VideoWriter] = {}
        if self.bar is not None and frames.total:
            self.bar.total = (self.bar.total or 0) + frames.total
            self.bar.refresh()
        self.last = None
        error: BaseException | None = None
        streams = self.opts["streams"]
        if streams is None:  # a file: throughput (two frames at once); a camera: each frame's latency
            streams = 1 if src.kind == "camera" else 2
        if streams not in self.concurrent:
            self.concurrent[streams] = self.seg.concurrent(streams)
        infer, workers = self.concurrent[streams]
        self.summary.streams = max(self.summary.streams, workers)
        try:
            run_pipeline(iter(frames), infer, self._sink(stem, frames.fps, writers),
                         depth=self.opts["queue"], workers=workers)
        except BaseException as e:
            error = e
            raise
        finally:
            frames.close()
            failed: BaseException | None = None
            for w in writers.values():
                try:
                    w.close(error)  # a failed or interrupted video is removed, never left half-written
                except BaseException as e:  # noqa: BLE001 -- the others are still closed; raised below
                    failed = failed or e
                    continue
                if error is None:
                    self.summary.outputs.append(str(w.path))
            if failed is not None and error is None:
                raise failed
        for msg in frames.bad:
            self.warn(msg)
        if self.last is not None:
            self.graph_image = self.last

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.summary.seconds = time.perf_counter() - self.start
        self.summary.infer_ms = round(self.seg.speed["infer"], 2)


def predict(
    weights: str | os.PathLike | Any,
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    backend: str = "auto",
    precision: str | None = None,
    size: tuple[int, int] | None = None,
    overlay: bool = False,
    side_by_side: bool = False,
    save_frames: bool = False,
    alpha: float = 0.5,
    progress: bool = True,
    queue_depth: int = 4,
    graph_argmax: bool = True,
    video_preset: str = "ultrafast",
    streams: int | None = None,
    **segmenter_kw: Any,
) -> PredictSummary:
    """Segment ``sources`` and write label PNGs / overlays / videos into ``out_dir``.

    ``weights``: checkpoint path, shipped weights name, model, an exported artifact (``.xml`` / ``.onnx``),
    or a ready :class:`Segmenter` (then ``backend``/``precision``/``size`` are ignored). ``backend="auto"``:
    the fastest installed runtime (:class:`Segmenter`). Images are ``H x W x 3`` RGB at any resolution;
    outputs are at the source resolution. Videos run pipelined with queues of ``queue_depth`` frames and
    are encoded with the x264 preset ``video_preset`` (one of :data:`X264_PRESETS`; default ``ultrafast``,
    the cheapest on CPU beside the graph; ``veryfast`` writes ~2/3 the bytes for ~3.5x the encode CPU).
    ``graph_argmax`` (default on; predict writes labels, never scores): a checkpoint's graph returns uint8
    labels, which skips the logits' copy and the front's argmax per frame (the same labels at the model's own
    size; with ``size`` the labels of a resized image are resized back nearest-neighbour); an exported
    artifact keeps the output it was written with. ``streams`` (videos and cameras): frames inferred at once
    on the graph compiled for that many parallel requests over the same threads (OpenVINO streams,
    :meth:`Segmenter.concurrent`; other runtimes run one at a time), re-ordered before the sink; default
    ``None``: 2 for video files (1.2x the end-to-end FPS of one request on all threads here, docs/deploy.md),
    1 for cameras (a frame's latency is lowest on all threads at once).
    Returns a :class:`PredictSummary` (``backend``/``precision`` say what ran; ``graph_fps``: the graph
    alone, measured after the last video).
    """
    if video_preset not in X264_PRESETS:
        raise ValueError(f"video_preset: {video_preset!r} is not an x264 preset ({', '.join(X264_PRESETS)})")
    items = resolve_sources(sources)  # bad arguments fail here, before a model is built
    # never write over the sources (#14: a predict into its own input folder replaced its PNGs)
    check_out_dir([s.path for s in items if s.kind != "camera"], out_dir, what="out_dir")
    seg = weights if isinstance(weights, Segmenter) else Segmenter(
        weights, backend=backend, precision=precision, size=size, graph_argmax=graph_argmax, **segmenter_kw)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # what a killed predict left (its outputs are written under temp names)
    opts = {"overlay": overlay, "side_by_side": side_by_side, "save_frames": save_frames, "alpha": alpha,
            "queue": max(1, int(queue_depth)),
            "preset": video_preset, "streams": None if streams is None else max(1, int(streams))}
    run = _Run(seg, out, opts, progress, sum(s.kind == "image" for s in items))
    seg.reset_speed()
    run.graph_image = None
    try:
        for src in items:
            run.image(src) if src.kind == "image" else run.video(src)
    finally:
        run.close()
    if run.graph_image is not None:
        run.summary.graph_fps = round(_graph_fps(seg, run.graph_image), 2)
        parallel = [c for c in run.concurrent.values() if c[1] > 1]
        if parallel:
            run.summary.graph_fps_streams = round(_graph_fps_concurrent(
                seg, run.graph_image, parallel[0][0].run, parallel[0][1]), 2)
    return run.summary
