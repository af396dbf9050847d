"""``rtseg report``: two tiny trained runs -> index.html + figures + results.json/md; bad input is named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import rtseg
from rtseg.cli import main

pytest.importorskip("matplotlib")

SIZE = (48, 64)
MODELS = ("enet", "essnet_dg2s")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def one_thread():
    # 2 threads on 2 cores shared with other jobs makes OpenMP spin: one thread keeps the file fast
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> list[Path]:
    """Two 1-epoch runs (8 train / 8 val synthetic scenes at 48x64) of different models."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RTSEG_CACHE", str(tmp_path_factory.getbasetemp() / "rtseg-cache"))
    base = tmp_path_factory.mktemp("runs")
    try:
        for model in MODELS:
            rtseg.train(model=model, dataset="synthetic", dataset_kwargs={"size": SIZE, "length": 8}, crop=SIZE,
                        epochs=1, batch_size=4, workers=0, amp=False, progress=False, seed=0,
                        out=str(base / model))
    finally:
        mp.undo()
    return [base / m for m in MODELS]


@pytest.fixture(scope="module")
def rep(runs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    res = rtseg.report(runs, out, latency_runs=2, warmup=1, threads=1, samples=2, backends=["torch"],
                       progress=False)
    return out, res


def _refs(page: str) -> set[str]:
    return set(re.findall(r'(?:src|href)="([^"]+)"', page))


def _check_page(out: Path) -> set[str]:
    """Every PNG in ``out`` is shown on the page, and every local reference of the page exists."""
    page = (out / "index.html").read_text()
    refs = _refs(page)
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs and pngs <= refs, f"PNGs not on the page: {pngs - refs}"
    for r in refs:
        assert not r.startswith(("http:", "https:", "/")), f"external or absolute reference {r}"
        assert (out / r).is_file(), f"index.html references missing {r}"
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
    return pngs


def test_report_page_and_figures(rep):
    out, res = rep
    pngs = _check_page(out)
    expected = {"accuracy_vs_gmacs.png", "accuracy_vs_fps.png", "per_class_iou.png", "qualitative.png",
                "training_curves.png"} | {f"confusion_{m}.png" for m in MODELS}
    assert pngs == expected
    from PIL import Image

    with Image.open(out / "qualitative.png") as im:  # 2 images x (image, ground truth, 2 predictions)
        w, h = im.size
    assert w > 4 * 200 and h > 2 * 150
    assert res["index"] == str(out / "index.html")


def test_results_json_and_markdown(rep, runs):
    out, _res = rep
    data = json.loads((out / "results.json").read_text())
    models = {m["label"]: m for m in data["models"]}
    assert set(models) == set(MODELS)
    for name, run in zip(MODELS, runs):
        m = models[name]
        assert m["model"] == name and m["dataset"] == "synthetic" and m["split"] == "val"
        assert m["size"] == list(SIZE) and m["num_images"] == 8
        assert 0.0 <= m["miou"] <= 1.0 and m["params"] > 0 and m["macs"] > 0
        net = rtseg.load_model(run / "best.pt")
        from rtseg.eval.profiler import count_flops, count_params

        assert m["params"] == count_params(net)
        assert m["macs"] == count_flops(net, SIZE)["macs"]
        assert m["latency"]["torch"]["median_ms"] > 0
        assert m["latency"]["torch"]["fps"] == pytest.approx(1000 / m["latency"]["torch"]["median_ms"])
        assert set(m["per_class_iou"]) == set(m["class_names"]) and len(m["confusion"]) == 7
    assert models["enet"]["macs"] != models["essnet_dg2s"]["macs"]
    md = (out / "results.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(rows) == 1 + len(MODELS) and "PyTorch eager latency" in rows[0]
    assert any(ln.startswith("| enet |") for ln in rows)


def test_report_miou_matches_evaluate(rep, runs):
    """The page's numbers are the evaluator's, on the split recorded in the run's config."""
    _, res = rep
    direct = rtseg.evaluate(runs[0] / "best.pt", dataset="synthetic", split="val", size=SIZE, length=8,
                            progress=False)
    m = res["models"][0]
    assert m["miou"] == pytest.approx(direct["miou"])
    assert m["confusion"] == direct["confusion"]


def test_cli_replaces_stale_figures_and_measures_ort(rep, runs, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(rep[0], out)
    # the same model twice (run folder, and its checkpoint file) under labels that share a file-name slug
    argv = ["report", str(runs[0]), str(runs[0] / "best.pt"), "--out", str(out), "--runs", "2", "--warmup", "0",
            "--threads", "1", "--samples", "1", "--max-images", "2", "--quiet", "--name", "enet a", "--name", "enet_a"]
    ort = True
    try:
        import onnxruntime  # noqa: F401

        import rtseg.deploy  # noqa: F401
    except ImportError:
        ort = False
    if ort:
        argv += ["--backends", "torch,onnxruntime"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith("index.html")
    pngs = _check_page(out)
    assert "confusion_essnet_dg2s.png" not in pngs  # the earlier report's figure, not written this time
    assert {"confusion_enet_a.png", "confusion_enet_a_1.png"} <= pngs
    data = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in data["models"]] == ["enet a", "enet_a"]
    a, b = data["models"]
    assert a["num_images"] == 2 and a["miou"] == b["miou"] and a["confusion"] == b["confusion"]
    assert b["train"]["epoch"] == 1 and b["run_dir"] == str(runs[0])  # a checkpoint keeps its run's log
    if ort:
        lat = a["latency"]["onnxruntime"]
        assert "error" not in lat, lat
        assert lat["median_ms"] > 0
        assert "ONNX Runtime latency" in (out / "results.md").read_text()


def test_bad_inputs_are_named(runs, tmp_path, capsys):
    not_run = tmp_path / "empty"
    not_run.mkdir()
    with pytest.raises(FileNotFoundError, match="empty: not a run folder"):
        rtseg.report([runs[0], not_run], tmp_path / "o1")
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope: no such run folder, checkpoint or shipped weights"):
        rtseg.report([missing], tmp_path / "o2")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        rtseg.report([junk], tmp_path / "o3")
    with pytest.raises(ValueError, match="2 names given for 1 runs"):
        rtseg.report([runs[0]], tmp_path / "o4", names=["a", "b"])
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))  # refused before any work

    assert main(["report", str(not_run), "--out", str(tmp_path / "o5")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(not_run) in err
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "o6"), "--runs", "0"]) == 2
    assert "--runs must be >= 1" in capsys.readouterr().err


def test_shipped_weights_resolve_by_name_with_their_training_log():
    from rtseg.hub import available_weights, weights_info
    from rtseg.reporting.sources import assign_labels, resolve_source

    if "enet_camvid" not in available_weights():
        pytest.skip("enet_camvid is not shipped")
    src = resolve_source("enet_camvid")
    assert src.checkpoint.name == "enet_camvid.pt"
    repo = Path(__file__).resolve().parents[2]
    # the committed log copy, not the untracked runs/ folder training wrote to (absent on a fresh clone)
    assert src.metrics_log == repo / weights_info("enet_camvid")["log"] / "metrics.jsonl"
    assign_labels([src], None)
    assert src.label == "enet_camvid"  # shipped weights go by their name, not their log folder's


def test_every_shipped_weight_has_a_committed_training_log():
    import subprocess

    from rtseg.hub import available_weights, weights_info

    repo = Path(__file__).resolve().parents[2]
    names = available_weights()
    if not names:
        pytest.skip("no weights shipped")
    for name in names:
        log = weights_info(name).get("log")
        assert log, f"{name}: index record has no 'log' folder"
        assert not Path(log).is_absolute() and (repo / log / "metrics.jsonl").is_file(), f"{name}: {log}"
        tracked = subprocess.run(["git", "-C", str(repo), "ls-files", "--error-unmatch", f"{log}/metrics.jsonl"],
                                 check=False, capture_output=True) if shutil.which("git") else None
        if tracked is None or (tracked.returncode == 128 and b"not a git repository" in tracked.stderr):
            continue  # no git, or a copy without git metadata: the file's presence is all we can check
        assert tracked.returncode == 0, f"{name}: {log}/metrics.jsonl is not tracked by git (gitignored?)"


def test_group_labels_disambiguate_same_split():
    from rtseg.reporting.sources import group_labels

    a = json.dumps({"name": "synthetic", "split": "val", "root": None, "kwargs": {"length": 8, "size": [9, 9]}})
    b = json.dumps({"name": "synthetic", "split": "val", "root": None, "kwargs": {"length": 16, "size": [9, 9]}})
    c = json.dumps({"name": "camvid", "split": "val", "root": "/d", "kwargs": {}}, sort_keys=True)
    assert group_labels([c]) == {c: "camvid/val"}
    labels = group_labels([a, b, c, a])
    assert labels[a] == "synthetic/val (length=8)" and labels[b] == "synthetic/val (length=16)"
    assert labels[c] == "camvid/val"  # only names that collide get the arguments that tell them apart


def test_point_labels_do_not_overlap():
    """Models with nearly equal (GMACs, mIoU) get labels one below the other, not on top of each other."""
    from rtseg.eval.metrics import pyplot
    from rtseg.reporting.figures import _annotate_points

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    xs, ys = [1.0, 1.02, 1.01, 5.0], [21.6, 21.8, 21.7, 50.0]
    ax.scatter(xs, ys)
    ax.set_xlim(0, 8)
    ax.set_ylim(0, 60)
    _annotate_points(ax, xs, ys, ["essnet_dg2s_camvid", "essnet_dg4s_camvid", "third", "enet"], ["k"] * 4)
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in ax.texts]
    assert len(boxes) == 4
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(4) for j in range(i + 1, 4))
    plt.close(fig)


def test_accuracy_point_labels_name_the_initialisation():
    """Shipped weights' points carry their recorded initialisation; other sources keep their label."""
    from types import SimpleNamespace

    from rtseg.hub import available_weights, weights_info
    from rtseg.reporting.figures import _point_label

    run = SimpleNamespace(source=SimpleNamespace(shipped=False, label="my_run", arg="runs/my_run"))
    assert _point_label(run) == "my_run"
    names = [n for n in available_weights() if weights_info(n).get("init")]
    if not names:
        pytest.skip("no shipped weights record an initialisation")
    e = SimpleNamespace(source=SimpleNamespace(shipped=True, label=names[0], arg=names[0]))
    assert _point_label(e) == f"{names[0]} ({weights_info(names[0])['init']})"
