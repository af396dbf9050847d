"""``rtseg weights``: the trained weights shipped with rtseg (``rtseg.load_model(NAME)``)."""

from __future__ import annotations

import argparse
import json

from rtseg.hub import weights_info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list the trained weights shipped with rtseg (load by name)")
    p.add_argument("name", nargs="?", default=None, help="show one record in full (JSON)")
    p.add_argument("--json", action="store_true", help="print all records as JSON")
    p.set_defaults(func=cmd_weights)


def cmd_weights(args: argparse.Namespace) -> int:
    if args.name is not None:
        print(json.dumps(weights_info(args.name), indent=2))  # unknown name: FileNotFoundError -> exit 2
        return 0
    index = weights_info()
    if args.json:
        print(json.dumps(index, indent=2))
        return 0
    if not index:
        print("no weights are shipped with this rtseg")
        return 0
    print(f"{'name':24s} {'model':14s} {'dataset':8s} {'val mIoU':>8s} {'params':>9s} {'GMACs':>6s}  latency (p50 ms)")
    for name, r in sorted(index.items(), key=lambda kv: -kv[1]["val_miou"]):
        lat = ", ".join(f"{k} {v:.1f}" for k, v in (r.get("latency_ms") or {}).items()) or "-"
        h, w = r["macs_size"]
        print(f"{name:24s} {r['model']:14s} {r['dataset']:8s} {r['val_miou'] * 100:8.2f} {r['params']:9,d} "
              f"{r['macs'] / 1e9:6.2f}  {lat}  (@{h}x{w})")
    print('\nload with rtseg.load_model("<name>"); details: rtseg weights <name>')
    return 0
