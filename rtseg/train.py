"""The training engine: ``rtseg.train(...)`` ≡ ``rtseg train ...``.

One loop you can read in one sitting (nanoGPT style): autocast, forward, loss, backward, step,
metric update, checkpoint. The papers' recipe (ENet / ERFNet / ESSNet thesis) is the default
config (rtseg/config.py); two-stage training runs the ``encoder`` stage (the encoder alone
against labels at 1/8) and then the ``full`` stage (the whole network, starting from the
stage-one encoder) from a single command.

Reproducibility contract: every random choice is a function of the seed and the position in the
run. Data order is ``DistributedSampler(seed).set_epoch(global_epoch)``; augmentation draws from
``numpy.random.default_rng([seed, global_epoch, sample_index])``; dropout uses torch's global RNG,
whose state is checkpointed. ``--resume`` of a killed run therefore ends with the same weights
as an uninterrupted run (bit-exact on CPU; see docs/training.md for CUDA).

Multi-GPU / multi-node: launch with ``torchrun``; ranks are read from the environment, DDP wraps
the model, metrics are reduced over ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from rtseg._io import atomic_torch_save, atomic_write_text
from rtseg.config import ConfigError, TrainConfig, config_to_dict, load_config, save_config
from rtseg.errors import TrainingError
from rtseg.losses import WeightedCrossEntropy, class_weights
from rtseg.transforms import EvalTransform, TrainTransform, downsample_label, pad_collate

__all__ = ["TRAIN_STATE_FORMAT", "ModelEMA", "evaluate", "train"]

TRAIN_STATE_FORMAT = "rtseg-train-state"
#: keys that may change when resuming without breaking "same weights as an uninterrupted run"
RESUME_MUTABLE = ("workers", "persistent_workers", "progress", "device", "cache")
#: consecutive non-finite steps (each skipped) after which a run stops instead of burning its budget
MAX_BAD_STEPS = 20


# --------------------------------------------------------------------------------------------
# distributed set-up


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_pref: str) -> _Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return _Dist()
    owns = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def _pick_device(pref: str, d: _Dist) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA device (use device=cpu)")
        if dev.index is None:
            dev = torch.device("cuda", d.local_rank if d.world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


# --------------------------------------------------------------------------------------------
# data: every sample's augmentation is a function of (seed, epoch, index)


class _Augmented(Dataset):
    """Wraps a SegDataset; ``ds[(index, epoch)]`` -> transformed ``(3 x h x w uint8, h x w int64)``."""

    def __init__(self, ds: Any, transform: Any, seed: int) -> None:
        self.ds, self.transform, self.seed = ds, transform, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, label = self.ds[index]
        rng = np.random.default_rng([self.seed, epoch, index])  # independent of worker and rank
        return self.transform(image, label, rng)


class _EpochSampler(Sampler):
    """Tags each index of ``base`` with the epoch, so persistent workers know which epoch it is."""

    def __init__(self, base: Sampler) -> None:
        self.base, self.epoch = base, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((int(i), self.epoch) for i in self.base)

    def __len__(self) -> int:
        return len(self.base)


class _ShardSampler(Sampler):
    """Rank ``r`` of ``w`` gets indices ``r, r + w, ...``: no padding, so no sample counts twice."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers do cheap per-sample work; threads would fight the model for cores


def _loader(
    ds: Dataset,
    sampler: Sampler,
    batch_size: int,
    cfg: TrainConfig,
    device: torch.device,
    drop_last: bool,
    seed: int,
) -> DataLoader:
    workers = min(2, os.cpu_count() or 1) if cfg.workers is None else cfg.workers
    g = torch.Generator()
    g.manual_seed(seed)  # worker base seeds come from here, never from the global RNG (dropout's)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        collate_fn=functools.partial(pad_collate, ignore_index=cfg.ignore_index),
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init,
        generator=g,
        persistent_workers=cfg.persistent_workers and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def _build_data(cfg: TrainConfig) -> tuple[Any, Any | None]:
    from rtseg.data import build_dataset

    kw = dict(cfg.dataset_kwargs)
    if cfg.cache:
        kw["cache"] = True
    train_ds = build_dataset(cfg.dataset, root=cfg.root, split=cfg.train_split, **kw)
    val_ds = build_dataset(cfg.dataset, root=cfg.root, split=cfg.val_split, **kw) if cfg.val_split else None
    for ds in (train_ds, val_ds):
        if ds is not None and len(ds) == 0:
            raise ConfigError(f"dataset {cfg.dataset!r} split {ds.split!r} has no samples (root={cfg.root})")
        if ds is not None and cfg.cache and hasattr(ds, "preload"):
            ds.preload()  # decode once in the parent: forked workers share the pages copy-on-write
    if val_ds is not None and list(val_ds.class_names) != list(train_ds.class_names):
        raise ConfigError(
            f"{cfg.dataset}: splits {cfg.train_split!r} and {cfg.val_split!r} have different classes"
        )
    return train_ds, val_ds


# --------------------------------------------------------------------------------------------
# model helpers


class ModelEMA:
    """Exponential moving average of a model's weights: ``ema = d * ema + (1 - d) * w`` after every step.

    Buffers (BatchNorm statistics) are copied, not averaged. ``module`` is a full model (same
    class, same ``rtseg_name``) that can be evaluated and saved like the original.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        self.module.load_state_dict(model.state_dict())


def _init_from(model: nn.Module, path: str) -> int:
    """Copy every same-named, same-shaped tensor of rtseg checkpoint ``path`` into ``model``."""
    from rtseg.checkpoint import load_checkpoint

    src = load_checkpoint(path)["state_dict"]
    own = model.state_dict()
    take = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if not take:
        raise ConfigError(
            f"init={path}: no tensor of the checkpoint fits model {getattr(model, 'rtseg_name', '?')}"
        )
    model.load_state_dict(take, strict=False)
    return len(take)


def _optimizer(model: nn.Module, cfg: TrainConfig, split_encoder: bool = False) -> torch.optim.Optimizer:
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if split_encoder:  # decoder attachment (thesis §3.5.1): group 1 = the encoder, whose lr is scaled
        if not isinstance(getattr(model, "encoder", None), nn.Module):
            raise ConfigError("decoder_warmup_epochs needs a model with an `encoder` submodule")
        enc = {id(p) for p in model.encoder.parameters()}
        params = [
            {"params": [p for p in params if id(p) not in enc]},
            {"params": [p for p in params if id(p) in enc]},
        ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # Adam with L2 weight decay (ENet/ERFNet used Torch7/PyTorch Adam with weightDecay, i.e. coupled L2)
    return opt_cls(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, epochs: int, steps: int) -> Any:
    if cfg.scheduler == "poly":
        power, total = cfg.poly_power, epochs if cfg.poly_by_epoch else epochs * steps
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / total) ** power)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    return None


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
    encoder_only: bool = False,
    encoder_target: str = "nearest",
    ignore_index: int = 255,
    class_names: list[str] | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Segmentation metrics of ``model`` over ``loader`` (reduced over ranks when distributed).

    ``loader`` yields ``(B x 3 x H x W uint8, B x H x W int64)`` batches. With ``encoder_only``
    the encoder's ``ceil(H/8) x ceil(W/8)`` scores are scored against labels downsampled the way
    stage-one training sees them. Returns :meth:`rtseg.metrics.SegMetrics.compute`'s dict.
    """
    from rtseg.metrics import SegMetrics

    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = SegMetrics(num_classes, ignore_index=ignore_index, class_names=class_names)
    for images, labels in loader:
        x = _to_input(images, device, channels_last)
        y = labels.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = model(x, encoder_only=encoder_only)
        if encoder_only:
            y = downsample_label(y, _stride(model), encoder_target, ignore_index, num_classes)
        metrics.update(out.float(), y)
    metrics.all_reduce()
    model.train(was_training)
    return metrics.compute()


def _step_is_finite(loss: torch.Tensor, model: nn.Module, check_grads: bool, world: int) -> bool:
    """True if the loss (and, unless GradScaler already checks them, the gradients) are finite on every rank."""
    ok = torch.isfinite(loss.detach())
    if check_grads:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            ok = ok & torch.isfinite(nn.utils.get_total_norm(grads))
    if world > 1:  # ranks must agree, or DDP's next all-reduce would pair different steps
        flag = ok.to(torch.float32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = flag > 0
    return bool(ok)


def _has_dilated_depthwise(model: nn.Module) -> bool:
    """Any depthwise conv (one input channel per group) with dilation > 1 that runs as a dilated conv?
    (Those computed by space-to-batch, rtseg.train_speed, run dilation-1 kernels and do not count.)"""
    from rtseg.train_speed import SpaceToBatchDepthwise

    return any(
        isinstance(m, nn.Conv2d)
        and not isinstance(m, SpaceToBatchDepthwise)
        and m.groups > 1
        and m.groups == m.in_channels
        and max(m.dilation) > 1
        for m in model.modules()
    )


def _nonfinite_report(loss: torch.Tensor, model: nn.Module) -> str:
    """Which of loss / gradients went non-finite (for the first skipped step's warning)."""
    if not bool(torch.isfinite(loss.detach())):
        return f"loss {float(loss)}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    return f"gradients of {len(bad)} tensors, e.g. {', '.join(bad[:3])}" if bad else "gradients on another rank"


def _to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = images.to(device, non_blocking=True).float().div_(255.0)  # uint8 over the wire: 4x less copying
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _autocast(device: torch.device, enabled: bool) -> Any:
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def _stride(model: nn.Module) -> int:
    return int(getattr(getattr(model, "module", model), "output_stride", 8))


# --------------------------------------------------------------------------------------------
# checkpoint state (weights_only-loadable: tensors, lists, plain scalars)


def _rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "loader": loader_gen.get_state(),
    }


def _set_rng_state(s: Mapping[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    p = s["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    loader_gen.set_state(s["loader"])


def _load_train_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; there is nothing to resume (start a new run instead)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{path}: not a readable training checkpoint ({str(e).strip().splitlines()[0]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(f"{path}: not an rtseg training state (rtseg train writes last.pt)")
    return state


def _resume_config(state: Mapping[str, Any], overrides: Mapping[str, Any]) -> TrainConfig:
    cfg = load_config(state["config"])
    bad = sorted(k for k in overrides if k not in RESUME_MUTABLE)
    if bad:
        raise ConfigError(
            f"cannot change {', '.join(bad)} when resuming (the run would no longer match an uninterrupted "
            f"one); only {', '.join(RESUME_MUTABLE)} may change"
        )
    return load_config(cfg, overrides)


def _trim_log(path: Path, global_epoch: int) -> None:
    """Keep log lines up to the checkpoint's epoch (a kill can land between log line and checkpoint,
    or in the middle of a line)."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["global_epoch"] <= global_epoch:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):
            pass  # a torn last line
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


# --------------------------------------------------------------------------------------------
# the engine


def train(
    config_or_path: str | os.PathLike | Mapping[str, Any] | TrainConfig | None = None,
    *,
    resume: str | os.PathLike | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a segmentation model with the papers' recipe; ``rtseg train`` with the same words.

    Args:
        config_or_path: a YAML/JSON recipe (``configs/enet_camvid.yaml``), a mapping, a
            :class:`~rtseg.config.TrainConfig`, or ``None`` for the defaults.
        resume: a run folder (``out`` of an earlier run) whose ``last.pt`` is continued exactly;
            its config is used, and only :data:`RESUME_MUTABLE` keys may be overridden.
        **overrides: config keys, e.g. ``model="enet", epochs=100, crop="360x480"`` (strings are
            parsed by the field's type, like the CLI's ``key=value``).

    Returns:
        ``{"run_dir", "best_checkpoint", "last_checkpoint", "best_miou", "best_epoch",
        "final" (last validation metrics, or None), "history" (one dict per epoch), "config",
        "model" (the trained model, unwrapped; EMA weights when ``ema > 0``)}``.
    """
    if resume is not None:
        if config_or_path is not None:
            raise ConfigError("resume takes its config from RUN_DIR/last.pt; do not pass a config as well")
        state = _load_train_state(Path(resume))
        cfg = _resume_config(state, overrides)
        if Path(cfg.out).resolve() != Path(resume).resolve():
            cfg = load_config(cfg, {"out": str(resume)})  # the folder may have been moved
    else:
        state = None
        cfg = load_config(config_or_path, overrides)

    d = _init_distributed(cfg.device)
    try:
        return _run(cfg, state, d)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: TrainConfig, state: dict[str, Any] | None, d: _Dist) -> dict[str, Any]:
    device = _pick_device(cfg.device, d)
    run_dir = Path(cfg.out)
    if state is None and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt): continue it with --resume {run_dir} "
            f"or choose another out="
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: autotuned kernels pay off
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # same seed on every rank: identical initial weights

    # ---- data, model, loss ----
    train_ds, val_ds = _build_data(cfg)
    num_classes, class_names = train_ds.num_classes, list(train_ds.class_names)
    from rtseg.models import create_model

    model = create_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs)
    from rtseg.grouping import gradual_setup, set_alpha

    alpha_at = gradual_setup(model, cfg)  # gradual grouping: masked convs + alpha schedule (None when off)
    if cfg.init and state is None:
        n = _init_from(model, cfg.init)
        if d.main and cfg.progress:
            print(f"init: {n} tensors from {cfg.init}")
    model.to(device)
    if cfg.space_to_batch and device.type == "cpu":
        # issue #18: oneDNN's dilated depthwise weight gradient is the slowest op of an ESSNet step (and wrong
        # in bf16 + NHWC); the same conv on the dilation**2 phase sub-grids runs fast, correct dilation-1
        # kernels. Swapped back before the model is returned (checkpoints hold only the state_dict anyway).
        from rtseg.train_speed import speed_up

        speed_up(model)
    channels_last = cfg.channels_last
    if channels_last and cfg.amp and device.type == "cpu" and _has_dilated_depthwise(model):
        # torch 2.13 CPU (oneDNN): bf16 + channels_last computes wrong weight gradients for dilated
        # depthwise convs (10x too small, or ~1e19 -> inf); see docs/training.md. NCHW is correct.
        channels_last = False
        if d.main:
            print("warning: channels_last ignored: bf16 training of dilated depthwise convs in NHWC gives "
                  "wrong gradients on CPU (docs/training.md)", flush=True)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    if state is not None:
        weights = state["class_weights"]
    elif cfg.class_weighting != "none":
        from rtseg.data import class_frequencies

        weights = class_weights(cfg.class_weighting, class_frequencies(train_ds), cfg.weight_c, num_classes)
    else:
        weights = None
    criterion = WeightedCrossEntropy(weights, cfg.ignore_index).to(device)
    ema = ModelEMA(model, cfg.ema) if cfg.ema > 0 else None
    net: nn.Module = model
    if d.world > 1:
        # find_unused_parameters: the encoder stage leaves the decoder without gradients
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    train_sampler = _EpochSampler(
        DistributedSampler(
            train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    )
    aug = TrainTransform(cfg.crop, cfg.scale, cfg.hflip, cfg.translate, cfg.ignore_index)
    train_loader = _loader(
        _Augmented(train_ds, aug, cfg.seed),
        train_sampler,
        cfg.batch_size,
        cfg,
        device,
        drop_last=True,
        seed=cfg.seed,
    )
    val_loader = None
    if val_ds is not None:
        val_loader = _loader(
            _Augmented(val_ds, EvalTransform(), cfg.seed),
            _ShardSampler(len(val_ds), d.rank, d.world),
            cfg.val_batch_size or cfg.batch_size,
            cfg,
            device,
            drop_last=False,
            seed=cfg.seed,
        )
    steps = len(train_loader)
    if steps == 0:
        raise ConfigError(
            f"{cfg.dataset}/{cfg.train_split} has {len(train_ds)} samples: fewer than "
            f"batch_size={cfg.batch_size} x {d.world} process(es), so an epoch has no step"
        )
    use_amp = cfg.amp
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and device.type == "cuda")

    # ---- where to start ----
    start_stage, start_epoch, history = 0, 0, []
    best: dict[str, Any] = {"score": -math.inf, "miou": None, "epoch": None}
    if state is not None:
        best = dict(state["best"])
        model.load_state_dict(state["model"])
        history = list(state["history"])
        start_stage, start_epoch = int(state["stage_index"]), int(state["epoch"])
        if start_epoch >= cfg.stage_epochs(cfg.stages[start_stage]):
            start_stage, start_epoch = start_stage + 1, 0  # killed right after a stage's last epoch
        if d.main:
            _trim_log(run_dir / "metrics.jsonl", int(state["global_epoch"]))
    elif d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    best_path = run_dir / "best.pt"
    final: dict[str, Any] | None = None
    epoch_offset = sum(cfg.stage_epochs(s) for s in cfg.stages[:start_stage])
    for si in range(start_stage, len(cfg.stages)):
        stage = cfg.stages[si]
        n_epochs = cfg.stage_epochs(stage)
        encoder_only = stage == "encoder"
        # A fresh optimiser per stage: stage two starts from the stage-one encoder, not its momentum.
        warmup = cfg.decoder_warmup_epochs if stage == "full" else 0
        optimizer = _optimizer(model, cfg, split_encoder=warmup > 0)
        scheduler = _scheduler(optimizer, cfg, n_epochs, steps)
        best = {"score": -math.inf, "miou": None, "epoch": None}
        if ema is not None:
            ema.reset(model)
        first = 0
        if state is not None and si == int(state["stage_index"]):
            first = start_epoch
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None:
                ema.module.load_state_dict(state["ema"])
            best = dict(state["best"])
        if state is not None and si == start_stage:
            _set_rng_state(state["rng"], train_loader.generator)  # after every RNG-consuming set-up step
        stage_best = best_path if stage == cfg.stages[-1] else run_dir / f"best_{stage}.pt"

        for epoch in range(first, n_epochs):
            global_epoch = epoch_offset + epoch
            train_sampler.set_epoch(global_epoch)
            alpha = None
            if alpha_at is not None:  # stepped per epoch: a function of the global epoch, so resume-exact
                alpha = alpha_at(global_epoch)
                for m in (model, ema.module if ema is not None else None):
                    if m is not None:
                        set_alpha(m, alpha)
                if alpha == 0.0 and alpha_at(global_epoch - 1) > 0.0:
                    best = {"score": -math.inf, "miou": None, "epoch": None}  # best.pt = a convertible model
            enc_lr = optimizer.param_groups[1] if warmup > 0 and epoch < warmup else None
            net.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            data_s, seen, skipped, bad_run = 0.0, 0, 0, 0
            bar = _bar(train_loader, d.main and cfg.progress, f"{stage} {epoch + 1}/{n_epochs}")
            t_data = time.perf_counter()
            for step, (images, labels) in enumerate(bar):
                data_s += time.perf_counter() - t_data
                x = _to_input(images, device, channels_last)
                y = labels.to(device, non_blocking=True)
                if encoder_only:
                    y = downsample_label(y, _stride(model), cfg.encoder_target, cfg.ignore_index, num_classes)
                with _autocast(device, use_amp):
                    logits = net(x, encoder_only=encoder_only)
                    loss = criterion(logits, y)
                scaler.scale(loss).backward()
                if not _step_is_finite(loss, model, check_grads=not scaler.is_enabled(), world=d.world):
                    # a NaN/inf loss or gradient would poison every weight through Adam's moments: skip the
                    # update (as GradScaler does for fp16), count it, and stop if it keeps happening
                    if not skipped and d.main:
                        print(f"warning: {stage} epoch {epoch + 1} step {step + 1}: non-finite "
                              f"{_nonfinite_report(loss, model)}; step skipped", flush=True)
                    optimizer.zero_grad(set_to_none=True)
                    skipped, bad_run = skipped + 1, bad_run + 1
                    if bad_run >= MAX_BAD_STEPS:
                        raise TrainingError(
                            f"{stage} epoch {epoch + 1}: loss or gradients non-finite for {bad_run} consecutive "
                            f"steps (lr {optimizer.param_groups[0]['lr']:.2e}); try amp=false, a lower lr or "
                            "grad_clip, and resume from the last good checkpoint"
                        )
                    if cfg.scheduler == "poly" and not cfg.poly_by_epoch:
                        scheduler.step()  # the schedule follows the step count, taken or not
                    t_data = time.perf_counter()
                    continue
                bad_run = 0
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                if enc_lr is not None:  # schedulers never see the scaled value: it is restored right after
                    saved_lr, enc_lr["lr"] = enc_lr["lr"], enc_lr["lr"] * cfg.encoder_lr_scale
                scaler.step(optimizer)
                if enc_lr is not None:
                    enc_lr["lr"] = saved_lr
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if cfg.scheduler == "poly" and not cfg.poly_by_epoch:
                    scheduler.step()
                if ema is not None:
                    ema.update(model)
                loss_sum += loss.detach()
                seen += x.shape[0]
                if bar is not train_loader and (step % 10 == 0 or step == steps - 1):
                    rate = seen * d.world / (time.perf_counter() - t0)
                    bar.set_postfix(
                        loss=f"{loss.item():.3f}",
                        lr=f"{lr:.2e}",
                        img_s=f"{rate:.1f}",
                    )
                t_data = time.perf_counter()
            train_time = time.perf_counter() - t0
            if d.world > 1:
                dist.all_reduce(loss_sum)  # every rank must see the same loss (plateau schedule)
            train_loss = loss_sum.item() / max(1, (steps - skipped) * d.world)
            if cfg.scheduler == "plateau":
                scheduler.step(train_loss)  # ERFNet: halve the lr when the training error stagnates
            elif cfg.scheduler == "poly" and cfg.poly_by_epoch:
                scheduler.step()
            if d.world > 1:
                _sync_buffers(model, ema, d.world)

            # ---- validate, log, checkpoint ----
            eval_model = ema.module if ema is not None else model
            metrics = None
            last_epoch = epoch + 1 == n_epochs
            if val_loader is not None and ((epoch + 1) % cfg.val_every == 0 or last_epoch):
                metrics = evaluate(
                    eval_model,
                    val_loader,
                    num_classes,
                    device=device,
                    amp=use_amp,
                    encoder_only=encoder_only,
                    encoder_target=cfg.encoder_target,
                    ignore_index=cfg.ignore_index,
                    class_names=class_names,
                    channels_last=channels_last,
                )
                final = metrics
            record = {
                "epoch": epoch + 1,
                "stage": stage,
                "global_epoch": global_epoch + 1,
                "train_loss": train_loss,
                "val_miou": None if metrics is None else metrics["miou"],
                "val_pixel_acc": None if metrics is None else metrics["pixel_acc"],
                "val_mean_class_acc": None if metrics is None else metrics["mean_class_acc"],
                "lr": lr,  # of the epoch's last step
                "time_s": round(train_time, 3),
                "img_per_s": round(steps * cfg.batch_size * d.world / train_time, 2),
                "data_wait_s": round(data_s, 3),
            }
            if skipped:
                record["skipped_steps"] = skipped
                if d.main:
                    print(f"warning: {stage} epoch {epoch + 1}: skipped {skipped} of {steps} steps with a "
                          "non-finite loss or gradient", flush=True)
            if alpha is not None:
                record["alpha"] = alpha
            if warmup > 0:
                record["encoder_lr"] = lr * cfg.encoder_lr_scale if enc_lr is not None else lr
            history.append(record)
            score = -train_loss if val_loader is None else (metrics["miou"] if metrics is not None else None)
            improved = score is not None and not math.isnan(score) and score > best["score"]
            if improved:
                best = {"score": score, "miou": record["val_miou"], "epoch": epoch + 1}
            if d.main:
                if cfg.progress:
                    miou = "" if metrics is None else f" val mIoU {metrics['miou']:.4f}"
                    print(
                        f"[{stage} {epoch + 1}/{n_epochs}] loss {train_loss:.4f}{miou} "
                        f"lr {record['lr']:.2e} {record['img_per_s']:.1f} img/s{' *' if improved else ''}"
                    )
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if improved:
                    from rtseg.checkpoint import save_model

                    save_model(
                        eval_model,
                        stage_best,
                        class_names=class_names,
                        dataset=cfg.dataset,
                        stage=stage,
                        epoch=epoch + 1,
                        val_miou=record["val_miou"],
                        metrics=None if metrics is None else _plain_metrics(metrics),
                        train_loss=train_loss,
                        config=config_to_dict(cfg),
                    )
                atomic_torch_save(
                    {
                        "format": TRAIN_STATE_FORMAT,
                        "version": 1,
                        "config": config_to_dict(cfg),
                        "stage_index": si,
                        "stage": stage,
                        "epoch": epoch + 1,
                        "global_epoch": global_epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else {},
                        "scaler": scaler.state_dict(),
                        "ema": ema.module.state_dict() if ema is not None else {},
                        "best": best,
                        "class_weights": weights,
                        "class_names": class_names,
                        "history": history,
                        "rng": _rng_state(train_loader.generator),
                        "data_order": {"sampler_seed": cfg.seed, "next_global_epoch": global_epoch + 1},
                    },
                    run_dir / "last.pt",
                )
        epoch_offset += n_epochs

    if d.world > 1:
        dist.barrier()  # nobody leaves (and tears down the group) before rank 0 has written
    from rtseg.train_speed import restore

    for m in (model, ema.module if ema is not None else None):
        if m is not None:
            restore(m)  # plain nn.Conv2d again: export and inference see the model as built
    out_model = ema.module if ema is not None else model
    return {
        "run_dir": str(run_dir),
        "best_checkpoint": str(best_path),
        "last_checkpoint": str(run_dir / "last.pt"),
        "best_miou": best["miou"],
        "best_epoch": best["epoch"],
        "final": final,
        "history": history,
        "config": config_to_dict(cfg),
        "model": out_model,
    }


@torch.no_grad()
def _sync_buffers(model: nn.Module, ema: ModelEMA | None, world: int) -> None:
    """Average BatchNorm statistics over ranks: each rank updated them on its own batches."""
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(world)
    if ema is not None:
        for e, b in zip(ema.module.buffers(), model.buffers()):
            e.copy_(b)


def _plain_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar and per-class parts of a metrics dict (no confusion matrix) for checkpoint meta."""
    keep = ("miou", "pixel_acc", "mean_class_acc", "fwiou", "per_class_iou", "per_class_acc")
    return {k: m[k] for k in keep if k in m}


def _bar(loader: DataLoader, show: bool, desc: str) -> Any:
    if not show:
        return loader
    from rtseg._progress import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
