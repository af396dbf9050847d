"""The ``rtseg serve`` page in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``, driven by
Selenium) against the real ``rtseg serve`` process: a fake webcam fed from a clip shows segmented frames, an FPS
figure and the class legend; the opacity slider switches between the frame and the label colours; an image
file chosen in the page is shown with exactly the server's labels; a video file plays segmented. Screenshots go to test-artifacts/serve/."""

from __future__ import annotations

import base64
import io
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="rtseg serve tests need the extra: pip install 'rtseg[serve]'")
pytest.importorskip("httpx", reason="rtseg serve tests need httpx: pip install 'rtseg[dev]'")
selenium = pytest.importorskip("selenium", reason="the browser test needs selenium: pip install 'rtseg[dev]'")

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from .serve_helpers import camvid_paths, find_chromium, make_frames, png_bytes, write_y4m

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed: apt-get install -y chromium chromium-driver "
                             "(.ci/run installs them)")

CAMVID = len(camvid_paths(20)) == 20
# as root in a closed network: no sandbox, and none of Chromium's own background connections
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,860",
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return str(write_y4m(tmp_path_factory.mktemp("clip") / "street.y4m", make_frames(20), fps=10))


@pytest.fixture(scope="module")
def browser(clip):
    binary, driver_path = CHROMIUM
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="rtseg-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--use-file-for-fake-video-capture={clip}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def canvas_pixels(driver) -> np.ndarray:
    url = driver.execute_script("return document.getElementById('view').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def palette_share(pixels: np.ndarray, palette: np.ndarray) -> float:
    """Fraction of pixels whose colour is exactly one of the class colours."""
    codes = pixels.astype(np.int64) @ np.array([65536, 256, 1])
    return float(np.isin(codes, palette.astype(np.int64) @ np.array([65536, 256, 1])).mean())


def set_opacity(driver, value: float) -> str:
    driver.execute_script("const o = document.getElementById('opacity'); o.value = arguments[0];"
                          "o.dispatchEvent(new Event('input'));", str(value))
    return driver.find_element(By.ID, "opacity-value").text


def stats(driver) -> dict:
    return driver.execute_script("return window.rtsegStats")


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend li")) == 11)


def severe_console_messages(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_webcam_shows_segmented_frames_and_fps(browser, cli_server, segmenter, artifacts):
    palette = np.asarray(cli_server_health(cli_server)["palette"], np.uint8)
    open_page(browser, cli_server.url)
    assert "enet_camvid" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "camera-button").click()
    WebDriverWait(browser, 90).until(lambda d: stats(d)["frames"] >= 8, "no segmented frames from the webcam")
    fps = float(browser.find_element(By.ID, "fps").text)
    latency = float(browser.find_element(By.ID, "latency").text)
    assert 0 < fps < 100 and latency > 0
    assert int(browser.find_element(By.ID, "frames").text) >= 8
    s = stats(browser)
    assert s["source"] == "camera" and s["errors"] == 0
    assert sum(s["shares"]) == pytest.approx(1.0, abs=1e-3)
    shares_shown = [browser.find_element(By.ID, f"share-{i}").text for i in range(11)]
    assert all(t.endswith(" %") for t in shares_shown)
    if CAMVID:  # a real street: the biggest class is one of the big stuff classes
        names = segmenter.class_names
        assert names[int(np.argmax(s["shares"]))] in {"Road", "Building", "Sky", "Tree", "Pavement"}
    browser.save_screenshot(str(artifacts / "page_webcam.png"))

    browser.find_element(By.ID, "stop-button").click()  # freeze the last result, then switch the opacity
    assert set_opacity(browser, 1) == "1.00"
    solid = canvas_pixels(browser)
    assert solid.shape == (360, 480, 3)
    assert palette_share(solid, palette) > 0.99  # every pixel is a class colour: the labels
    assert len(np.unique(solid.reshape(-1, 3), axis=0)) >= 3
    assert set_opacity(browser, 0) == "0.00"
    frame = canvas_pixels(browser)
    assert palette_share(frame, palette) < 0.5 and frame.std() > 10  # the camera frame itself
    set_opacity(browser, 0.5)
    half = canvas_pixels(browser).astype(int)
    assert np.abs(half - (frame.astype(int) + solid.astype(int)) / 2).mean() < 2  # the blend of the two
    assert severe_console_messages(browser) == []


def test_image_file_shows_the_servers_labels(browser, cli_server, segmenter, artifacts, tmp_path):
    palette = np.asarray(cli_server_health(cli_server)["palette"], np.uint8)
    image = make_frames(1)[0]
    path = tmp_path / "street.png"
    path.write_bytes(png_bytes(image))
    open_page(browser, cli_server.url)
    browser.find_element(By.ID, "image-input").send_keys(os.fspath(path))
    WebDriverWait(browser, 60).until(lambda d: "480×360" in d.find_element(By.ID, "status").text,
                                     "the image result never showed")
    assert stats(browser)["frames"] == 1
    browser.save_screenshot(str(artifacts / "page_image.png"))
    set_opacity(browser, 1)
    shown = canvas_pixels(browser)
    np.testing.assert_array_equal(shown, palette[segmenter.predict(image)])  # exactly the model's labels
    assert severe_console_messages(browser) == []


def write_webm(path, frames: list[np.ndarray], fps: int = 10):
    """A VP8 WebM clip (what any Chromium plays) written with PyAV; skips when PyAV lacks the encoder."""
    av = pytest.importorskip("av", reason="the video-file test writes its clip with PyAV: pip install 'rtseg[video]'")
    if "libvpx" not in av.codecs_available:
        pytest.skip("this PyAV build has no VP8 encoder (libvpx) to write a WebM clip")
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libvpx", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def test_video_file_plays_segmented(browser, cli_server, tmp_path):
    path = write_webm(tmp_path / "street.webm", make_frames(20))
    open_page(browser, cli_server.url)
    browser.find_element(By.ID, "video-input").send_keys(os.fspath(path))
    WebDriverWait(browser, 90).until(lambda d: stats(d)["frames"] >= 5, "no segmented frames from the video file")
    s = stats(browser)
    assert s["source"] == "video" and s["errors"] == 0 and s["fps"] > 0
    assert browser.find_element(By.ID, "status").text == "street.webm: live"
    assert float(browser.find_element(By.ID, "fps").text) > 0
    browser.find_element(By.ID, "stop-button").click()
    assert severe_console_messages(browser) == []


def cli_server_health(server) -> dict:
    import httpx

    return httpx.get(server.url + "/health", timeout=10).json()
