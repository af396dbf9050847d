"""rtseg bench: the rows it reports (latency order, agreement, in-graph argmax, profile) and its CLI/JSON."""

import json

import pytest
import torch

from rtseg import create_model
from rtseg.cli import main
from rtseg.deploy import benchmark, format_row

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("essnet_dg2s", num_classes=5).eval()
    return m


def _check_row(r, backend, setting):
    assert r.backend == backend and r.setting == setting and r.size == [64, 96]
    assert 0 < r.p50_ms <= r.p90_ms
    assert r.fps == pytest.approx(1e3 / r.p50_ms, rel=0.01)
    assert r.peak_rss_mb > 0 and r.runs == 3


@pytest.mark.parametrize("graph_argmax", [False, True])
def test_benchmark_rows(model, graph_argmax):
    rows = benchmark([model], [(64, 96)], [("torch", "fp32"), ("onnxruntime", "fp32")], threads=1, warmup=1,
                     runs=3, throughput_seconds=0, baseline=True, graph_argmax=graph_argmax)
    deploy = "deploy+argmax" if graph_argmax else "deploy"
    assert [(r.backend, r.setting) for r in rows] == [("torch", "baseline"), ("torch", deploy),
                                                      ("onnxruntime", deploy)]
    for r, (b, s) in zip(rows, [("torch", "baseline"), ("torch", deploy), ("onnxruntime", deploy)]):
        _check_row(r, b, s)
        assert r.agreement >= 0.999  # fp32 everywhere: the same labels as eager PyTorch
        assert r.throughput_fps is None
        assert r.setting in format_row(r)


def test_benchmark_profile_breakdown(model):
    rows = benchmark([model], [(64, 96)], [("onnxruntime", "fp32")], threads=1, warmup=1, runs=3,
                     throughput_seconds=0.2, baseline=False, profile=True)
    (r,) = rows
    assert r.throughput_fps and r.throughput_fps > 0
    assert "Conv" in r.profile and all(v >= 0 for v in r.profile.values())


def test_bench_cli_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", "essnet_dg2s", "--size", "64x96", "--backend", "onnxruntime", "--runs", "2",
               "--warmup", "0", "--throughput-seconds", "0", "--num-classes", "4", "--argmax",
               "--no-baseline", "--json", str(out), "--markdown", str(tmp_path / "b.md")])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["cores"] >= 1
    (row,) = doc["results"]
    assert row["model"] == "essnet_dg2s" and row["setting"] == "deploy+argmax" and row["size"] == [64, 96]
    assert "deploy+argmax" in capsys.readouterr().out
    md = (tmp_path / "b.md").read_text().splitlines()
    assert md[0].startswith("| model |") and len(md) == 3 and "`essnet_dg2s` | 64x96 | onnxruntime/fp32" in md[2]


def test_benchmark_int8_keep_float(model):
    """--int8-keep-float reaches the int8 graph (ORT: no DequantizeLinear feeds the kept module's convs) and
    the row says which modules ran in float; a module the model lacks skips the row with the reason."""
    import onnx

    import rtseg.deploy.quantize as Q

    built = []
    orig = Q.quantize_onnx

    def spy(*args, **kw):
        out = orig(*args, **kw)
        built.append(onnx.load(str(out)).graph)
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(Q, "quantize_onnx", spy)
    try:
        rows = benchmark([model], [(64, 96)], [("onnxruntime", "int8"), ("onnxruntime", "fp32")], threads=1,
                         warmup=0, runs=2, throughput_seconds=0, baseline=False,
                         int8_keep_float=["encoder.initial_block"])
        logs = []
        none = benchmark([model], [(64, 96)], [("onnxruntime", "int8")], threads=1, warmup=0, runs=2,
                         throughput_seconds=0, baseline=False, int8_keep_float=["no.such"], log=logs.append)
    finally:
        mp.undo()
    assert [r.int8_keep_float for r in rows] == [["encoder.initial_block"], []]
    g = built[0]
    producer = {o: n.op_type for n in g.node for o in n.output}
    init_convs = [n for n in g.node if n.op_type == "Conv" and "/initial_block/" in n.name]
    assert init_convs and all(producer.get(n.input[0]) != "DequantizeLinear" for n in init_convs)
    assert none == [] and "no.such" in logs[0]
