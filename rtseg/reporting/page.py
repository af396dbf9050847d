"""The report's tables and page: results.md (Markdown) and index.html (a jinja2 template, autoescaped)."""

from __future__ import annotations

import math
from typing import Any

import jinja2

__all__ = ["fmt", "lat_cell", "markdown", "render_html", "table_rows"]

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("rtseg.reporting", "templates"),
                          autoescape=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v * scale, spec)


def lat_cell(lat: dict[str, Any] | None) -> str:
    if not lat:
        return "n/a"
    if "error" in lat:
        return "failed"
    return f"{lat['median_ms']:.2f} ms ({lat['fps']:.1f} FPS)"


def table_rows(records: list[dict[str, Any]], backends: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "architecture", "eval data", "params (M)", "GMACs", "val mIoU (%)", "pixel acc (%)"]
    head += [f"{'PyTorch eager' if b == 'torch' else 'ONNX Runtime'} latency" for b in backends]
    rows = []
    for r in records:
        size = f"{r['size'][0]}x{r['size'][1]}"
        row = [r["label"], r["architecture"], f"{r['dataset']}/{r['split']} ({r['num_images']} img, {size})",
               fmt(r["params"], ".3f", 1e-6), fmt(r["gmacs"], ".3f"), fmt(r["miou"], ".2f", 100),
               fmt(r["pixel_acc"], ".2f", 100)]
        row += [lat_cell(r["latency"].get(b)) for b in backends]
        rows.append(row)
    return head, rows


def markdown(results: dict[str, Any], backends: list[str]) -> str:
    head, rows = table_rows(results["models"], backends)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    m = results["machine"]
    out = [f"# {results['title']}", "", line(head), "|" + "|".join(["---"] * len(head)) + "|"]
    out += [line(r) for r in rows]
    out += ["", f"Latency: median of {results['settings']['latency_runs']} runs after "
                f"{results['settings']['warmup']} warm-up runs, batch 1, on {m['device']} "
                f"({m['cpu']}, threads: {m['threads']}), torch {m['torch']}"
                + (f", onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else "") + ".",
            ("GMACs: multiply-accumulates of one forward pass at the evaluation size (the ESSNet thesis' "
            "\"GFLOPs\")."), f"Generated {results['generated']} by `rtseg report`.", ""]
    return "\n".join(out)


def _lat_note(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    return (f"Latency: median of {s['latency_runs']} runs after {s['warmup']} warm-up runs, one "
            f"{'x'.join(map(str, results['models'][0]['size']))} image (batch 1), on {m['device']} "
            f"({m['cpu']}, threads: {m['threads']}); torch {m['torch']}"
            + (f", onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else "") + ".")


def _details(r: dict[str, Any], confusion: str) -> dict[str, Any]:
    """One model's facts table and per-class IoU rows."""
    t = r.get("train") or {}
    facts = [("checkpoint", r["checkpoint"]), ("architecture", r["architecture"]),
             ("evaluated on", f"{r['dataset']}/{r['split']}, {r['num_images']} images"),
             ("params / MACs", (f"{r['params']:,} / {r['macs']:,} at {r['size'][0]}x{r['size'][1]} "
                                f"({r['profiled_form']})")),
             ("val mIoU / pixel acc / mean class acc",
              (f"{fmt(r['miou'], '.2f', 100)} / {fmt(r['pixel_acc'], '.2f', 100)} / "
               f"{fmt(r['mean_class_acc'], '.2f', 100)} %"))]
    if t:
        facts.append(("training", (f"stage {t.get('stage')}, best epoch {t.get('epoch')}, val mIoU at "
                                   f"training time {fmt(t.get('val_miou'), '.2f', 100)} %")))
    per_class = [(n, fmt(v, ".2f", 100)) for n, v in r["per_class_iou"].items()]
    return {"label": r["label"], "facts": [(k, str(v)) for k, v in facts], "confusion": confusion,
            "per_class": per_class}


def render_html(results: dict[str, Any], figs: dict[str, Any], backends: list[str],
                legends: dict[str, list[tuple[str, list[int]]]]) -> str:
    """``index.html``: every value goes through the template's autoescaping (labels, paths, class names)."""
    head, rows = table_rows(results["models"], backends)
    errors = [f"{r['label']} / {b}: {lat['error']}" for r in results["models"]
              for b, lat in r["latency"].items() if "error" in lat]
    return _ENV.get_template("report.html.j2").render(
        title=results["title"], generated=results["generated"], n_models=len(results["models"]),
        max_images=results["settings"].get("max_images"), head=head, rows=rows, lat_note=_lat_note(results),
        errors=errors, figs={"training_curves": None, **figs}, legends=legends,
        details=[_details(r, figs["confusion"][r["label"]]) for r in results["models"]],
    )
