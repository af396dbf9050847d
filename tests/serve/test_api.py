"""``rtseg serve`` HTTP / WebSocket API over real HTTP on 127.0.0.1: outputs equal ``Segmenter``'s, every bad
input gets a one-line 4xx JSON error and the server keeps serving, a full queue answers 503, the live
socket drops stale frames instead of queueing them, and the CLI refuses bad arguments before loading."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="rtseg serve tests need the extra: pip install 'rtseg[serve]'")
pytest.importorskip("httpx", reason="rtseg serve tests need httpx: pip install 'rtseg[dev]'")

import httpx

import rtseg
from rtseg.cli import main
from rtseg.deploy.predictor import palette_for
from rtseg.eval.visualize import overlay
from rtseg.serve import create_app

from .serve_helpers import app_server, make_frames, png_bytes

MAX_UPLOAD = 300_000
MAX_PIXELS = 2_000_000


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_frames(1, 180, 240)[0]  # half-size CamVid frame: real content, quick on one thread


@pytest.fixture(scope="module")
def server(segmenter):
    app = create_app(segmenter, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, queue_size=4)
    with app_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def post(client: httpx.Client, data: bytes, query: str = "", name: str = "frame.png") -> httpx.Response:
    return client.post(f"/predict{query}", files={"file": (name, data, "application/octet-stream")})


def test_health_describes_the_model(server, segmenter):
    h = server.get("/health").json()
    assert h["status"] == "ok"
    assert h["model"] == "enet_camvid"
    assert h["classes"] == segmenter.class_names and h["num_classes"] == 11
    assert h["palette"] == palette_for(segmenter.model, 11).tolist()
    assert (h["backend"], h["precision"], h["input_size"]) == ("torch", "fp32", None)
    assert h["version"] == rtseg.__version__
    assert h["queue"] == {"pending": 0, "size": 4}
    assert h["live"] == {"connections": 0, "frames": 0, "dropped": 0}
    assert h["limits"] == {"max_upload_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS}


def test_labels_equal_segmenter_predict(server, segmenter, image):
    r = post(server, png_bytes(image))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as png:
        assert png.mode == "P"
        labels = np.asarray(png)
        pal = np.asarray(png.getpalette()[: 3 * 11], np.uint8).reshape(11, 3)
    expected = segmenter.predict(image)
    assert labels.shape == image.shape[:2]
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(pal, palette_for(segmenter.model, 11))
    assert len(np.unique(expected)) > 2  # a real scene, not a constant map
    timing = dict(p.strip().split(";dur=") for p in r.headers["server-timing"].split(","))
    assert set(timing) == {"decode", "queue", "inference", "encode", "total"}
    assert 0 < float(timing["inference"]) <= float(timing["total"])


def test_overlay_equals_predict_overlay(server, segmenter, image):
    r = post(server, png_bytes(image), "?format=overlay&alpha=0.3")
    assert r.status_code == 200
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    want = overlay(image, segmenter.predict(image), palette_for(segmenter.model, 11), 0.3)
    np.testing.assert_array_equal(got, want)


def test_json_shares_and_timings(server, segmenter, image):
    r = post(server, png_bytes(image), "?format=json")
    assert r.status_code == 200
    body = r.json()
    counts = np.bincount(segmenter.predict(image).ravel(), minlength=11)
    assert (body["width"], body["height"]) == (240, 180)
    assert [c["pixels"] for c in body["classes"]] == counts.tolist()
    assert [c["name"] for c in body["classes"]] == segmenter.class_names
    assert sum(c["share"] for c in body["classes"]) == pytest.approx(1.0, abs=1e-4)
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "encode", "total"}
    assert body["timings_ms"]["inference"] > 0


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "JPEG"])
def test_other_image_kinds_are_converted_like_the_segmenter(server, segmenter, image, mode):
    im = Image.fromarray(image)
    buf = io.BytesIO()
    if mode == "JPEG":
        im.save(buf, format="JPEG", quality=90)
    else:
        (im.quantize(64) if mode == "P" else im.convert(mode)).save(buf, format="PNG")
    r = post(server, buf.getvalue())
    assert r.status_code == 200
    with Image.open(io.BytesIO(buf.getvalue())) as src:
        want = segmenter.predict(np.asarray(src.convert("RGB")))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want)


def _tiff_float() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def test_16_bit_uploads_are_scaled_like_files(server, segmenter) -> None:
    """A 16-bit PNG is read as rtseg reads it from disk (rtseg.data.io: scaled to 8 bits, not white)."""
    gray = np.random.default_rng(0).integers(0, 65536, (48, 64), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    r = post(server, buf.getvalue(), name="a.png")
    assert r.status_code == 200
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    eight = ((gray.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    np.testing.assert_array_equal(got, segmenter.predict(np.repeat(eight[..., None], 3, axis=2)))


def _huge_png() -> bytes:  # 2000 x 1500 = 3 Mpx of zeros: a few KB on the wire
    buf = io.BytesIO()
    Image.new("L", (2000, 1500)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png() -> bytes:  # 20000 x 20000 1-bit: 400 Mpx behind ~50 kB, over Pillow's own guard too
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


BAD_INPUTS = {
    # name: (request kwargs builder, expected status, words the error must contain)
    "not an image": (lambda img: {"files": {"file": ("a.png", b"hello, world", "image/png")}}, 415, "not an image"),
    "empty body": (lambda img: {"files": {"file": ("a.png", b"", "image/png")}}, 400, "empty upload"),
    "truncated png": (lambda img: {"files": {"file": ("a.png", png_bytes(img)[:300], "image/png")}}, 400,
                      "truncated"),
    "float mode": (lambda img: {"files": {"file": ("a.tif", _tiff_float(), "image/tiff")}}, 415, "mode 'F'"),
    "too many pixels": (lambda img: {"files": {"file": ("a.png", _huge_png(), "image/png")}}, 413, "Mpx"),
    "decompression bomb": (lambda img: {"files": {"file": ("a.png", _bomb_png(), "image/png")}}, 413,
                           "limit of 2.0 Mpx"),
    "oversized upload": (lambda img: {"files": {"file": ("a.bin", bytes(MAX_UPLOAD + 1), "image/png")}}, 413,
                         "upload too large"),
    "oversized chunked upload": (lambda img: {"content": iter([bytes(100_000)] * 4),
                                              "headers": {"content-type": "multipart/form-data; boundary=x"}},
                                 413, "upload too large"),
    "no multipart": (lambda img: {"content": png_bytes(img), "headers": {"content-type": "image/png"}}, 422,
                     "missing multipart field 'file'"),
    "wrong field": (lambda img: {"files": {"image": ("a.png", png_bytes(img), "image/png")}}, 422,
                    "missing multipart field 'file'"),
    "text instead of file": (lambda img: {"data": {"file": "frame.png"}}, 422, "'file'"),
    "unsupported format": (lambda img: {"files": {"file": ("a.png", png_bytes(img))}, "params": {"format": "jpeg"}},
                           422, "query parameter 'format'"),
    "alpha out of range": (lambda img: {"files": {"file": ("a.png", png_bytes(img))},
                                        "params": {"format": "overlay", "alpha": "1.5"}}, 422, "'alpha'"),
    "unknown query parameter": (lambda img: {"files": {"file": ("a.png", png_bytes(img))}, "params": {"fromat": "json"}},
                                422, "unknown query parameter 'fromat'"),
    "alpha not a number": (lambda img: {"files": {"file": ("a.png", png_bytes(img))}, "params": {"alpha": "half"}},
                           422, "'alpha'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_json_error(server, image, case):
    build, status, words = BAD_INPUTS[case]
    r = server.post("/predict", **build(image))
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert "\n" not in body["error"]
    assert words in body["error"], body["error"]
    assert server.get("/health").status_code == 200  # still serving


def test_wrong_method_and_path_are_json_too(server):
    r = server.get("/predict")
    assert r.status_code == 405 and list(r.json()) == ["error"]
    r = server.get("/no-such-page")
    assert r.status_code == 404 and list(r.json()) == ["error"]


def test_page_and_docs_are_served(server):
    page = server.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset.split("/")[-1] in page.text
        assert server.get(asset).status_code == 200
    assert server.get("/docs").status_code == 200
    spec = server.get("/openapi.json").json()
    assert "/predict" in spec["paths"] and "/health" in spec["paths"]
    params = {p["name"]: p for p in spec["paths"]["/predict"]["post"]["parameters"]}
    assert params["format"]["schema"]["enum"] == ["labels", "overlay", "json"]


class GatedSegmenter:
    """A real segmenter whose ``predict`` waits for ``gate``: makes queue states deterministic."""

    def __init__(self, seg) -> None:
        self._seg, self.gate, self.calls = seg, threading.Event(), 0

    def __getattr__(self, name):
        return getattr(self._seg, name)

    def predict(self, image):
        self.calls += 1
        assert self.gate.wait(30), "test gate never opened"
        return self._seg.predict(image)


def test_full_queue_answers_503_and_recovers(segmenter, image):
    gated = GatedSegmenter(segmenter)
    app = create_app(gated, queue_size=2)
    data = png_bytes(image)
    with app_server(app) as url, httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post, client, data) for _ in range(2)]  # fill the queue: one running, one waiting
        deadline = time.monotonic() + 20
        while client.get("/health").json()["queue"]["pending"] < 2:
            assert time.monotonic() < deadline, "queue never filled"
            time.sleep(0.02)
        r = post(client, data)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "server busy" in r.json()["error"]
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert post(client, data).status_code == 200
        assert gated.calls == 3  # the refused request never reached the model


def test_websocket_keeps_only_the_newest_frame(segmenter, image):
    from websockets.sync.client import connect

    gated = GatedSegmenter(segmenter)
    app = create_app(gated)
    frames = make_frames(5, 90, 120)
    with app_server(app) as url, connect(url.replace("http", "ws") + "/ws") as ws:
        for i, f in enumerate(frames, 1):  # the first frame the server takes blocks in the model
            ws.send(struct.pack(">I", i) + png_bytes(f))
        deadline = time.monotonic() + 30
        while (live := httpx.get(url + "/health").json()["live"])["frames"] < 5:
            assert time.monotonic() < deadline, f"the server never received the 5 frames: {live}"
            time.sleep(0.05)
        # one frame went to the (blocked) model; of those that came after it only the newest waits: 3 dropped
        # (4 if the server read all five before taking one)
        assert live["connections"] == 1 and live["dropped"] in (3, 4)
        gated.gate.set()
        answers = []
        while not answers or answers[-1][0]["id"] != 5:
            meta = json.loads(ws.recv(timeout=30))
            answers.append((meta, np.asarray(Image.open(io.BytesIO(ws.recv(timeout=30))))))
        assert len(answers) == 5 - live["dropped"]  # never queued: at most the running frame and the newest
        assert [m["id"] for m, _ in answers] == sorted(m["id"] for m, _ in answers)
        meta = answers[-1][0]
        assert meta["dropped"] == live["dropped"]
        assert (meta["width"], meta["height"]) == (120, 90)
        assert sum(meta["shares"]) == pytest.approx(1.0, abs=1e-4)
        for m, lab in answers:
            np.testing.assert_array_equal(lab, segmenter.predict(frames[m["id"] - 1]))
        # bad frames get an error message and the socket stays usable
        ws.send(b"\x00\x01")
        assert "4-byte big-endian frame id" in json.loads(ws.recv(timeout=30))["error"]
        ws.send(struct.pack(">I", 9) + b"not an image")
        err = json.loads(ws.recv(timeout=30))
        assert err["id"] == 9 and "not an image" in err["error"] and err["busy"] is False
        ws.send(struct.pack(">I", 10) + png_bytes(frames[1]))
        assert json.loads(ws.recv(timeout=30))["id"] == 10
        assert isinstance(ws.recv(timeout=30), bytes)
    assert gated.calls == len(answers) + 1  # the answered frames and frame 10


def test_websocket_client_leaving_mid_frame_does_not_hurt(segmenter):
    from websockets.sync.client import connect

    gated = GatedSegmenter(segmenter)
    app = create_app(gated)
    frame = png_bytes(make_frames(1, 90, 120)[0])
    with app_server(app) as url:
        with connect(url.replace("http", "ws") + "/ws") as ws:
            ws.send(struct.pack(">I", 1) + frame)
            deadline = time.monotonic() + 30
            while gated.calls == 0:  # the frame is in the model when the client leaves
                assert time.monotonic() < deadline
                time.sleep(0.02)
        gated.gate.set()
        deadline = time.monotonic() + 30
        while (health := httpx.get(url + "/health").json())["live"]["connections"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["queue"]["pending"] == 0
        with connect(url.replace("http", "ws") + "/ws") as ws:  # and the next client is served
            ws.send(struct.pack(">I", 2) + frame)
            assert json.loads(ws.recv(timeout=30))["id"] == 2


def test_cli_names_the_extra_before_loading(monkeypatch, capsys):
    import rtseg.serve
    import rtseg.serve.app

    def serve(*args, **kwargs):
        raise AssertionError("the server was started before the dependency check")

    monkeypatch.setattr(rtseg.serve, "missing_dependencies", lambda: ["fastapi", "uvicorn"])
    monkeypatch.setattr(rtseg.serve.app, "serve", serve)
    assert main(["serve", "--weights", "enet_camvid"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rtseg serve: error: needs fastapi, uvicorn: pip install 'rtseg[serve]'"


@pytest.mark.parametrize("argv, words", [
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--queue-size", "0"], "--queue-size must be positive"),
    (["--max-upload-mb", "-1"], "--max-upload-mb must be positive"),
    (["--precision", "int8", "--backend", "openvino"], "needs --calib"),
])
def test_cli_refuses_bad_arguments(argv, words, capsys):
    assert main(["serve", "--weights", "enet_camvid", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_cli_reports_a_taken_port(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--weights", "enet_camvid", "--threads", "1", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{port}" in err
