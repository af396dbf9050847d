"""What to report: run folders, checkpoints and shipped weights resolved, labelled and matched to data.

Every argument is resolved (and checked) here before anything slow runs; errors name the argument.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtseg.checkpoint import load_checkpoint
from rtseg.hub import WEIGHTS_DIR, resolve_weights, weights_info

__all__ = ["Source", "assign_labels", "dataset_spec", "group_labels", "read_log", "recorded_root", "resolve_source",
           "slug"]


@dataclass
class Source:
    """One model to report: where its checkpoint and (optional) training log are."""

    arg: str  # as the user gave it
    checkpoint: Path
    run_dir: Path | None
    metrics_log: Path | None
    label: str = ""
    shipped: bool = False  # named shipped weights (rtseg/weights/index.json)


def resolve_source(arg: str | os.PathLike) -> Source:
    """A run folder or checkpoint path -> :class:`Source`; errors name the argument."""
    p = Path(arg)
    if not p.exists():
        record = weights_info().get(str(arg))
        if record is None:
            raise FileNotFoundError(f"{arg}: no such run folder, checkpoint or shipped weights")
        ckpt = resolve_weights(str(arg))  # shipped weights by name (hash checked)
        # its training log: the committed copy ("log"), else the run folder it was trained in if at hand
        repo = WEIGHTS_DIR.resolve().parents[1]  # the source tree the weights ship in
        cands = [c for k in ("log", "run") if record.get(k) for c in (repo / record[k], Path(record[k]))]
        log = next((c / "metrics.jsonl" for c in cands if (c / "metrics.jsonl").is_file()), None)
        return Source(str(arg), ckpt, None if log is None else log.parent, log, shipped=True)
    if p.is_dir():
        ckpt = p / "best.pt"
        if not ckpt.is_file():
            what = "has no best.pt"
            if (p / "last.pt").is_file():
                what = "has last.pt but no best.pt: no epoch improved the score yet"
            raise FileNotFoundError(f"{arg}: not a run folder ({what}; expected a folder written by `rtseg train`)")
        run_dir: Path | None = p
    else:
        ckpt = p
        # a checkpoint inside a run folder (e.g. runs/x/best.pt) still has that run's training log
        run_dir = p.parent if (p.parent / "config.yaml").is_file() else None
    load_checkpoint(ckpt)  # CheckpointError names the file if it is not an rtseg checkpoint
    log = run_dir / "metrics.jsonl" if run_dir is not None else None
    return Source(str(arg), ckpt, run_dir, log if log is not None and log.is_file() else None)


def assign_labels(sources: list[Source], names: Sequence[str] | None) -> None:
    """Give every source a unique display label (run folder name, else checkpoint stem)."""
    if names is not None:
        if len(names) != len(sources):
            raise ValueError(f"{len(names)} names given for {len(sources)} runs")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {list(names)}")
        for s, n in zip(sources, names):
            s.label = str(n)
        return
    for s in sources:
        if s.shipped:  # shipped weights go by their name, not by the folder their log sits in
            s.label = s.arg
        else:
            s.label = s.run_dir.resolve().name if s.run_dir is not None else s.checkpoint.stem
    seen: dict[str, int] = {}
    for s in sources:
        if sum(o.label == s.label for o in sources) > 1:  # e.g. two runs both called "train"
            parent = (s.run_dir or s.checkpoint.parent).resolve().parent.name
            s.label = f"{parent}/{s.label}" if parent else s.label
    for s in sources:
        k = seen.get(s.label, 0)
        seen[s.label] = k + 1
        if k:
            s.label = f"{s.label}#{k + 1}"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl`` (a torn last line from a killed run is skipped)."""
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: unreadable line skipped")
            continue
        if isinstance(rec, dict):
            rows.append(rec)
    return rows


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def dataset_spec(meta: dict[str, Any], ckpt: Path, dataset: str | None, root: str | os.PathLike | None,
                  split: str | None, dataset_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Which dataset / root / split / kwargs to evaluate a checkpoint on (overrides win)."""
    cfg = meta.get("config") or {}
    trained_on = cfg.get("dataset") or meta.get("dataset")
    name = dataset or trained_on
    if not name:
        raise ValueError(f"{ckpt}: the checkpoint does not record its dataset; pass dataset= (--dataset)")
    same = trained_on is not None and name.lower() == str(trained_on).lower()
    kw = dict(cfg.get("dataset_kwargs") or {}) if same else {}
    kw.update(dataset_kwargs or {})
    if root is None and same and cfg.get("root"):
        root = recorded_root(str(cfg["root"]), ckpt, cfg.get("out"), name)
    return {
        "name": name,
        "root": str(root) if root is not None else None,
        "split": split or (cfg.get("val_split") if same else None) or "val",
        "kwargs": kw,
    }


def recorded_root(recorded: str, ckpt: Path, out: str | None, dataset: str) -> Path:
    """The data folder a checkpoint recorded at training time, found from here; ``ValueError`` naming ``--root``.

    A relative root (``root=../shared/data/camvid``) is relative to the folder training ran in, which is
    rarely today's working directory. Tried in order: as given (from here); from the training folder
    (the checkpoint's run folder minus its recorded ``out``, or the source tree for shipped weights);
    ``$RTSEG_DATA/<dataset>``.
    """
    rec = Path(recorded).expanduser()
    cands = [rec]
    if not rec.is_absolute():
        run_dir = ckpt.resolve().parent
        if ckpt.resolve().parent == WEIGHTS_DIR.resolve():
            cands.append(WEIGHTS_DIR.resolve().parents[1] / rec)  # shipped: trained in the source tree
        elif out and not Path(out).is_absolute():
            tail = Path(out).parts
            if tail and run_dir.parts[-len(tail):] == tail:
                cands.append(Path(*run_dir.parts[: -len(tail)]) / rec)
            cands.append(run_dir.parent.parent / rec)  # the usual runs/<name> layout
    env = os.environ.get("RTSEG_DATA")
    if env:
        cands.append(Path(env) / dataset)
    for c in cands:
        if c.is_dir():
            return c
    hint = "" if env else f" or set RTSEG_DATA to a folder holding {dataset}/"
    raise ValueError(f"{ckpt}: the data root recorded at training time, {recorded!r}, is not found from "
                     f"{Path.cwd()} (tried {', '.join(str(c) for c in dict.fromkeys(cands))}); "
                     f"pass --root DIR (report(..., root=DIR)){hint}")


def group_labels(keys: Sequence[str]) -> dict[str, str]:
    """Display names of evaluation sets (JSON specs): ``name/split``, with kwargs / root where those differ."""
    specs = {k: json.loads(k) for k in dict.fromkeys(keys)}
    labels = {k: f"{s['name']}/{s['split']}" for k, s in specs.items()}
    short = dict(labels)
    for k, s in specs.items():  # e.g. two synthetic/val of different lengths: name what differs
        twins = [specs[o] for o in specs if short[o] == short[k]]
        if len(twins) > 1:
            flat = [{**t["kwargs"], "root": t["root"]} for t in twins]
            mine = {**s["kwargs"], "root": s["root"]}
            differ = sorted(a for a in set().union(*flat) if len({json.dumps(f.get(a)) for f in flat}) > 1)
            extra = [f"{a}={mine.get(a)}" for a in differ]
            labels[k] += f" ({', '.join(extra)})" if extra else ""
    seen: dict[str, int] = {}
    for k in specs:  # still equal (names differing only in case): number them
        seen[labels[k]] = seen.get(labels[k], 0) + 1
        if seen[labels[k]] > 1:
            labels[k] += f" #{seen[labels[k]]}"
    return labels
