"""The ``rtseg serve`` ASGI app: one :class:`rtseg.Segmenter`, an HTTP API, a WebSocket for live frames, a page.

Routes:

- ``GET /health``: model, classes, palette, backend, precision, input size, version, queue state, and the
  live counters (open WebSockets, frames received, frames dropped).
- ``POST /predict?format=labels|overlay|json[&alpha=0.5]`` with a multipart field ``file`` (an image):
  ``labels`` is the indexed PNG of class ids that ``rtseg predict`` writes (pixels equal to
  ``Segmenter.predict``), ``overlay`` a colour blend PNG, ``json`` per-class pixel shares and timings.
  Timings also come in the standard ``Server-Timing`` header.
- ``WS /ws``: binary messages ``uint32 frame id (big-endian) + encoded image``; each answered by a JSON text
  message (id, shares, timings or ``error``) followed, on success, by the labels PNG as a binary message.
  When frames arrive faster than the model runs, only the newest waiting frame is kept (the rest are
  counted as ``dropped``), so a slow model never builds a backlog.
- ``GET /`` the page, ``/static/*`` its assets, ``/docs`` and ``/openapi.json`` the API description.

Inference runs in one worker thread that owns the segmenter, so the event loop never blocks and the
runtime is never entered by two threads. Requests wait in a bounded queue (``queue_size`` jobs waiting or
running); beyond it the answer is 503 at once. Decoding and PNG encoding run in a small thread pool beside it.
Bad input is answered with a 4xx ``{"error": "..."}`` naming the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

try:
    import uvicorn
    from fastapi import FastAPI, File, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # the one-line hint names the extra, not a traceback into FastAPI
    raise ImportError(f"rtseg serve needs {e.name}: pip install 'rtseg[serve]'") from None
from PIL import Image, UnidentifiedImageError

from rtseg._version import __version__
from rtseg.data.io import IMAGE_MODES, image_to_rgb
from rtseg.deploy.segmenter import Segmenter
from rtseg.serve._compat import blend, palette

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD", "DEFAULT_QUEUE", "InferenceWorker", "ServeError",
           "create_app", "decode_image", "serve"]

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD = 10 * 2**20  # bytes of request body (multipart overhead included)
DEFAULT_MAX_PIXELS = 4096 * 4096  # decoded pixels; a small PNG can expand to gigabytes
DEFAULT_QUEUE = 16  # jobs waiting or running; more -> 503
#: Pillow modes that convert to 8-bit RGB without losing meaning; 16-bit / float ("I;16", "I", "F") do not
FORMATS = ("labels", "overlay", "json")


class ServeError(Exception):
    """A request the server refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _busy(queue_size: int) -> ServeError:
    return ServeError(503, f"server busy: {queue_size} requests already queued or running (--queue-size); "
                           "retry later")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, field: str = "file") -> np.ndarray:
    """Encoded image bytes -> ``H x W x 3`` uint8 RGB; raises :class:`ServeError` naming what is wrong."""
    if not data:
        raise ServeError(400, f"empty upload: field {field!r} holds no bytes")
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only: the size is known before any decoding
    except UnidentifiedImageError:
        raise ServeError(415, f"field {field!r} is not an image Pillow can read ({len(data)} bytes; send PNG, "
                              "JPEG, BMP, WebP, TIFF, ...)") from None
    except Image.DecompressionBombError as e:  # Pillow's own guard (over 2x Image.MAX_IMAGE_PIXELS)
        raise ServeError(413, f"image over the server's limit of {max_pixels / 1e6:.1f} Mpx (--max-megapixels): "
                              f"{e}") from None
    except OSError as e:
        raise ServeError(400, f"field {field!r}: unreadable image ({e})") from None
    w, h = im.size
    if w * h > max_pixels:
        raise ServeError(413, f"image is {w}x{h} = {w * h / 1e6:.1f} Mpx, over the server's limit of "
                              f"{max_pixels / 1e6:.1f} Mpx (--max-megapixels)")
    if im.mode not in IMAGE_MODES:
        raise ServeError(415, f"unsupported image mode {im.mode!r} (float or signed pixels); send 8- or 16-bit "
                              "RGB, RGBA, grayscale or palette images")
    try:
        im.load()
    except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt data shows up at load time
        raise ServeError(400, f"field {field!r}: corrupt or truncated {im.format} image ({e})") from None
    try:
        return image_to_rgb(im, f"field {field!r}")  # the one conversion every rtseg reader uses (rtseg.data.io)
    except ValueError as e:
        raise ServeError(415, str(e)) from None


def encode_labels(labels: np.ndarray, colours: np.ndarray) -> bytes:
    """``H x W`` uint8 class ids -> indexed PNG bytes (ids in the pixels, colours in the palette)."""
    img = Image.fromarray(np.ascontiguousarray(labels, np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(colours)] = colours
    img.putpalette(pal.flatten().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # level 1: a few ms at 360x480, ~same size for flat labels
    return buf.getvalue()


def encode_rgb(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def class_shares(labels: np.ndarray, num_classes: int) -> tuple[list[int], list[float]]:
    """Per-class pixel counts and fractions of ``labels`` (ids outside ``[0, num_classes)`` are not counted)."""
    counts = np.bincount(labels.ravel(), minlength=256)[:num_classes]
    total = max(int(labels.size), 1)
    return [int(c) for c in counts], [round(float(c) / total, 6) for c in counts]


class InferenceWorker:
    """Runs ``segmenter.predict`` in one thread; at most ``queue_size`` jobs waiting or running.

    ``await worker.predict(image)`` -> ``(labels, queue_ms, inference_ms)``; raises :class:`ServeError` 503
    when the queue is full. Jobs whose caller went away (cancelled futures) are skipped, not run.
    """

    def __init__(self, segmenter: Segmenter, queue_size: int = DEFAULT_QUEUE) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.segmenter, self.queue_size = segmenter, int(queue_size)
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self.served = 0
        self._thread = threading.Thread(target=self._loop, name="rtseg-serve-inference", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def full(self) -> bool:
        return self._pending >= self.queue_size

    async def predict(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._lock:
            if self._pending >= self.queue_size:
                raise _busy(self.queue_size)
            self._pending += 1
        self._jobs.put((image, fut, loop, time.perf_counter()))
        return await fut

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            image, fut, loop, queued = job
            result: Any = None
            ok = False
            if not fut.cancelled():  # a caller that went away is not worth a model run
                t0 = time.perf_counter()
                try:
                    result = (self.segmenter.predict(image), (t0 - queued) * 1e3, (time.perf_counter() - t0) * 1e3)
                    ok = True
                except Exception as e:  # noqa: BLE001 -- reported to the request, the thread lives on
                    result = e
                self.served += 1
            with self._lock:  # free the slot before answering: a caller who got its answer sees it free
                self._pending -= 1
            if result is not None:
                try:
                    loop.call_soon_threadsafe(_settle, fut, result, ok)
                except RuntimeError:  # the caller's event loop is closed: nobody to answer
                    pass

    def close(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)


def _settle(fut: asyncio.Future, result: Any, ok: bool) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(result)
    else:
        fut.set_exception(result)


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, before the app parses them, and
    uploads to ``/predict`` while ``busy()`` says the queue is full with 503, before reading them.

    A declared ``Content-Length`` over the limit is refused without reading; otherwise the body is read
    (counting, so a chunked upload cannot slip past) and replayed to the app.
    """

    def __init__(self, app: Any, max_bytes: int, busy: Callable[[], ServeError | None] | None = None) -> None:
        self.app, self.max_bytes, self.busy = app, int(max_bytes), busy

    def _refuse(self, size: str) -> JSONResponse:
        return JSONResponse({"error": f"upload too large: {size}, over the server's limit of "
                                      f"{self.max_bytes / 2**20:.1f} MiB (--max-upload-mb)"}, status_code=413)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        refusal = self.busy() if self.busy is not None and scope["path"] == "/predict" else None
        if refusal is not None:  # queue full: refuse before reading (and holding) the upload
            return await JSONResponse({"error": str(refusal)}, status_code=503,
                                      headers={"Retry-After": "1"})(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(f"{int(declared) / 2**20:.1f} MiB declared")(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(f"more than {size / 2**20:.1f} MiB sent")(scope, receive, send)
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors -> one line naming the parameter, what was wrong and what was sent."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where, name = (loc[0], ".".join(loc[1:])) if len(loc) > 1 else ("request", ".".join(loc))
        if where == "body" and err.get("type") == "missing":
            parts.append(f"missing multipart field {name!r} (send multipart/form-data, e.g. curl -F {name}=@image.png)")
            continue
        kind = {"query": "query parameter", "body": "field", "path": "path parameter"}.get(where, where)
        got = err.get("input")
        sent = f" (got {got!r})" if isinstance(got, (str, int, float)) and len(repr(got)) < 80 else ""
        parts.append(f"{kind} {name!r}: {err.get('msg', 'invalid')}{sent}")
    return "; ".join(parts) or "invalid request"


class _Service:
    """What the routes share: the segmenter's worker, the codec pool, class names and colours, the limits."""

    def __init__(self, segmenter: Segmenter, max_upload_bytes: int, max_pixels: int, queue_size: int) -> None:
        self.segmenter, self.max_upload_bytes, self.max_pixels = segmenter, max_upload_bytes, max_pixels
        self.worker = InferenceWorker(segmenter, queue_size)
        # Decoding / encoding: a few threads of our own, not Starlette's pool of 40 -- 50 concurrent uploads in
        # 40 threads meant 40 malloc arenas' worth of image buffers (RSS grew ~57 MiB over 500 360x480 requests).
        self.codec_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                             thread_name_prefix="rtseg-serve-codec")
        self.colours = palette(segmenter)
        self.names = list(segmenter.class_names or [f"class {i}" for i in range(segmenter.num_classes)])
        meta = getattr(segmenter.model, "rtseg_meta", None) or {}
        self.info = segmenter.info()
        self.model_name = meta.get("shipped_as") or self.info["model"]
        self.live_totals = {"connections": 0, "frames": 0, "dropped": 0}  # WebSocket counters, shown by /health

    async def off_loop(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.codec_pool, fn, *args)

    async def segment(self, data: bytes, field: str) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """bytes -> (image, labels, timings in ms); 503 before decoding when the queue is already full."""
        if self.worker.full():
            raise _busy(self.worker.queue_size)
        t0 = time.perf_counter()
        image = await self.off_loop(decode_image, data, self.max_pixels, field)
        decode_ms = (time.perf_counter() - t0) * 1e3
        try:
            labels, queue_ms, infer_ms = await self.worker.predict(image)
        except ServeError:
            raise
        except Exception as e:  # noqa: BLE001 -- a model that cannot take this image: the request's fault
            h, w = image.shape[:2]
            raise ServeError(422, f"the model could not segment this {w}x{h} image ({type(e).__name__}: {e})") from None
        return image, labels, {"decode_ms": decode_ms, "queue_ms": queue_ms, "inference_ms": infer_ms}

    def shares_dict(self, labels: np.ndarray) -> list[dict[str, Any]]:
        counts, shares = class_shares(labels, self.segmenter.num_classes)
        return [{"id": i, "name": self.names[i], "pixels": c, "share": s}
                for i, (c, s) in enumerate(zip(counts, shares))]

    def health(self) -> dict[str, Any]:
        seg, worker = self.segmenter, self.worker
        return {"status": "ok", "model": self.model_name, "architecture": self.info["model"],
                "classes": self.names, "num_classes": seg.num_classes, "palette": self.colours.tolist(),
                "backend": seg.backend, "precision": seg.precision,
                "input_size": list(seg.size) if seg.size else None, "threads": seg.threads,
                "graph_argmax": seg.graph_argmax, "version": __version__,
                "queue": {"pending": worker.pending, "size": worker.queue_size}, "live": dict(self.live_totals),
                "limits": {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels}}

    async def predict(self, request: Request, file: UploadFile, format: str, alpha: float) -> Response:
        t_start = time.perf_counter()
        unknown = sorted(set(request.query_params) - {"format", "alpha"})
        if unknown:  # a misspelt "fromat=json" would otherwise silently answer a PNG
            raise ServeError(422, f"unknown query parameter {unknown[0]!r} (known: format, alpha)")
        data = await file.read()
        image, labels, t = await self.segment(data, "file")
        t0 = time.perf_counter()
        if format == "json":
            t["encode_ms"] = 0.0
            h, w = labels.shape
            body: dict[str, Any] = {"model": self.model_name, "width": w, "height": h,
                                    "classes": self.shares_dict(labels)}
            t["total_ms"] = (time.perf_counter() - t_start) * 1e3
            body["timings_ms"] = {k[:-3]: round(v, 3) for k, v in t.items()}
            return JSONResponse(body, headers={"Server-Timing": _timing_header(t)})
        if format == "labels":
            png = await self.off_loop(encode_labels, labels, self.colours)
        else:
            png = await self.off_loop(lambda: encode_rgb(blend(image, labels, self.colours, alpha)))
        t["encode_ms"] = (time.perf_counter() - t0) * 1e3
        t["total_ms"] = (time.perf_counter() - t_start) * 1e3
        return Response(png, media_type="image/png", headers={"Server-Timing": _timing_header(t)})

    async def answer_frame(self, ws: WebSocket, data: bytes, t_in: float, dropped: int) -> None:
        """One live frame: a 4-byte big-endian id, then an encoded image -> JSON shares/timings, then labels PNG."""
        if len(data) < 5:
            await ws.send_text(json.dumps({"id": None, "error": "frame message must be a 4-byte big-endian "
                                                                "frame id followed by an encoded image"}))
            return
        (fid,) = struct.unpack(">I", data[:4])
        if len(data) - 4 > self.max_upload_bytes:
            await ws.send_text(json.dumps({"id": fid, "error": f"frame of {len(data) - 4} bytes is over "
                                                               f"the limit of {self.max_upload_bytes} bytes"}))
            return
        try:
            _, labels, t = await self.segment(data[4:], "frame")
            t0 = time.perf_counter()
            png = await self.off_loop(encode_labels, labels, self.colours)
            t["encode_ms"] = (time.perf_counter() - t0) * 1e3
        except ServeError as e:
            await ws.send_text(json.dumps({"id": fid, "error": str(e), "busy": e.status == 503}))
            return
        t["total_ms"] = (time.perf_counter() - t_in) * 1e3
        h, w = labels.shape
        await ws.send_text(json.dumps({
            "id": fid, "width": w, "height": h, "shares": class_shares(labels, self.segmenter.num_classes)[1],
            "timings_ms": {k[:-3]: round(v, 2) for k, v in t.items()}, "dropped": dropped}))
        await ws.send_bytes(png)

    async def live(self, ws: WebSocket) -> None:
        """Frames at the server's pace: only the newest waiting frame is kept, older ones are dropped."""
        await ws.accept()
        latest: list[Any] = [None]  # the newest frame not yet taken: (bytes, arrival time)
        arrived = asyncio.Event()
        stats = {"dropped": 0, "closed": False}
        totals = self.live_totals

        async def reader() -> None:
            try:
                while True:
                    msg = await ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        break
                    data = msg.get("bytes")
                    if data is None:  # text: nothing to control yet; ignore rather than fail
                        continue
                    totals["frames"] += 1
                    if latest[0] is not None:
                        stats["dropped"] += 1  # a newer frame replaces the waiting one: drop, never queue
                        totals["dropped"] += 1
                    latest[0] = (data, time.perf_counter())
                    arrived.set()
            finally:
                stats["closed"] = True
                arrived.set()

        task = asyncio.create_task(reader())
        totals["connections"] += 1
        try:
            while True:
                await arrived.wait()
                arrived.clear()
                if stats["closed"]:
                    break
                frame, latest[0] = latest[0], None
                if frame is not None:
                    await self.answer_frame(ws, *frame, stats["dropped"])
        except (WebSocketDisconnect, RuntimeError, OSError):  # client gone mid-send (uvicorn: ClientDisconnected)
            pass
        finally:
            task.cancel()
            totals["connections"] -= 1


def _timing_header(t: dict[str, float]) -> str:
    return ", ".join(f"{k[:-3]};dur={v:.2f}" for k, v in t.items())


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(request: Any, exc: ServeError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def _add_routes(app: FastAPI, svc: _Service) -> None:
    @app.get("/health", summary="Model, classes, runtime and queue state")
    async def health() -> dict[str, Any]:
        return svc.health()

    @app.post("/predict", summary="Segment one image",
              responses={200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "labels / overlay PNG, or JSON shares and timings"},
                         400: {"description": "empty or corrupt upload"}, 413: {"description": "upload too large"},
                         415: {"description": "not an image / unsupported mode"},
                         422: {"description": "bad query value or missing field"},
                         503: {"description": "queue full"}})
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="the image (PNG, JPEG, ...), any size up to the limits")],
        format: Annotated[Literal["labels", "overlay", "json"], Query(
            description="labels: indexed PNG of class ids; overlay: colour blend PNG; json: shares")] = "labels",
        alpha: Annotated[float, Query(ge=0.0, le=1.0, description="overlay opacity (format=overlay)")] = 0.5,
    ) -> Response:
        return await svc.predict(request, file, format, alpha)

    @app.websocket("/ws")
    async def live(ws: WebSocket) -> None:
        await svc.live(ws)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def create_app(segmenter: Segmenter, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
               max_pixels: int = DEFAULT_MAX_PIXELS, queue_size: int = DEFAULT_QUEUE,
               close_segmenter: bool = False) -> FastAPI:
    """The ASGI app serving ``segmenter`` (loaded once; run only by the app's inference thread).

    ``max_upload_bytes``: largest request body; ``max_pixels``: largest decoded image (width x height);
    ``queue_size``: requests waiting or running before new ones get 503. ``close_segmenter``: also close the
    segmenter when the app shuts down (when the app owns it).
    """
    if max_upload_bytes < 1 or max_pixels < 1:
        raise ValueError(f"max_upload_bytes and max_pixels must be positive, got {max_upload_bytes}, {max_pixels}")
    svc = _Service(segmenter, max_upload_bytes, max_pixels, queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        svc.worker.close()
        svc.codec_pool.shutdown(wait=False, cancel_futures=True)
        if close_segmenter:
            segmenter.close()

    app = FastAPI(title="rtseg serve", version=__version__, lifespan=lifespan,
                  description=f"Semantic segmentation with {svc.model_name} ({segmenter.backend}/{segmenter.precision}).")
    app.state.worker, app.state.segmenter = svc.worker, segmenter
    app.add_middleware(_BodyLimit, max_bytes=max_upload_bytes,
                       busy=lambda: _busy(svc.worker.queue_size) if svc.worker.full() else None)
    _add_error_handlers(app)
    _add_routes(app, svc)
    return app


def serve(weights: Any, backend: str = "torch", precision: str = "fp32", size: tuple[int, int] | None = None,
          host: str = "127.0.0.1", port: int = 8000, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
          max_pixels: int = DEFAULT_MAX_PIXELS, queue_size: int = DEFAULT_QUEUE, log_level: str = "warning",
          **segmenter_kw: Any) -> None:
    """Load ``weights`` once into a :class:`rtseg.Segmenter` and serve it on ``host:port`` until interrupted.

    ``port=0`` picks a free port. Prints ``rtseg serve: http://HOST:PORT/ ...`` once the socket listens.
    """
    seg = weights if isinstance(weights, Segmenter) else Segmenter(
        weights, backend=backend, precision=precision, size=size, **segmenter_kw)
    app = create_app(seg, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, queue_size=queue_size,
                     close_segmenter=not isinstance(weights, Segmenter))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    name = (getattr(seg.model, "rtseg_meta", None) or {}).get("shipped_as") or seg.info()["model"]
    print(f"rtseg serve: http://{shown}:{bound}/ ({name}, {seg.backend}/{seg.precision}, "
          f"built in {seg.build_seconds:.1f} s; API docs /docs; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level=log_level, ws="auto", ws_max_size=max_upload_bytes + 4,
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
