"""``rtseg.predict``: segment image files, folders, glob patterns, videos and cameras into label PNGs,
colour overlays and side-by-side videos, on any :class:`rtseg.Segmenter` backend.

Outputs in ``out_dir`` (``<stem>`` = the source file's name without suffix):

- image: ``<stem>.png`` (indexed PNG: raw class ids in the pixels, the palette for viewing),
  ``<stem>_overlay.png`` with ``overlay=True``, ``<stem>_side.png`` (image | overlay) with ``side_by_side=True``;
- video / camera: ``<stem>_overlay.mp4`` and/or ``<stem>_side.mp4``; with neither flag, ``<stem>_labels.mp4``
  (colourised labels); ``save_frames=True`` also writes every frame's label PNG into ``<stem>_labels/``.

Missing files, unsupported formats and unopenable videos are refused before any work starts; a frame that
cannot be decoded mid-video is reported and skipped, and the rest of the video is still written.
"""

from __future__ import annotations

import glob
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.segmenter import IMAGE_SUFFIXES, Segmenter, _read_image

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


def palette_for(model: Any, num_classes: int) -> np.ndarray:
    """``num_classes x 3`` uint8 colours: the checkpoint's palette, its dataset's, or a generated one."""
    from rtseg.data.base import default_palette

    meta = getattr(model, "rtseg_meta", None) or {}
    if meta.get("palette") is not None:
        pal = np.asarray(meta["palette"], np.uint8)
    else:
        pal = None
        ds = str(meta.get("dataset") or "").lower()
        if ds == "camvid":
            from rtseg.data.camvid import CAMVID_PALETTE as pal
        elif ds == "synthetic":
            from rtseg.data.synthetic import SYNTHETIC_PALETTE as pal
        elif ds == "cityscapes":
            try:
                from rtseg.data.cityscapes import cityscapes_meta

                pal = cityscapes_meta().palette
            except Exception:  # noqa: BLE001 -- cityscapesscripts is optional; fall back to generated colours
                pal = None
    if pal is None or len(pal) < num_classes:
        base = default_palette(num_classes)
        if pal is not None:
            base[: len(pal)] = pal
        pal = base
    return np.asarray(pal, np.uint8)[:num_classes]


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

    def __init__(self, path: Path, fps: float) -> None:
        av = _av()
        from fractions import Fraction

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), mode="w")
        codec = next(c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available)
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
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

    def close(self) -> None:
        for pkt in self.stream.encode():
            self.container.mux(pkt)
        self.container.close()


# ----------------------------------------------------------------------------------------------- predict
def _side_by_side(image: np.ndarray, over: np.ndarray, gap: int = 4) -> np.ndarray:
    h = image.shape[0]
    return np.concatenate([image, np.full((h, gap, 3), 255, np.uint8), over], axis=1)


def predict(
    weights: str | os.PathLike | Any,
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    backend: str = "torch",
    precision: str = "fp32",
    size: tuple[int, int] | None = None,
    overlay: bool = False,
    side_by_side: bool = False,
    save_frames: bool = False,
    alpha: float = 0.5,
    progress: bool = True,
    **segmenter_kw: Any,
) -> PredictSummary:
    """Segment ``sources`` and write label PNGs / overlays / videos into ``out_dir``.

    ``weights``: checkpoint path, shipped weights name, model, or a ready :class:`Segmenter` (then
    ``backend``/``precision``/``size`` are ignored). Images are ``H x W x 3`` RGB at any resolution; outputs
    are at the source resolution. Returns a :class:`PredictSummary`.
    """
    from rtseg.eval.visualize import overlay as blend
    from rtseg.eval.visualize import save_label_png, save_png

    items = resolve_sources(sources)  # bad arguments fail here, before a model is built
    seg = weights if isinstance(weights, Segmenter) else Segmenter(
        weights, backend=backend, precision=precision, size=size, **segmenter_kw)
    palette = palette_for(seg.model, seg.num_classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    bar = None
    if progress:
        from rtseg.utils.progress import tqdm

        n_img = sum(s.kind == "image" for s in items)
        bar = tqdm(total=n_img or None, unit="img", desc="predict", dynamic_ncols=True)
    start = time.perf_counter()

    def tick(kind: str) -> None:
        if kind == "image":
            summary.images += 1
        else:
            summary.frames += 1
        if bar is not None:
            bar.update(1)
            el = time.perf_counter() - start
            bar.set_postfix(fps=f"{(summary.images + summary.frames) / el:.1f}" if el > 0 else "-")

    used: dict[str, int] = {}

    def unique(stem: str) -> str:  # two sources named a.png in different folders must not overwrite
        used[stem] = used.get(stem, 0) + 1
        return stem if used[stem] == 1 else f"{stem}_{used[stem]}"

    try:
        for src in items:
            stem = unique(src.stem)
            if src.kind == "image":
                try:
                    image = _read_image(src.path)
                except (ValueError, FileNotFoundError) as e:
                    summary.skipped.append(str(e))
                    warnings.warn(str(e), stacklevel=2)
                    continue
                labels = seg.predict(image)
                summary.outputs.append(str(save_label_png(labels, out / f"{stem}.png", palette)))
                if overlay or side_by_side:
                    ov = blend(image, labels, palette, alpha)
                    if overlay:
                        summary.outputs.append(str(save_png(ov, out / f"{stem}_overlay.png")))
                    if side_by_side:
                        summary.outputs.append(str(save_png(_side_by_side(image, ov), out / f"{stem}_side.png")))
                tick("image")
                continue
            frames = _Frames(src)
            writers: dict[str, _VideoWriter] = {}
            kinds = [k for k, on in (("overlay", overlay), ("side", side_by_side)) if on] or ["labels"]
            if bar is not None and frames.total:
                bar.total = (bar.total or 0) + frames.total
                bar.refresh()
            try:
                for i, image in enumerate(frames):
                    labels = seg.predict(image)
                    ov = blend(image, labels, palette, alpha) if ("overlay" in kinds or "side" in kinds) else None
                    for k in kinds:
                        if k not in writers:
                            writers[k] = _VideoWriter(out / f"{stem}_{k}.mp4", frames.fps)
                        if k == "overlay":
                            writers[k].write(ov)
                        elif k == "side":
                            writers[k].write(_side_by_side(image, ov))
                        else:
                            from rtseg.eval.visualize import colorize

                            writers[k].write(colorize(labels, palette))
                    if save_frames:
                        save_label_png(labels, out / f"{stem}_labels" / f"frame_{i:06d}.png", palette)
                    tick("frame")
            finally:
                frames.close()
                for w in writers.values():
                    w.close()
                    summary.outputs.append(str(w.path))
            for msg in frames.bad:
                summary.skipped.append(msg)
                if bar is not None:
                    bar.write(f"warning: {msg}")
                else:
                    warnings.warn(msg, stacklevel=2)
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - start
    return summary
