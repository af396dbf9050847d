"""rtseg predict: images, folders, globs, videos (a corrupt middle packet is skipped), clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from rtseg import create_model, save_model
from rtseg.cli import main
from rtseg.deploy import bench_image, predict, resolve_sources


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("essnet_dg2s", num_classes=4).eval()
    return save_model(model, tmp_path_factory.mktemp("w") / "m.pt", class_names=["a", "b", "c", "d"])


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i, size in enumerate([(40, 56), (33, 47)]):  # odd sizes: padded and cropped back
        Image.fromarray(bench_image(size, seed=i)).save(d / f"p{i}.png")
    return d


def test_images_folder_and_glob(ckpt, photos, tmp_path):
    out = tmp_path / "out"
    s = predict(ckpt, [str(photos), str(photos / "p1.*")], out, overlay=True, side_by_side=True, progress=False)
    assert s.images == 3 and not s.skipped
    lab = Image.open(out / "p0.png")
    assert lab.mode == "P" and lab.size == (56, 40)
    assert np.asarray(lab).max() < 4
    assert Image.open(out / "p1_overlay.png").size == (47, 33)
    assert Image.open(out / "p1_side.png").size == (47 * 2 + 4, 33)
    assert (out / "p1_2.png").is_file()  # the second p1 does not overwrite the first


def test_bad_inputs(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        resolve_sources([str(tmp_path / "missing.png")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported format"):
        resolve_sources([str(tmp_path / "notes.txt")])
    with pytest.raises(FileNotFoundError, match="camera 7"):
        resolve_sources(["7"])
    with pytest.raises(FileNotFoundError, match="matches no files"):
        resolve_sources([str(tmp_path / "*.jpg")])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    s = predict(ckpt, [str(bad)], tmp_path / "o", progress=False)
    assert s.images == 0 and "broken.png" in s.skipped[0]
    assert main(["predict", str(tmp_path / "nope.jpg"), "--weights", str(ckpt), "--out", str(tmp_path)]) == 2


def _make_video(path, n=7, h=40, w=56):
    import av

    c = av.open(str(path), "w")
    s = c.add_stream("mjpeg", rate=10)  # intra-only: one packet per frame
    s.height, s.width, s.pix_fmt = h, w, "yuvj420p"
    for i in range(n):
        for p in s.encode(av.VideoFrame.from_ndarray(bench_image((h, w), seed=i), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def test_video_with_corrupt_middle_packet(ckpt, tmp_path, capsys):
    av = pytest.importorskip("av")
    src = tmp_path / "clip.avi"
    _make_video(src)
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    assert len(packets) == 7
    pos, size = packets[3]
    data = bytearray(src.read_bytes())
    data[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    src.write_bytes(bytes(data))

    out = tmp_path / "out"
    assert main(["predict", str(src), "--weights", str(ckpt), "--out", str(out), "--side-by-side", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "clip.avi" in printed
    with av.open(str(out / "clip_side.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 6  # 7 frames, the corrupt one skipped, the rest written
    assert frames[0].shape == (40, 56 * 2 + 4, 3)


def test_cli_int8_keep_float(ckpt, photos, tmp_path, capsys):
    """--int8-keep-float reaches the Segmenter: a module the model lacks is a one-line error naming it."""
    pytest.importorskip("onnxruntime")
    rc = main(["predict", str(photos), "--weights", str(ckpt), "--out", str(tmp_path / "o"), "--quiet",
               "--backend", "onnxruntime", "--precision", "int8", "--calib", str(photos),
               "--int8-keep-float", "encoder.no_such_block"])
    assert rc != 0 and "encoder.no_such_block" in capsys.readouterr().err
    rc = main(["predict", str(photos), "--weights", str(ckpt), "--out", str(tmp_path / "o2"), "--quiet",
               "--backend", "onnxruntime", "--precision", "int8", "--calib", str(photos), "--size", "48x64",
               "--int8-keep-float", "encoder.initial_block"])
    assert rc == 0 and any((tmp_path / "o2").iterdir())


def test_summary_names_the_threads(ckpt, photos, tmp_path, monkeypatch):
    """The summary says how many inference threads ran: all cores by default, or --threads."""
    pytest.importorskip("av")
    import os

    src = tmp_path / "clip.avi"
    _make_video(src, n=3)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    s = predict(ckpt, [str(photos)], tmp_path / "a", backend="torch", progress=False)
    assert s.threads == 4
    s = predict(ckpt, [str(src)], tmp_path / "b", backend="torch", progress=False, threads=2)
    assert s.threads == 2 and s.frames == 3


def test_video_preset_reaches_the_encoder(ckpt, tmp_path):
    """--video-preset is the x264 preset of the written video (x264 records it in the stream); a name x264
    does not know is refused before any model is built."""
    av = pytest.importorskip("av")
    if "libx264" not in av.codecs_available:
        pytest.skip("PyAV built without libx264")
    src = tmp_path / "clip.avi"
    _make_video(src, n=4)
    for preset in ("ultrafast", "medium"):
        out = tmp_path / preset
        assert main(["predict", str(src), "--weights", str(ckpt), "--out", str(out), "--overlay", "--quiet",
                     "--video-preset", preset]) == 0
        data = (out / "clip_overlay.mp4").read_bytes()
        # x264 writes its settings into the bitstream: ultrafast turns CABAC and B-frames off, medium keeps them
        settings = data[data.index(b"x264 - core"):][:2000]
        assert (b"cabac=0" in settings) == (preset == "ultrafast"), settings[:200]
        with av.open(str(out / "clip_overlay.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 4
    with pytest.raises(ValueError, match="video_preset"):
        predict(ckpt, [str(src)], tmp_path / "bad", video_preset="warp", progress=False)
    assert not (tmp_path / "bad").exists()


def test_video_whose_encoder_fails_at_the_end_is_an_error_not_a_listed_output(ckpt, tmp_path, monkeypatch):
    """A failure while finishing one video file (flushing the encoder, e.g. a full disk) is raised, that file
    is removed, and the other video of the same source is still finished and listed."""
    pytest.importorskip("av")
    from rtseg.deploy import predictor

    src = tmp_path / "clip.avi"
    _make_video(src, n=4)
    real_close = predictor._VideoWriter.close

    class Failing:  # the real container, whose close then fails
        def __init__(self, c):
            self.c = c

        def mux(self, pkt):
            self.c.mux(pkt)

        def close(self):
            self.c.close()
            raise OSError("No space left on device")

    def close(self, error=None):
        if self.path.name.endswith("_side.mp4") and error is None:
            self.container = Failing(self.container)
        return real_close(self, error)

    monkeypatch.setattr(predictor._VideoWriter, "close", close)
    out = tmp_path / "o"
    with pytest.raises(OSError, match="No space left"):
        predict(ckpt, [str(src)], out, overlay=True, side_by_side=True, progress=False)
    assert not (out / "clip_side.mp4").exists() and (out / "clip_overlay.mp4").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left
