"""``rtseg models``, ``rtseg profile`` and ``rtseg convert``."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from rtseg._version import __version__
from rtseg.checkpoint import convert_file, load_model, save_model
from rtseg.cli._common import UsageError, nonnegative_int, parse_size, positive_int, threads_int
from rtseg.data.base import cache_dir
from rtseg.eval.profiler import count_flops, count_params, profile_model
from rtseg.hub import available_weights, weights_info
from rtseg.models import create_model, list_models, model_info
from rtseg.models._registry import suggest
from rtseg.nn.grouping import convert_to_deploy, masked_convs
from rtseg.utils.io import atomic_write_text, check_outputs_not_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with params, GMACs and GFLOPs")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'essnet*'")
    p.add_argument("--size", type=parse_size, default=(512, 1024), help="input HxW for the counts (default 512x1024)")
    p.add_argument("--num-classes", type=positive_int, default=19)
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (used for the README)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.add_argument("--no-cache", action="store_true", help="recount every model (counts are cached per source version)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="params, MACs, FLOPs, peak activation memory and eager latency of a model")
    p.add_argument("model", help="registered model name, shipped weights (enet_camvid) or an rtseg checkpoint path")
    p.add_argument("--size", type=parse_size, default=None, help="input HxW (default: the model's default size)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--num-classes", type=positive_int, default=19)
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs after warm-up (median reported)")
    p.add_argument("--warmup", type=nonnegative_int, default=3)
    p.add_argument("--threads", type=threads_int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON document (keys params, macs, flops, latency_ms, ...)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("convert", help="convert a reference implementation's state dict into an rtseg checkpoint, "
                       "or an rtseg checkpoint into its deploy form (--to grouped)")
    p.add_argument("src", type=Path, help="input state dict (.pth), or an rtseg checkpoint with --to")
    p.add_argument("dst", type=Path, help="output rtseg checkpoint (.pt)")
    p.add_argument("--source", default=None, help="which code base the weights come from (e.g. enet-davidtvs)")
    p.add_argument("--num-classes", type=positive_int, default=None, help="number of classes (default: from the weights)")
    p.add_argument("--to", choices=["grouped"], default=None,
                   help="'grouped': masked (gradual-grouping) convs -> real grouped convs, BatchNorm folded "
                   "(rtseg.convert_to_deploy); SRC is an rtseg checkpoint")
    p.add_argument("--keep-bn", action="store_true",
                   help="with --to grouped: do not fold BatchNorm (the result is then saved as the natively "
                   "grouped model where one is registered, e.g. essnet_d -> essnet_dg2s)")
    p.set_defaults(func=cmd_convert)


def _fmt_published(pub: dict) -> str:
    if not pub:
        return ""
    bits = []
    if "params" in pub:
        bits.append(f"{pub['params'] / 1e6:.2f}M")
    if "gmacs" in pub:
        bits.append(f"{pub['gmacs']:g} GMACs")
    if "gflops" in pub:
        bits.append(f"{pub['gflops']:g} GFLOPs")
    if "size" in pub:
        bits.append(f"@{pub['size'][0]}x{pub['size'][1]}")
    if "miou" in pub:
        bits.append(f"mIoU {pub['miou']:g}")
    return " ".join(bits)


def _fingerprint() -> str:
    """Changes whenever a model's structure or the counting could: rtseg/torch versions and the sources of
    the model families, model surgery and the profiler."""
    h = hashlib.sha1(f"{__version__}|{torch.__version__}".encode())
    pkg = Path(__file__).resolve().parents[1]
    for f in sorted([*(pkg / "models").glob("*.py"), *(pkg / "nn").glob("*.py"), pkg / "eval" / "profiler.py"]):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _counts(name: str, size: tuple[int, int], num_classes: int, cache: dict[str, Any]) -> dict[str, int]:
    key = f"{name}|{size[0]}x{size[1]}|{num_classes}"
    if key not in cache:
        m = create_model(name, num_classes=num_classes)
        fl = count_flops(m, size)
        cache[key] = {"params": count_params(m), "macs": int(fl["macs"]), "flops": int(fl["flops"])}
    return cache[key]


def model_rows(pattern: str = "*", size: tuple[int, int] = (512, 1024), num_classes: int = 19,
               use_cache: bool = True) -> list[dict]:
    """One row per registered model: params, MACs, FLOPs at ``size`` and the paper's numbers.

    Building and counting all models takes ~20 s, so the counts are cached in
    ``cache_dir()/model_counts-<fingerprint>.json``; the fingerprint covers every source file a count
    depends on, so an edited model is recounted, never served stale.
    """
    path = cache_dir() / f"model_counts-{_fingerprint()}.json"
    cache: dict[str, Any] = {}
    if use_cache and path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    before = len(cache)
    rows = []
    for name in list_models(pattern):
        info = model_info(name)
        c = _counts(name, tuple(size), num_classes, cache)
        rows.append({
            "name": name, "family": info.family, "params": c["params"], "macs": c["macs"],
            "flops": c["flops"], "size": list(size), "exportable": info.exportable,
            "published": info.published, "published_str": _fmt_published(info.published),
        })
    if use_cache and len(cache) > before:
        try:
            atomic_write_text(path, json.dumps(cache, sort_keys=True))
        except OSError:  # a read-only home: the counts are still right, only not kept
            pass
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = model_rows(args.pattern, args.size, args.num_classes, use_cache=not args.no_cache)
    if not rows:
        raise UsageError(f"no model matches {args.pattern!r}")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    h, w = args.size
    head = ["model", "family", "params", f"GMACs@{h}x{w}", f"GFLOPs@{h}x{w}", "paper (own convention)"]
    table = [[r["name"], r["family"], f"{r['params'] / 1e6:.3f}M", f"{r['macs'] / 1e9:.2f}", f"{r['flops'] / 1e9:.2f}",
              r["published_str"]] for r in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for t in table:
            print("| " + " | ".join(t) + " |")
        return 0
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for i, t in enumerate([head] + table):
        print("  ".join(str(x).ljust(wd) for x, wd in zip(t, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * wd for wd in widths))
    print("\nGMACs = multiply-accumulates (the ESSNet thesis' 'GFLOPs'); GFLOPs = 2 x GMACs (ENet's convention).")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    if args.model not in list_models() and not Path(args.model).exists() and args.model not in available_weights():
        raise UsageError(f"unknown model, checkpoint or shipped weights {args.model!r}"
                         f"{suggest(args.model, list_models() + available_weights())}; see `rtseg models`, "
                         "`rtseg weights`")
    if Path(args.model).suffix in {".pt", ".pth"} or Path(args.model).exists() or args.model not in list_models():
        model = load_model(args.model)  # a checkpoint path or shipped weights by name (enet_camvid)
        size = args.size or _weights_size(args.model, model)
    else:
        size = args.size or tuple(model_info(args.model).default_size)
        model = args.model
    if args.batch < 1 or args.runs < 1:
        raise UsageError("--batch and --runs must be >= 1")
    prof = profile_model(model, size=size, batch=args.batch, num_classes=args.num_classes,
                         latency=not args.no_latency, warmup=args.warmup, runs=args.runs, threads=args.threads or None)
    d = prof.to_dict()
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    print(f"model        {d['model']}  (input {args.batch}x3x{size[0]}x{size[1]})")
    print(f"params       {d['params']:,} ({d['params'] / 1e6:.3f} M)")
    print(f"MACs         {d['macs'] / 1e9:.3f} G   (multiply-accumulates)")
    print(f"FLOPs        {d['flops'] / 1e9:.3f} G   (= 2 x MACs)")
    if d["peak_activation_mb"] is not None:
        print(f"peak activ.  {d['peak_activation_mb']:.1f} MiB")
    if d["latency_ms"] is not None:
        lat = d["latency"]
        print(f"latency      {lat['median_ms']:.2f} ms median, p90 {lat['p90_ms']:.2f} ms, min {lat['min_ms']:.2f} ms "
              f"({lat['runs']} runs, {lat['threads']} threads, eager fp32) -> {1000 / lat['median_ms']:.1f} FPS")
    return 0


def _weights_size(arg: str, model: object) -> tuple[int, int]:
    """Default profile size of loaded weights: the size shipped weights were measured at, else the model's."""
    try:
        rec = weights_info(arg) if arg in available_weights() else {}
    except (FileNotFoundError, ValueError):
        rec = {}
    size = rec.get("macs_size")
    return tuple(size) if size else tuple(model_info(model.rtseg_name).default_size)


def cmd_convert(args: argparse.Namespace) -> int:
    if args.to is not None:
        return _convert_to_grouped(args)
    if args.source is None:
        raise UsageError("give --source (foreign weights to import) or --to grouped (deploy form of a checkpoint)")
    if args.keep_bn:
        raise UsageError("--keep-bn only applies with --to grouped")
    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    out = convert_file(args.source, args.src, args.dst, **kw)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _convert_to_grouped(args: argparse.Namespace) -> int:
    if args.source is not None or args.num_classes is not None:
        raise UsageError("--to converts an rtseg checkpoint: --source and --num-classes do not apply")
    check_outputs_not_inputs([args.src], args.dst, [args.dst], what="dst")  # the source must survive
    model = load_model(args.src)
    if not any(True for _ in masked_convs(model)):
        raise UsageError(f"{args.src}: no masked (gradual-grouping) convs to convert; train with gradual_groups=G")
    try:
        out = convert_to_deploy(model, fold_bn=not args.keep_bn)
    except ValueError as e:
        raise UsageError(f"{args.src}: {e}") from None
    meta = {k: v for k, v in model.rtseg_meta.items() if k not in ("input", "shipped_as")}
    meta["converted_from"] = {"file": args.src.name, "model": model.rtseg_name, "to": "grouped",
                              "bn_folded": not args.keep_bn}
    save_model(out, args.dst, **meta)
    print(f"wrote {args.dst} ({out.rtseg_name}, {sum(p.numel() for p in out.parameters()):,} params)",
          file=sys.stderr)
    return 0
