"""rtseg.Segmenter: same labels across backends, resize/pad back to the source resolution, clear refusals."""

import numpy as np
import pytest
import torch

from rtseg import create_model
from rtseg.deploy import Segmenter, bench_image, cpu_supports_bf16

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("essnet_dg2s", num_classes=5).eval()


@pytest.fixture(scope="module")
def images():
    # textured images (no exact ties: ENet-style max-unpooling is sensitive to tie-breaking)
    return [bench_image((70, 100), seed=1), bench_image((48, 64), seed=2)]


def _backends():
    out = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        out.append("openvino")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("size", [None, (64, 96)])
def test_backends_agree_fp32(model, images, size):
    ref = Segmenter(model, "torch", size=size)
    want = ref.predict(images)
    with torch.no_grad():  # native resolution: the torch backend is the plain model
        if size is None:
            x = torch.from_numpy(images[0]).permute(2, 0, 1)[None].float() / 255
            assert (model(x).argmax(1)[0].numpy() == want[0]).all()
    for backend in _backends():
        got = Segmenter(model, backend, size=size).predict(images)
        for g, w, im in zip(got, want, images):
            assert g.shape == im.shape[:2] and g.dtype == np.uint8
            assert (g == w).mean() >= 0.999, backend


def test_shapes_and_inputs(model, images, tmp_path):
    from PIL import Image

    seg = Segmenter(model, "onnxruntime", size=(32, 64))
    one = seg.predict(images[0])
    assert one.shape == (70, 100) and one.dtype == np.uint8
    lg = seg.logits(images[1])
    assert lg.shape == (5, 48, 64) and lg.dtype == np.float32
    batch = seg.predict(np.stack([images[1], images[1]]))
    assert batch.shape == (2, 48, 64) and (batch[0] == batch[1]).all()
    path = tmp_path / "a.png"
    Image.fromarray(images[0]).save(path)
    assert (seg.predict(str(path)) == one).all()
    with pytest.raises(ValueError, match="uint8"):
        seg.predict(images[0].astype(np.float32))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        seg.predict(str(tmp_path / "nope.png"))


def test_refusals(model):
    with pytest.raises(ValueError, match="unknown backend"):
        Segmenter(model, "tensorrt")
    with pytest.raises(ValueError, match="int8"):
        Segmenter(model, "torch", "int8", calibration=[])
    with pytest.raises(ValueError, match="calibration"):
        Segmenter(model, "onnxruntime", "int8")
    with pytest.raises(ValueError, match="multiple of 8"):
        Segmenter(model, "torch", size=(30, 64))


def test_int8_onnxruntime_close_to_fp32(model, images, tmp_path, monkeypatch):
    calib = [bench_image((64, 96), seed=s) for s in range(3, 7)]
    ref = Segmenter(model, "torch", size=(64, 96)).logits(images[0])
    monkeypatch.chdir(tmp_path)
    q = Segmenter(model, "onnxruntime", "int8", size=(64, 96), calibration=calib).logits(images[0])
    assert list(tmp_path.iterdir()) == []  # ORT's quantization tools leave nothing in the working directory
    # random weights: judge the logits (labels of an untrained net hinge on tiny margins)
    rel = np.abs(q - ref).mean() / np.abs(ref).mean()
    assert rel < 0.2


def test_int8_openvino_nncf(model, images):
    pytest.importorskip("nncf")
    calib = [bench_image((64, 96), seed=s) for s in range(3, 7)]
    ref = Segmenter(model, "torch", size=(64, 96)).logits(images[0])
    q = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib).logits(images[0])
    rel = np.abs(q - ref).mean() / np.abs(ref).mean()
    assert rel < 0.2


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_torch_close(model, images):
    ref = Segmenter(model, "torch").logits(images[0])
    got = Segmenter(model, "torch", "bf16").logits(images[0])
    assert np.abs(got - ref).max() < 0.05 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("size", [None, (64, 96)])
def test_graph_argmax_same_labels(model, images, size):
    """The argmax inside the graph returns the labels the logits graph gives (nearest resize when resized)."""
    import torch.nn.functional as F

    for backend in ["torch", *_backends()]:
        logit_seg = Segmenter(model, backend, size=size)
        lab_seg = Segmenter(model, backend, size=size, graph_argmax=True)
        for im in images:
            got = lab_seg.predict(im)
            assert got.shape == im.shape[:2] and got.dtype == np.uint8
            if size is None:  # same resolution: exactly the argmax of the logits graph
                assert (got == logit_seg.predict(im)).mean() >= 0.999, backend
            else:  # model-size labels, resized back nearest-neighbour
                x = torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                small = logit_seg.forward_tensor(xs)[0].argmax(0).float()
                want = F.interpolate(small[None, None], size=im.shape[:2], mode="nearest-exact")[0, 0]
                assert (got == want.numpy()).mean() >= 0.999, backend
        with pytest.raises(ValueError, match="graph_argmax"):
            lab_seg.logits(images[0])
        # the nn.Module view scores labels as one-hot: evaluate's argmax gives the labels back
        x = torch.from_numpy(images[1]).permute(2, 0, 1)[None].float() / 255
        assert (lab_seg.as_module()(x).argmax(1)[0].numpy() == lab_seg.predict(images[1])).all()


def test_graph_argmax_int8_openvino(model, images):
    pytest.importorskip("nncf")
    calib = [bench_image((64, 96), seed=s) for s in range(3, 7)]
    seg = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, graph_argmax=True)
    out = seg.predict(images[0])
    assert out.shape == images[0].shape[:2] and out.dtype == np.uint8 and out.max() < 5


def test_int8_keeps_transposed_convs_and_argmax_in_float(model, images):
    """OpenVINO int8: no quantizer in front of transposed convs or the in-graph argmax (INT8_KEEP_FLOAT)."""
    pytest.importorskip("nncf")
    calib = [bench_image((64, 96), seed=s) for s in range(3, 7)]
    seg = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, graph_argmax=True)
    fed_by = {}
    for op in seg.runtime.ir.get_ordered_ops():
        fed_by.setdefault(op.get_type_name(), []).append(
            [op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())])
    assert "FakeQuantize" in [t for ins in fed_by["GroupConvolution"] for t in ins]  # the rest is int8
    for kind in ("ConvolutionBackpropData", "Maximum", "Greater", "Select"):  # the running-max argmax
        assert kind in fed_by and all("FakeQuantize" not in ins for ins in fed_by[kind]), kind


def _quantized_under(names, prefix):
    return sorted(n for n in names if n.lstrip("/").removeprefix("model/").startswith(prefix))


@pytest.mark.parametrize("graph_argmax", [False, True])
def test_int8_keep_float_modules_openvino(model, graph_argmax):
    """Named modules get no quantizer in the OpenVINO int8 graph; everything else still does."""
    pytest.importorskip("nncf")
    from rtseg.deploy import quantized_ops

    calib = [bench_image((64, 96), seed=s) for s in range(3, 6)]
    base = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, graph_argmax=graph_argmax,
                     int8_keep_float=[])
    keep = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, graph_argmax=graph_argmax,
                     int8_keep_float=["encoder.initial_block", "decoder.layers.1.conv1L_1"])
    q0, q1 = quantized_ops(base.runtime.ir), quantized_ops(keep.runtime.ir)
    for prefix in ("encoder/initial_block/", "decoder/layers.1/conv1L_1/"):
        assert _quantized_under(q0, prefix), prefix  # quantized by default ...
        assert not _quantized_under(q1, prefix), prefix  # ... and not when kept in float
    assert _quantized_under(q1, "encoder/layers.0/") == _quantized_under(q0, "encoder/layers.0/")
    assert keep.info()["int8_keep_float"] == ["encoder.initial_block", "decoder.layers.1.conv1L_1"]
    # exported node names map back to their modules (the argmax wrapper adds /model)
    pre = "/model" if graph_argmax else ""
    assert keep.float_scopes().module_of(f"{pre}/encoder/initial_block/conv/Conv/WithoutBiases") == "encoder.initial_block.conv"
    assert keep.float_scopes().module_of(f"{pre}/decoder/layers.1/conv1L_1/Conv") == "decoder.layers.1.conv1L_1"


def test_int8_keep_float_modules_onnxruntime(model):
    import onnx

    calib = [bench_image((64, 96), seed=s) for s in range(3, 6)]
    seg = Segmenter(model, "onnxruntime", "int8", size=(64, 96), calibration=calib,
                    int8_keep_float=["encoder.initial_block"])
    g = onnx.load(str(seg.runtime.path)).graph
    producer = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    fed = {n.name: producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "DequantizeLinear"
           for n in convs}
    assert not any(v for k, v in fed.items() if "/initial_block/" in k)
    assert any(v for k, v in fed.items() if "/initial_block/" not in k)


def test_int8_option_refusals(model):
    calib = [bench_image((64, 96), seed=3)]
    with pytest.raises(ValueError, match=r"encoder\.nope"):
        Segmenter(model, "onnxruntime", "int8", size=(64, 96), calibration=calib, int8_keep_float=["encoder.nope"])
    pairs = [(calib[0], np.zeros((64, 96), np.uint8))]
    with pytest.raises(ValueError, match="backend='openvino'"):
        Segmenter(model, "onnxruntime", "int8", size=(64, 96), calibration=calib, int8_control=pairs)
    with pytest.raises(ValueError, match="int8_max_drop"):
        Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, int8_control=pairs, int8_max_drop=1.5)
    pytest.importorskip("nncf")
    with pytest.raises(ValueError, match=r"label \(10, 10\) and image \(64, 96\)"):
        Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib,
                  int8_control=[(calib[0], np.zeros((10, 10), np.uint8))])


def test_shipped_weights_use_their_recorded_int8_float_modules(tmp_path, monkeypatch):
    """A name's index record (``int8_keep_float``, written by record_int8_keep_float) is the default."""
    import rtseg
    from rtseg import hub, packaging

    torch.manual_seed(0)
    ckpt = rtseg.save_model(create_model("essnet_d", num_classes=7), tmp_path / "best.pt",
                            class_names=[f"c{i}" for i in range(7)], dataset="synthetic", epoch=1)
    wdir = tmp_path / "weights"
    packaging.package_weights(ckpt, "tiny_syn", "rtseg train ...", None, weights_dir=wdir, length=4, size=(48, 64))
    packaging.record_int8_keep_float("tiny_syn", ["encoder.initial_block"], {"how": "test"}, weights_dir=wdir)
    monkeypatch.setattr(hub, "WEIGHTS_DIR", wdir)
    calib = [bench_image((48, 64), seed=3)]
    seg = Segmenter("tiny_syn", "onnxruntime", "int8", size=(48, 64), calibration=calib)
    assert seg.int8_keep_float == ["encoder.initial_block"]
    # also when the model was loaded by name first (rtseg bench and scripts pass loaded models)
    seg = Segmenter(rtseg.load_model("tiny_syn"), "onnxruntime", "int8", size=(48, 64), calibration=calib)
    assert seg.int8_keep_float == ["encoder.initial_block"]
    by_file = Segmenter(rtseg.load_model(wdir / "tiny_syn.pt"), "onnxruntime", "int8", size=(48, 64),
                        calibration=calib)  # a file path is not a shipped name: the default rule applies
    assert by_file.int8_rule == "high-res" and seg.int8_rule == "recorded"
    seg = Segmenter("tiny_syn", "onnxruntime", "int8", size=(48, 64), calibration=calib, int8_keep_float=[])
    assert seg.int8_keep_float == [] and seg.int8_rule == "given"
    with pytest.raises(KeyError, match="nope"):
        packaging.record_int8_keep_float("nope", [], {}, weights_dir=wdir)


@pytest.mark.slow
def test_int8_accuracy_control_openvino(model):
    """NNCF accuracy control against labels from the fp32 graph, max drop 0: whatever it returns to float is
    reported as module paths, and the int8 graph scores at least as well on the control set as plain int8."""
    pytest.importorskip("nncf")
    from rtseg.eval.metrics import SegMetrics

    imgs = [bench_image((64, 96), seed=s) for s in range(3, 7)]
    ref = Segmenter(model, "openvino", "fp32", size=(64, 96))
    pairs = [(im, ref.predict(im)) for im in imgs]

    def miou(seg):
        m = SegMetrics(5)
        for im, lab in pairs:
            m.update(torch.from_numpy(seg.predict(im)), torch.from_numpy(lab))
        return m.compute()["miou"]

    plain = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=imgs)
    ac = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=imgs, int8_control=pairs, int8_max_drop=0.0)
    known = {n for n, _ in ac.model.named_modules()}
    assert ac.int8_keep_float and all(m in known or m in ac.float_scopes().modules for m in ac.int8_keep_float)
    assert miou(ac) >= miou(plain)
    # int8_control="fp32" labels the calibration images with the fp32 graph itself: the same search
    self_ac = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=imgs, int8_control="fp32",
                        int8_max_drop=0.0)
    assert self_ac.int8_keep_float == ac.int8_keep_float


def test_int8_control_fp32_labels_are_the_fp32_graphs(model):
    """``int8_control="fp32"``: control items are the calibration inputs with the fp32 graph's labels."""
    pytest.importorskip("openvino")
    imgs = [bench_image((64, 96), seed=s) for s in range(3, 6)]
    for argmax in (False, True):
        ref = Segmenter(model, "openvino", "fp32", size=(64, 96), graph_argmax=argmax)
        inputs = ref._model_inputs(imgs)
        items = ref._fp32_control(ref.runtime.ir, inputs)
        assert len(items) == 3
        for (xin, lab, hw, resized), im in zip(items, imgs):
            assert hw == (64, 96) and not resized and lab.dtype == torch.int64
            assert np.array_equal(lab.numpy(), ref.predict(im))
    with pytest.raises(ValueError, match="int8_control"):
        Segmenter(model, "openvino", "int8", size=(64, 96), calibration=imgs, int8_control="labels")


def test_int8_float_layers_fall_back_to_f32_when_bf16_fails(model, monkeypatch):
    """An int8 graph the CPU plugin cannot compile at bf16 is compiled at f32 instead, never refused."""
    pytest.importorskip("nncf")
    import openvino as ov

    from rtseg.deploy import backends

    monkeypatch.setattr(backends, "cpu_supports_bf16", lambda: True)
    real = ov.Core.compile_model
    tried = []

    def compile_model(self, model, device_name=None, config=None):
        hint = (config or {}).get("INFERENCE_PRECISION_HINT")
        tried.append(hint)
        if hint == "bf16":
            raise RuntimeError("object is not initialized")  # what OpenVINO 2026.4 raised for such graphs
        return real(self, model, device_name, config)

    monkeypatch.setattr(ov.Core, "compile_model", compile_model)
    calib = [bench_image((64, 96), seed=s) for s in range(3, 5)]
    seg = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib)
    assert tried[-2:] == ["bf16", "f32"] and seg.runtime.float_precision == "f32"
    assert seg.runtime.describe()["inference_precision"] == "f32"
    assert seg.predict(calib[0]).shape == (64, 96)
    if cpu_supports_bf16():  # a bf16 request is not silently changed (elsewhere bf16 is refused earlier)
        with pytest.raises(RuntimeError, match="not initialized"):
            Segmenter(model, "openvino", "bf16", size=(64, 96))


def test_int8_openvino_smooth_quant_on_convs(model, monkeypatch):
    """INT8_SMOOTH_QUANT: NNCF SmoothQuant rescales the activations in front of convolutions before the int8
    quantization (its Multiply nodes are in the int8 graph; 0 turns it off), and in float it changes nothing:
    the smoothed fp32 graph gives the original's logits."""
    pytest.importorskip("nncf")
    import openvino as ov

    from rtseg.deploy import quantize as qz

    calib_images = [bench_image((64, 96), seed=s) for s in range(3, 6)]

    def smoothed(seg):
        return [op.get_friendly_name() for op in seg.runtime.ir.get_ordered_ops()
                if op.get_friendly_name().endswith("/nncf_smooth_quant")]

    on = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib_images)
    assert smoothed(on)
    monkeypatch.setattr(qz, "INT8_SMOOTH_QUANT", 0)
    off = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib_images)
    assert not smoothed(off)

    fp = Segmenter(model, "openvino", "fp32", size=(64, 96))
    x = [np.random.default_rng(s).random((1, 3, 64, 96), dtype=np.float32) for s in range(3)]
    sq = qz.smooth_quant_openvino(fp.runtime.ir, x, 0.5)
    assert any(op.get_friendly_name().endswith("/nncf_smooth_quant") for op in sq.get_ordered_ops())
    cfg = {"INFERENCE_PRECISION_HINT": "f32"}
    a = ov.Core().compile_model(fp.runtime.ir, "CPU", cfg)(x[0])[0]
    b = ov.Core().compile_model(sq, "CPU", cfg)(x[0])[0]
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * float(np.abs(a).max()))


def test_int8_openvino_subpixel_output_conv_in_float(model, monkeypatch):
    """INT8_SUBPIXEL: the int8 OpenVINO graph writes the kernel = stride output conv as Conv -> DepthToSpace
    with no quantizer in front of that conv (kept in float like every transposed conv), the other transposed
    convs stay ConvolutionBackpropData, the argmax runs before the DepthToSpace (uint8 labels interleaved), the
    recorded float modules do not change, and the labels match the plain int8 graph's where the two
    quantizations agree (almost everywhere)."""
    pytest.importorskip("nncf")
    from rtseg.deploy import quantize as qz

    calib = [bench_image((64, 96), seed=s) for s in range(3, 6)]
    x = np.divide(bench_image((64, 96), seed=9).transpose(2, 0, 1)[None], np.float32(255), dtype=np.float32)

    def ops(seg):
        return {op.get_friendly_name(): op for op in seg.runtime.ir.get_ordered_ops()}

    on = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, graph_argmax=True,
                   int8_keep_float=[])
    d2s = [op for op in ops(on).values() if op.get_type_name() == "DepthToSpace"]
    # one DepthToSpace, on the uint8 labels: the argmax runs on the output conv's phases (ArgmaxHead)
    assert len(d2s) == 1 and d2s[0].get_input_element_type(0).get_type_name() == "u8"
    conv = [op for op in ops(on).values() if op.get_type_name() == "Convolution"
            and "output_conv" in op.get_friendly_name()]
    assert len(conv) == 1 and conv[0].get_output_partial_shape(0)[1].get_length() == 4 * 5  # 5 classes x 4 phases
    assert all(conv[0].input_value(i).get_node().get_type_name() != "FakeQuantize" for i in range(2))
    assert sum(op.get_type_name() == "ConvolutionBackpropData" for op in ops(on).values()) == 2  # the UPS blocks
    assert on.int8_keep_float == []
    monkeypatch.setattr(qz, "INT8_SUBPIXEL", False)
    off = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, graph_argmax=True,
                    int8_keep_float=[])
    assert not any(op.get_type_name() == "DepthToSpace" for op in ops(off).values())
    assert sum(op.get_type_name() == "ConvolutionBackpropData" for op in ops(off).values()) == 3
    assert (on.runtime.run(x) == off.runtime.run(x)).mean() > 0.9


def test_int8_openvino_pools_the_image_in_phases(model, monkeypatch):
    """INT8_PHASE_POOL: the int8 OpenVINO graph pools the image as phases -> ReduceMax (one MaxPool
    fewer than with the switch off: the 16-channel downsampler keeps its MaxPool), the stem stays in float
    and the labels are those of the graph with the MaxPool; fp32 graphs keep MaxPool."""
    pytest.importorskip("nncf")
    from rtseg.deploy import quantize as qz

    calib = [bench_image((64, 96), seed=s) for s in range(3, 6)]
    x = np.divide(bench_image((64, 96), seed=9).transpose(2, 0, 1)[None], np.float32(255), dtype=np.float32)

    def types(seg):
        return [op.get_type_name() for op in seg.runtime.ir.get_ordered_ops()]

    on = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, graph_argmax=True)
    red = [op for op in on.runtime.ir.get_ordered_ops() if op.get_type_name() == "ReduceMax"]
    assert len(red) == 1 and "initial_block" in red[0].get_friendly_name()
    assert red[0].input_value(0).get_node().get_type_name() != "FakeQuantize"  # the stem is float
    monkeypatch.setattr(qz, "INT8_PHASE_POOL", False)
    off = Segmenter(model, "openvino", "int8", size=(64, 96), calibration=calib, graph_argmax=True)
    assert "ReduceMax" not in types(off) and types(off).count("MaxPool") == types(on).count("MaxPool") + 1
    assert on.int8_keep_float == off.int8_keep_float
    np.testing.assert_array_equal(on.runtime.run(x), off.runtime.run(x))
    assert "ReduceMax" not in types(Segmenter(model, "openvino", "fp32", size=(64, 96)))
