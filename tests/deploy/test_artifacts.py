"""Deployment artifacts (issue #17): export -> Segmenter / predict / bench round trip, metadata, refusals,
the auto backend, and the pipelined video path (frame count and order)."""

import hashlib
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import rtseg
from rtseg import create_model, save_model
from rtseg.cli import main
from rtseg.deploy import (
    ArtifactError,
    Segmenter,
    available_backends,
    bench_image,
    benchmark,
    predict,
    read_metadata,
    resolve_backend,
    run_pipeline,
)

pytest.importorskip("onnxruntime")
SIZE = (64, 96)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("essnet_dg2s", num_classes=4).eval()
    return save_model(model, tmp_path_factory.mktemp("w") / "m.pt", class_names=["a", "b", "c", "d"])


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    for i in range(4):
        Image.fromarray(bench_image(SIZE, seed=i)).save(d / f"c{i}.png")
    return d


def _images():
    return [bench_image(SIZE, seed=20), bench_image((50, 70), seed=21)]  # the second is resized in and back


@pytest.mark.parametrize("suffix,backend", [(".onnx", "onnxruntime"), (".xml", "openvino")])
def test_fp32_artifact_round_trip(ckpt, tmp_path, capsys, suffix, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    out = tmp_path / f"m{suffix}"
    assert main(["export", str(out), "--weights", str(ckpt), "--size", "64x96"]) == 0
    meta = read_metadata(out)
    assert meta["class_names"] == ["a", "b", "c", "d"] and meta.size == SIZE and meta.precision == "fp32"
    assert meta["rtseg_version"] == rtseg.__version__ and len(meta["palette"]) == 4
    assert meta["source_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    seg = Segmenter(out)
    assert (seg.backend, seg.precision, seg.size, seg.num_classes) == (backend, "fp32", SIZE, 4)
    ref = Segmenter(rtseg.load_model(ckpt), backend, size=SIZE)
    for im in _images():
        assert np.array_equal(seg.predict(im), ref.predict(im))
        np.testing.assert_allclose(seg.logits(im), ref.logits(im), atol=1e-4)


def test_int8_artifact_calibrates_once(ckpt, calib, tmp_path, capsys, monkeypatch):
    """int8 is built at export; the file then runs in Segmenter / predict / bench without calibrating and
    gives the labels of the in-process int8 graph built on the same calibration images."""
    pytest.importorskip("nncf")
    out = tmp_path / "m_int8.xml"
    assert main(["export", str(out), "--weights", str(ckpt), "--size", "64x96", "--precision", "int8",
                 "--calib", str(calib), "--int8-keep-float", "encoder.initial_block"]) == 0
    text = capsys.readouterr().out
    assert "openvino int8" in text and "agreement with fp32" in text and "encoder.initial_block" in text
    meta = read_metadata(out)
    assert meta.precision == "int8" and meta["int8_keep_float"] == ["encoder.initial_block"]
    assert 0.5 < meta["agreement_fp32"] <= 1 and meta["calibration"]["images"] == 4
    assert meta["calibration"]["smooth_quant_alpha"] == 0.5  # the int8 recipe is in the file
    ref = Segmenter(rtseg.load_model(ckpt), "openvino", "int8", size=SIZE, calibration=str(calib),
                    int8_keep_float=["encoder.initial_block"])
    import rtseg.deploy.quantize as Q

    def no_calibration(*a, **k):
        raise AssertionError("an int8 artifact must not be calibrated again")

    monkeypatch.setattr(Q, "quantize_openvino", no_calibration)
    monkeypatch.setattr(Q, "quantize_onnx", no_calibration)
    seg = Segmenter(str(out))
    assert seg.precision == "int8" and seg.int8_keep_float == ["encoder.initial_block"]
    for im in _images():
        assert np.array_equal(seg.predict(im), ref.predict(im))
    assert main(["predict", str(calib / "c0.png"), "--weights", str(out), "--out", str(tmp_path / "p"),
                 "--quiet"]) == 0
    assert "openvino/int8" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / "c0.png")),
                          ref.predict(np.asarray(Image.open(calib / "c0.png").convert("RGB"))))
    rows = benchmark([str(out)], [SIZE], [("openvino", "fp32")], threads=1, warmup=0, runs=2,
                     throughput_seconds=0)
    assert len(rows) == 1 and rows[0].precision == "int8" and rows[0].setting == "artifact"
    assert rows[0].agreement == pytest.approx(meta["agreement_fp32"])


def test_int8_onnx_artifact(ckpt, calib, tmp_path):
    out = tmp_path / "m_int8.onnx"
    assert main(["export", str(out), "--weights", str(ckpt), "--size", "64x96", "--precision", "int8",
                 "--calib", str(calib)]) == 0
    seg = Segmenter(out)
    ref = Segmenter(rtseg.load_model(ckpt), "onnxruntime", "int8", size=SIZE, calibration=str(calib))
    assert seg.backend == "onnxruntime" and seg.precision == "int8"
    for im in _images():
        assert np.array_equal(seg.predict(im), ref.predict(im))


def test_artifact_refusals(ckpt, calib, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"  # a plain ONNX file without rtseg metadata
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(g), foreign)
    with pytest.raises(ArtifactError, match="foreign.onnx: not an rtseg artifact"):
        Segmenter(foreign)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    rc = main(["predict", str(calib / "c0.png"), "--weights", str(junk), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "junk.onnx" in err and len(err.splitlines()) == 1
    out = tmp_path / "m.onnx"
    assert main(["export", str(out), "--weights", str(ckpt), "--size", "64x96"]) == 0
    with pytest.raises(ValueError, match="fixed at 64x96"):
        Segmenter(out, size=(32, 32))
    with pytest.raises(ValueError, match="already built"):
        Segmenter(out, calibration=str(calib))
    with pytest.raises(ValueError, match="is fp32"):
        Segmenter(out, precision="int8")
    assert main(["export", str(tmp_path / "x.onnx"), "--weights", str(ckpt), "--precision", "int8"]) != 0
    assert "calibration" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "x.onnx"), "--weights", str(ckpt), "--precision", "bf16"]) != 0
    assert main(["export", str(ckpt), "--weights", str(ckpt), "--format", "torchscript"]) != 0  # never over inputs


def test_auto_backend(ckpt, monkeypatch):
    import rtseg.deploy.backends as B

    assert resolve_backend("auto") == available_backends()[0]
    if "openvino" in available_backends():
        assert Segmenter(ckpt, size=SIZE).backend == "openvino"
    monkeypatch.setattr(B, "available_backends", lambda: ["onnxruntime", "torch"])
    assert resolve_backend("auto") == "onnxruntime" and resolve_backend("auto", "bf16") == "torch"
    monkeypatch.setattr(B, "available_backends", lambda: ["torch"])
    assert Segmenter(ckpt, size=SIZE).backend == "torch"
    with pytest.raises(ImportError, match="int8"):
        resolve_backend("auto", "int8")


def test_pipeline_keeps_order_and_every_frame():
    seen, threads = [], set()

    def infer(x):
        threads.add(threading.current_thread().name)
        time.sleep(0.001 * (x % 3))
        return -x

    def sink(i, x, y):
        threads.add(threading.current_thread().name)
        time.sleep(0.002 * (i % 2))
        seen.append((i, x, y))

    assert run_pipeline(iter(range(200)), infer, sink, depth=3) == 200
    assert seen == [(i, i, -i) for i in range(200)]
    assert "rtseg-encode" in threads and len(threads) == 2  # inference in the caller, sink in its thread

    def bad_sink(i, x, y):
        if i == 5:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_pipeline(iter(range(10**6)), infer, bad_sink, depth=2)  # stops the decoder too, no hang

    def bad_frames():
        yield from range(3)
        raise ValueError("broken stream")

    with pytest.raises(ValueError, match="broken stream"):
        run_pipeline(bad_frames(), infer, lambda *a: None)


@pytest.mark.parametrize("workers", [2, 3])
def test_pipeline_with_parallel_workers_keeps_order_and_bounds_frames_in_flight(workers):
    """``workers`` inference threads finish frames out of order (random delays): the sink still gets every
    frame once, in order, and no more than ``depth + workers`` frames are ever decoded but not yet sunk."""
    rng = np.random.default_rng(workers)
    delays = rng.random(300) * 0.004
    seen, threads, decoded, peak = [], set(), [0], [0]
    lock = threading.Lock()

    def frames():
        for i in range(300):
            with lock:
                decoded[0] += 1
                peak[0] = max(peak[0], decoded[0] - len(seen))
            yield i

    def infer(x):
        threads.add(threading.current_thread().name)
        time.sleep(delays[x])
        return -x

    def sink(i, x, y):
        with lock:
            seen.append((i, x, y))

    assert run_pipeline(frames(), infer, sink, depth=2, workers=workers) == 300
    assert seen == [(i, i, -i) for i in range(300)]
    assert len(threads) == workers and peak[0] <= 2 + workers + 1  # +1: the frame being yielded

    def bad_infer(x):
        if x == 40:
            raise RuntimeError("graph failed")
        return x

    with pytest.raises(RuntimeError, match="graph failed"):
        run_pipeline(iter(range(10**6)), bad_infer, lambda *a: None, depth=2, workers=workers)


def test_video_pipeline_frame_count_and_order(ckpt, tmp_path):
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as c:
        st = c.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 96, 64, "yuv420p"
        for i in range(24):
            for p in st.encode(av.VideoFrame.from_ndarray(bench_image(SIZE, seed=100 + i), format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    seg = Segmenter(ckpt, size=SIZE)
    s = predict(seg, [clip], tmp_path / "o", overlay=True, save_frames=True, progress=False, queue_depth=2,
                streams=1)
    assert s.frames == 24 and not s.skipped and s.graph_fps and s.graph_fps > 0
    with av.open(str(clip)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for i, im in enumerate(decoded):  # frame i's labels are the labels of decoded frame i
        got = np.asarray(Image.open(tmp_path / "o" / "clip_labels" / f"frame_{i:06d}.png"))
        assert np.array_equal(got, seg.predict(im)), i
    with av.open(str(tmp_path / "o" / "clip_overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 24
    if seg.backend == "openvino" and seg.threads >= 2:  # two frames at once on two streams: same labels, in order
        s2 = predict(seg, [clip], tmp_path / "o2", save_frames=True, progress=False, queue_depth=2, streams=2)
        assert s2.frames == 24 and s2.streams == 2 and s2.graph_fps_streams and s2.graph_fps_streams > 0
        for i in range(24):
            a = np.asarray(Image.open(tmp_path / "o" / "clip_labels" / f"frame_{i:06d}.png"))
            assert np.array_equal(np.asarray(Image.open(tmp_path / "o2" / "clip_labels" / f"frame_{i:06d}.png")), a), i


def test_default_int8_rule_on_trained_weights(shared_dir):
    """The default int8 rule (no recorded float modules: the blocks of the convs reading >= 1/2 of the input
    resolution stay float) on trained weights, at a test-sized setting (176x240, 6 CamVid val frames,
    8 calibration frames): OpenVINO int8 labels agree with fp32 on >= 96 % of the pixels (measured 97.1 %;
    the >= 98 % bar is measured at 360x480 on all 101 val frames with 32 calibration frames by
    scripts/int8_agreement.py: 98.5 %, docs/deploy.md)."""
    pytest.importorskip("nncf")
    from rtseg.hub import resolve_weights

    root = shared_dir / "data" / "camvid"
    if not (root / "val").is_dir():
        pytest.skip(f"{root} is absent")
    val = sorted((root / "val").glob("*.png"))
    frames = [np.asarray(Image.open(val[i]).convert("RGB").resize((240, 180), Image.BILINEAR))
              for i in np.linspace(0, len(val) - 1, 6).astype(int)]
    calib = sorted((root / "train").glob("*.png"))[::40][:8]
    model = rtseg.load_model(resolve_weights("enet_camvid"))  # by file: no recorded float modules
    q = Segmenter(model, "openvino", "int8", size=(176, 240), calibration=calib, graph_argmax=True)
    ref = Segmenter(model, "openvino", "fp32", size=(176, 240), graph_argmax=True)
    assert q.int8_rule == "high-res" and "encoder.initial" in q.int8_keep_float
    agree = np.mean([(q.predict(f) == ref.predict(f)).mean() for f in frames])
    assert agree >= 0.96, agree


def _labelled_folder(root, n=4):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(bench_image(SIZE, seed=30 + i)).save(root / "images" / f"f{i}.png")
        Image.fromarray(rng.integers(0, 4, SIZE, dtype=np.uint8)).save(root / "masks" / f"f{i}.png")
    return root


def test_export_int8_control_refusals(ckpt, calib, tmp_path, capsys):
    """--int8-control: one-line errors naming the argument, before any model is built."""
    base = ["export", str(tmp_path / "q.xml"), "--weights", str(ckpt), "--size", "64x96", "--precision", "int8",
            "--calib", str(calib)]
    for extra, want in [(["--int8-control", "camvid"], "DATASET:ROOT"),
                        (["--int8-control", f"folder:{tmp_path / 'nope'}:all"], "nope"),
                        (["--int8-control", "fp32", "--int8-max-drop", "-1"], "--int8-max-drop")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert want in err and len(err.splitlines()) == 1, err
    onnx_out = ["export", str(tmp_path / "q.onnx"), "--weights", str(ckpt), "--size", "64x96", "--precision",
                "int8", "--calib", str(calib), "--int8-control", "fp32"]
    assert main(onnx_out) == 2 and "--format openvino" in capsys.readouterr().err
    assert not (tmp_path / "q.xml").exists() and not (tmp_path / "q.onnx").exists()


@pytest.mark.slow
def test_export_int8_control_with_labelled_folder(ckpt, calib, tmp_path, capsys):
    """--int8-control folder:ROOT:all runs NNCF's accuracy control at export; the written IR records the
    modules it returned to float and runs as written."""
    pytest.importorskip("nncf")
    root = _labelled_folder(tmp_path / "lab")
    out = tmp_path / "ac.xml"
    rc = main(["export", str(out), "--weights", str(ckpt), "--size", "64x96", "--precision", "int8", "--calib",
               str(calib), "--int8-control", f"folder:{root}:all", "--int8-max-drop", "0"])
    assert rc == 0 and out.is_file() and "float modules kept" in capsys.readouterr().out
    seg = Segmenter(out)
    assert seg.precision == "int8" and seg.int8_keep_float == list(seg.artifact.get("int8_keep_float") or [])
    assert seg.predict(bench_image(SIZE, seed=40)).shape == SIZE
