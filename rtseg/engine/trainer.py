"""The training engine: ``rtseg.train(...)`` ≡ ``rtseg train ...``.

A loop you can read in one sitting (nanoGPT style): :func:`_run` is a short driver whose phases are named
calls -- set-up (:func:`_setup`), where to start (:func:`_start`), per stage a fresh optimiser
(:func:`_setup_stage`), per epoch the steps (:func:`_train_epoch`, each one :func:`_train_step`:
autocast, forward, loss, backward, finiteness check, step), validation, the log line and the checkpoints
(:func:`_end_epoch`). The papers' recipe (ENet / ERFNet / ESSNet thesis) is the default config
(:mod:`rtseg.engine.config`); two-stage training runs the ``encoder`` stage (the encoder alone against
labels at 1/8) and then the ``full`` stage (the whole network, starting from the stage-one encoder).

Reproducibility contract: every random choice is a function of the seed and the position in the run
(:mod:`rtseg.engine.data`); dropout uses torch's global RNG, whose state is checkpointed
(:mod:`rtseg.engine.state`). ``--resume`` of a killed run therefore ends with the same weights as an
uninterrupted run (bit-exact on CPU; see docs/training.md for CUDA).

Multi-GPU / multi-node: launch with ``torchrun``; ranks are read from the environment, DDP wraps the model,
metrics are reduced over ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from rtseg.checkpoint import save_model
from rtseg.data import class_frequencies
from rtseg.data.transforms import EvalTransform, TrainTransform, downsample_label
from rtseg.engine.config import ConfigError, TrainConfig, config_to_dict, load_config, save_config
from rtseg.engine.data import Augmented, EpochSampler, ShardSampler, build_datasets, make_loader
from rtseg.engine.distributed import DistInfo, all_ranks_true, init_distributed, pick_device, sync_buffers
from rtseg.engine.losses import WeightedCrossEntropy, class_weights
from rtseg.engine.optim import ModelEMA, build_optimizer, build_scheduler, init_from
from rtseg.engine.state import (
    load_train_state,
    resume_config,
    rng_state,
    save_train_state,
    set_rng_state,
    trim_log,
)
from rtseg.errors import TrainingError
from rtseg.eval.loop import autocast, evaluate_batches, to_input
from rtseg.eval.metrics import SegMetrics
from rtseg.models import create_model
from rtseg.nn.grouping import gradual_setup, set_alpha
from rtseg.nn.space_to_batch import SpaceToBatchDepthwise, restore, speed_up
from rtseg.utils.checks import plain_worker_errors
from rtseg.utils.io import remove_stale_temps
from rtseg.utils.machine import cpu_name, cpu_supports_bf16
from rtseg.utils.progress import tqdm

__all__ = ["MAX_BAD_STEPS", "has_dilated_depthwise", "train"]

#: consecutive non-finite steps (each skipped) after which a run stops instead of burning its budget
MAX_BAD_STEPS = 20


def train(
    config_or_path: str | os.PathLike | Mapping[str, Any] | TrainConfig | None = None,
    *,
    resume: str | os.PathLike | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a segmentation model with the papers' recipe; ``rtseg train`` with the same words.

    Args:
        config_or_path: a YAML/JSON recipe (``configs/enet_camvid.yaml``), a mapping, a
            :class:`~rtseg.engine.config.TrainConfig`, or ``None`` for the defaults.
        resume: a run folder (``out`` of an earlier run) whose ``last.pt`` is continued exactly;
            its config is used, and only :data:`rtseg.engine.state.RESUME_MUTABLE` keys may be overridden.
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
        state = load_train_state(Path(resume))
        cfg = resume_config(state, overrides)
        if Path(cfg.out).resolve() != Path(resume).resolve():
            cfg = load_config(cfg, {"out": str(resume)})  # the folder may have been moved
    else:
        state = None
        cfg = load_config(config_or_path, overrides)

    d = init_distributed(cfg.device)
    try:
        return _run(cfg, state, d)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------- state
def _new_best() -> dict[str, Any]:
    return {"score": -math.inf, "miou": None, "epoch": None}


@dataclass
class _Run:
    """Everything set up once per run (the model, its loss and data), and what the run has produced so far."""

    cfg: TrainConfig
    d: DistInfo
    device: torch.device
    run_dir: Path
    train_ds: Any
    val_ds: Any
    num_classes: int
    class_names: list[str]
    model: nn.Module
    net: nn.Module  # the model, DDP-wrapped when distributed
    alpha_at: Any  # gradual grouping's alpha schedule (None when off)
    channels_last: bool
    weights: torch.Tensor | None  # class weights of the loss
    criterion: nn.Module
    ema: ModelEMA | None
    train_sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    steps: int
    scaler: torch.amp.GradScaler
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    best: dict[str, Any] = field(default_factory=_new_best)
    last_lr: float = 0.0  # lr of the last step taken
    last_encoder_lr: float = 0.0  # and of param group 1 (the encoder's, when it has its own group)
    last_nonfinite: str = ""  # what went non-finite in the last skipped step
    hardware: str = ""  # what computes the epochs (written into every log line)
    amp: bool = False  # mixed precision in effect (cfg.amp where the hardware has it: :func:`_amp`)
    stopped: str | None = None  # why the run ended before its last epoch (a plateau), if it did

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


@dataclass
class _Stage:
    """One stage's optimiser, schedule and position (a fresh optimiser per stage: stage two starts from the
    stage-one encoder, not its momentum)."""

    index: int
    name: str
    n_epochs: int
    first: int  # first epoch to run (> 0 when resuming inside this stage)
    epoch_offset: int  # epochs of the earlier stages
    warmup: int  # decoder attachment epochs with the encoder's lr scaled (thesis §3.5.1)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    best_path: Path

    @property
    def encoder_only(self) -> bool:
        return self.name == "encoder"


@dataclass
class _Epoch:
    """What one epoch's steps measured."""

    loss: float
    lr: float  # of the epoch's last step
    encoder_lr: float | None  # param group 1's lr at that step (decoder warm-up / encoder_lr), if any
    seconds: float
    data_wait_s: float
    skipped: int
    alpha: float | None
    encoder_lr_scaled: bool


# ---------------------------------------------------------------------------------------------- the driver
def _run(cfg: TrainConfig, state: dict[str, Any] | None, d: DistInfo) -> dict[str, Any]:
    run = _setup(cfg, state, d)
    start_stage, start_epoch = _start(run, state)
    epoch_offset = sum(cfg.stage_epochs(s) for s in cfg.stages[:start_stage])
    for si in range(start_stage, len(cfg.stages)):
        stage = _setup_stage(run, si, epoch_offset, state, start_stage, start_epoch)
        for epoch in range(stage.first, stage.n_epochs):
            ep = _train_epoch(run, stage, epoch)
            if _end_epoch(run, stage, epoch, ep):
                break  # a val mIoU plateau ended the run (plateau_stop_epochs)
        epoch_offset += stage.n_epochs
    if d.world > 1:
        dist.barrier()  # nobody leaves (and tears down the group) before rank 0 has written
    for m in (run.model, run.ema.module if run.ema is not None else None):
        if m is not None:
            restore(m)  # plain nn.Conv2d again: export and inference see the model as built
    return {
        "run_dir": str(run.run_dir),
        "best_checkpoint": str(run.best_path),
        "last_checkpoint": str(run.run_dir / "last.pt"),
        "best_miou": run.best["miou"],
        "best_epoch": run.best["epoch"],
        "final": run.final,
        "history": run.history,
        "config": config_to_dict(cfg),
        "model": run.eval_model,
        "stopped": run.stopped,
    }


# ------------------------------------------------------------------------------------------------- set-up
def _setup(cfg: TrainConfig, state: dict[str, Any] | None, d: DistInfo) -> _Run:
    """Device, seeds, data, model, loss, EMA, DDP and loaders, in the order the RNG contract fixes."""
    device = pick_device(cfg.device, d)
    run_dir = Path(cfg.out)
    if state is None and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt): continue it with --resume {run_dir} or choose another out="
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: autotuned kernels pay off
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # same seed on every rank: identical initial weights

    train_ds, val_ds = build_datasets(cfg, progress=d.main and cfg.progress)
    num_classes, class_names = train_ds.num_classes, list(train_ds.class_names)
    ds_ignore = getattr(train_ds, "ignore_index", cfg.ignore_index)
    if cfg.ignore_index != ds_ignore:
        raise ConfigError(f"ignore_index={cfg.ignore_index}: dataset {cfg.dataset!r} marks void pixels {ds_ignore}; "
                          f"use ignore_index={ds_ignore}")
    model = create_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs)
    alpha_at = gradual_setup(model, cfg)  # gradual grouping: masked convs + alpha schedule (None when off)
    if cfg.init and state is None:
        got = init_from(model, cfg.init, strict=cfg.init_strict)
        if d.main:  # always said: a partial init is a decision the user must see
            left = got["skipped"]
            print(f"init: loaded {got['loaded']} of {got['total']} tensors from {got['path']}"
                  + (f"; {len(left)} keep their initial values (e.g. {', '.join(left[:3])})" if left else ""),
                  flush=True)
    model.to(device)
    if cfg.space_to_batch and device.type == "cpu":
        # issue #18: oneDNN's dilated depthwise weight gradient is the slowest op of an ESSNet step (and wrong
        # in bf16 + NHWC); the same conv on the dilation**2 phase sub-grids runs fast, correct dilation-1
        # kernels. Swapped back before the model is returned (checkpoints hold only the state_dict anyway).
        speed_up(model)
    amp = _amp(cfg, device, d)
    channels_last = _channels_last(cfg, model, device, d, amp)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    if state is not None:
        weights = state["class_weights"]
    elif cfg.class_weighting != "none":
        weights = class_weights(cfg.class_weighting, class_frequencies(train_ds), cfg.weight_c, num_classes)
    else:
        weights = None
    criterion = WeightedCrossEntropy(weights, cfg.ignore_index).to(device)
    ema = ModelEMA(model, cfg.ema) if cfg.ema > 0 else None
    net: nn.Module = model
    if d.world > 1:  # find_unused_parameters: the encoder stage leaves the decoder without gradients
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    sampler, train_loader, val_loader = _loaders(cfg, d, device, train_ds, val_ds)
    steps = len(train_loader)
    if steps == 0:
        raise ConfigError(
            f"{cfg.dataset}/{cfg.train_split} has {len(train_ds)} samples: fewer than "
            f"batch_size={cfg.batch_size} x {d.world} process(es), so an epoch has no step"
        )
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    return _Run(cfg, d, device, run_dir, train_ds, val_ds, num_classes, class_names, model, net, alpha_at,
                channels_last, weights, criterion, ema, sampler, train_loader, val_loader, steps, scaler,
                hardware=_hardware(device, amp, d.world), amp=amp)


def _amp(cfg: TrainConfig, device: torch.device, d: DistInfo) -> bool:
    """``cfg.amp`` where it pays: fp16 on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16 / AMX). Elsewhere
    bf16 is emulated -- ~3x slower than fp32 for an ESSNet step on an AVX2-only EPYC -- so those epochs run
    in fp32 (the log's ``hardware`` says so per epoch; the config, and so a resume elsewhere, keeps amp on)."""
    if not cfg.amp or device.type != "cpu" or cpu_supports_bf16():
        return cfg.amp
    if d.main:
        print("note: amp: this CPU has no native bf16 (bf16 autocast would be emulated, ~3x slower): "
              "training in fp32", flush=True)
    return False


def _hardware(device: torch.device, amp: bool, world: int) -> str:
    """E.g. ``cpu (AMD EPYC 7B13, 2 threads), bf16 autocast`` or ``2 x cuda (NVIDIA H200), fp16 autocast``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    precision = ("fp16" if device.type == "cuda" else "bf16") + " autocast" if amp else "fp32"
    return f"{f'{world} x ' if world > 1 else ''}{device.type} ({name}), {precision}"


def has_dilated_depthwise(model: nn.Module) -> bool:
    """Any depthwise conv (one input channel per group) with dilation > 1 that runs as a dilated conv?
    (Those computed by space-to-batch, :mod:`rtseg.nn.space_to_batch`, run dilation-1 kernels and do not count.)"""
    return any(
        isinstance(m, nn.Conv2d) and not isinstance(m, SpaceToBatchDepthwise)
        and m.groups > 1 and m.groups == m.in_channels and max(m.dilation) > 1
        for m in model.modules()
    )


def _channels_last(cfg: TrainConfig, model: nn.Module, device: torch.device, d: DistInfo, amp: bool) -> bool:
    if cfg.channels_last and amp and device.type == "cpu" and has_dilated_depthwise(model):
        # torch 2.13 CPU (oneDNN): bf16 + channels_last computes wrong weight gradients for dilated
        # depthwise convs (10x too small, or ~1e19 -> inf); see docs/training.md. NCHW is correct.
        if d.main:
            print("warning: channels_last ignored: bf16 training of dilated depthwise convs in NHWC gives "
                  "wrong gradients on CPU (docs/training.md)", flush=True)
        return False
    return cfg.channels_last


def _loaders(cfg: TrainConfig, d: DistInfo, device: torch.device, train_ds: Any,
             val_ds: Any) -> tuple[EpochSampler, DataLoader, DataLoader | None]:
    sampler = EpochSampler(
        DistributedSampler(train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    )
    aug = TrainTransform(cfg.crop, cfg.scale, cfg.hflip, cfg.translate, cfg.ignore_index, vflip=cfg.vflip)
    train_loader = make_loader(Augmented(train_ds, aug, cfg.seed), sampler, cfg.batch_size, cfg, device,
                               drop_last=True, seed=cfg.seed)
    val_loader = None
    if val_ds is not None:
        val_loader = make_loader(Augmented(val_ds, EvalTransform(), cfg.seed), ShardSampler(len(val_ds), d.rank, d.world),
                                 cfg.val_batch_size or cfg.batch_size, cfg, device, drop_last=False, seed=cfg.seed)
    return sampler, train_loader, val_loader


def _start(run: _Run, state: dict[str, Any] | None) -> tuple[int, int]:
    """(stage index, epoch) to start from: the training state's position, or the beginning of a new run."""
    if run.d.main:  # a run killed mid-write left temporary files beside last.pt / best.pt: clear them
        remove_stale_temps(run.run_dir)
    if state is None:
        if run.d.main:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(run.cfg, run.run_dir)
            (run.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        return 0, 0
    run.best = dict(state["best"])
    run.model.load_state_dict(state["model"])
    run.history = list(state["history"])
    if state.get("stopped"):  # it ended at a plateau: nothing left to run
        run.stopped = str(state["stopped"])
        return len(run.cfg.stages), 0
    start_stage, start_epoch = int(state["stage_index"]), int(state["epoch"])
    if start_epoch >= run.cfg.stage_epochs(run.cfg.stages[start_stage]):
        start_stage, start_epoch = start_stage + 1, 0  # killed right after a stage's last epoch
    if run.d.main:
        trim_log(run.run_dir / "metrics.jsonl", int(state["global_epoch"]))
    return start_stage, start_epoch


def _setup_stage(run: _Run, si: int, epoch_offset: int, state: dict[str, Any] | None, start_stage: int,
                 start_epoch: int) -> _Stage:
    """The stage's optimiser and schedule; when resuming inside it, their states, the EMA and the best score."""
    cfg = run.cfg
    name = cfg.stages[si]
    warmup = cfg.decoder_warmup_epochs if name == "full" else 0
    own_encoder = name == "full" and (cfg.encoder_lr is not None or cfg.encoder_weight_decay is not None)
    optimizer = build_optimizer(run.model, cfg, split_encoder=warmup > 0 or own_encoder)
    scheduler = build_scheduler(optimizer, cfg, cfg.stage_epochs(name), run.steps)
    run.best = _new_best()
    if run.ema is not None:
        run.ema.reset(run.model)
    first = 0
    if state is not None and si == int(state["stage_index"]):
        first = start_epoch
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        if run.ema is not None:
            run.ema.module.load_state_dict(state["ema"])
        run.best = dict(state["best"])
    if state is not None and si == start_stage:
        set_rng_state(state["rng"], run.train_loader.generator)  # after every RNG-consuming set-up step
    best_path = run.best_path if name == cfg.stages[-1] else run.run_dir / f"best_{name}.pt"
    return _Stage(si, name, cfg.stage_epochs(name), first, epoch_offset, warmup, optimizer, scheduler, best_path)


# -------------------------------------------------------------------------------------------------- steps
def _set_epoch_alpha(run: _Run, global_epoch: int) -> float | None:
    """Gradual grouping: alpha stepped per epoch, a function of the global epoch (so resume-exact)."""
    if run.alpha_at is None:
        return None
    alpha = run.alpha_at(global_epoch)
    for m in (run.model, run.ema.module if run.ema is not None else None):
        if m is not None:
            set_alpha(m, alpha)
    if alpha == 0.0 and run.alpha_at(global_epoch - 1) > 0.0:
        run.best = _new_best()  # from here on best.pt is a convertible (fully grouped) model
    return alpha


def _train_epoch(run: _Run, stage: _Stage, epoch: int) -> _Epoch:
    """Every step of one epoch; returns the mean loss and what the epoch measured."""
    cfg, d = run.cfg, run.d
    global_epoch = stage.epoch_offset + epoch
    run.train_sampler.set_epoch(global_epoch)
    alpha = _set_epoch_alpha(run, global_epoch)
    enc_group = stage.optimizer.param_groups[1] if stage.warmup > 0 and epoch < stage.warmup else None
    run.net.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=run.device)
    data_s, skipped, bad_run, lr = 0.0, 0, 0, stage.optimizer.param_groups[0]["lr"]
    bar = _bar(run.train_loader, d.main and cfg.progress, f"{stage.name} {epoch + 1}/{stage.n_epochs}")
    t_data = time.perf_counter()
    with plain_worker_errors():  # a worker's error: the same one line as in-process
        for step, (images, labels) in enumerate(bar):
            data_s += time.perf_counter() - t_data
            loss = _train_step(run, stage, images, labels, enc_group)
            if loss is None:  # skipped: a non-finite loss or gradient
                if not skipped and d.main:
                    print(f"warning: {stage.name} epoch {epoch + 1} step {step + 1}: non-finite "
                          f"{run.last_nonfinite}; step skipped", flush=True)
                skipped, bad_run = skipped + 1, bad_run + 1
                if bad_run >= MAX_BAD_STEPS:
                    raise TrainingError(
                        f"{stage.name} epoch {epoch + 1}: loss or gradients non-finite for {bad_run} consecutive "
                        f"steps (lr {stage.optimizer.param_groups[0]['lr']:.2e}); try amp=false, a lower lr or "
                        "grad_clip, and resume from the last good checkpoint"
                    )
            else:
                bad_run, lr = 0, run.last_lr
                loss_sum += loss
                if bar is not run.train_loader and (step % 10 == 0 or step == run.steps - 1):
                    rate = (step + 1 - skipped) * cfg.batch_size * d.world / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
            t_data = time.perf_counter()
    seconds = time.perf_counter() - t0
    if d.world > 1:
        dist.all_reduce(loss_sum)  # every rank must see the same loss (plateau schedule)
    train_loss = loss_sum.item() / max(1, (run.steps - skipped) * d.world)
    if cfg.scheduler == "plateau":
        stage.scheduler.step(train_loss)  # ERFNet: halve the lr when the training error stagnates
    elif cfg.scheduler == "poly" and cfg.poly_by_epoch:
        stage.scheduler.step()
    if d.world > 1:
        sync_buffers(run.model, run.ema, d.world)
    enc_lr = run.last_encoder_lr if len(stage.optimizer.param_groups) > 1 else None
    return _Epoch(train_loss, lr, enc_lr, seconds, data_s, skipped, alpha, enc_group is not None)


def _train_step(run: _Run, stage: _Stage, images: torch.Tensor, labels: torch.Tensor,
                enc_group: dict[str, Any] | None) -> torch.Tensor | None:
    """Forward, loss, backward and (when everything is finite) the optimiser step; the detached loss, or
    None when the step was skipped. The per-step schedule follows the step count, taken or not."""
    cfg = run.cfg
    opt, sched = stage.optimizer, stage.scheduler
    x = to_input(images, run.device, run.channels_last)
    y = labels.to(run.device, non_blocking=True)
    if stage.encoder_only:
        y = downsample_label(y, int(getattr(run.model, "output_stride", 8)), cfg.encoder_target,
                             cfg.ignore_index, run.num_classes)
    with autocast(run.device, run.amp):
        logits = run.net(x, encoder_only=stage.encoder_only)
        loss = run.criterion(logits, y)
    run.scaler.scale(loss).backward()
    per_step = cfg.scheduler == "poly" and not cfg.poly_by_epoch
    if not _step_is_finite(loss, run.model, check_grads=not run.scaler.is_enabled(), world=run.d.world):
        # a NaN/inf loss or gradient would poison every weight through Adam's moments: skip the update (as
        # GradScaler does for fp16), count it, and stop if it keeps happening
        run.last_nonfinite = _nonfinite_report(loss, run.model)
        opt.zero_grad(set_to_none=True)
        if per_step:
            sched.step()
        return None
    if cfg.grad_clip > 0:
        run.scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.last_lr, run.last_encoder_lr = opt.param_groups[0]["lr"], opt.param_groups[-1]["lr"]
    if enc_group is not None:  # schedulers never see the scaled value: it is restored right after
        saved_lr, enc_group["lr"] = enc_group["lr"], enc_group["lr"] * cfg.encoder_lr_scale
    run.scaler.step(opt)
    if enc_group is not None:
        enc_group["lr"] = saved_lr
    run.scaler.update()
    opt.zero_grad(set_to_none=True)
    if not _params_finite(run.model):
        bad = [n for n, p in run.model.named_parameters() if not bool(torch.isfinite(p).all())]
        raise TrainingError(
            f"{stage.name}: {len(bad)} weight tensors became non-finite in an optimiser step (e.g. "
            f"{', '.join(bad[:3])}; lr {run.last_lr:.3g}); stopped before saving them -- {run.run_dir} keeps "
            "the last finite checkpoint; start again with a lower lr or grad_clip"
        )
    if per_step:
        sched.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return loss.detach()


def _step_is_finite(loss: torch.Tensor, model: nn.Module, check_grads: bool, world: int) -> bool:
    """True if the loss (and, unless GradScaler already checks them, the gradients) are finite on every rank."""
    ok = torch.isfinite(loss.detach())
    if check_grads:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            ok = ok & torch.isfinite(nn.utils.get_total_norm(grads))
    return all_ranks_true(ok, world)


def _params_finite(model: nn.Module) -> bool:
    """Every weight finite? One fused norm per step; only when it is not finite are tensors looked at one by one
    (a finite norm that overflowed is not an error)."""
    ps = [p.detach() for p in model.parameters()]
    if not ps or bool(torch.isfinite(nn.utils.get_total_norm(ps))):
        return True
    return all(bool(torch.isfinite(p).all()) for p in ps)


def _nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of floating-point tensors (weights and buffers, e.g. BatchNorm statistics) that are not finite."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _finite_or_none(v: Any) -> Any:
    """A log value as strict JSON: non-finite floats become null (Python's json would write NaN/Infinity)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _nonfinite_report(loss: torch.Tensor, model: nn.Module) -> str:
    """Which of loss / gradients went non-finite (for the first skipped step's warning)."""
    if not bool(torch.isfinite(loss.detach())):
        return f"loss {float(loss.detach())}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    return f"gradients of {len(bad)} tensors, e.g. {', '.join(bad[:3])}" if bad else "gradients on another rank"


# ------------------------------------------------------------------------------- validate, log, checkpoint
def _validate(run: _Run, stage: _Stage) -> dict[str, Any]:
    cfg = run.cfg
    metrics = SegMetrics(run.num_classes, ignore_index=cfg.ignore_index, class_names=run.class_names)
    with plain_worker_errors():
        return evaluate_batches(run.eval_model, run.val_loader, metrics, device=run.device, amp=run.amp,
                                encoder_only=stage.encoder_only, encoder_target=cfg.encoder_target,
                                channels_last=run.channels_last)


def _record(run: _Run, stage: _Stage, epoch: int, ep: _Epoch, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl``."""
    cfg = run.cfg
    record = {
        "epoch": epoch + 1,
        "stage": stage.name,
        "global_epoch": stage.epoch_offset + epoch + 1,
        "train_loss": ep.loss,
        "val_miou": None if metrics is None else metrics["miou"],
        "val_pixel_acc": None if metrics is None else metrics["pixel_acc"],
        "val_mean_class_acc": None if metrics is None else metrics["mean_class_acc"],
        "lr": ep.lr,  # of the epoch's last step
        "time_s": round(ep.seconds, 3),
        "img_per_s": round(run.steps * cfg.batch_size * run.d.world / ep.seconds, 2),
        "data_wait_s": round(ep.data_wait_s, 3),
        "hardware": run.hardware,
    }
    if ep.skipped:
        record["skipped_steps"] = ep.skipped
    if ep.alpha is not None:
        record["alpha"] = ep.alpha
    if ep.encoder_lr is not None:  # decoder warm-up and/or the encoder's own lr
        record["encoder_lr"] = ep.encoder_lr * cfg.encoder_lr_scale if ep.encoder_lr_scaled else ep.encoder_lr
    return record


def _plateau(run: _Run, stage: _Stage, epoch: int) -> str | None:
    """Why the last stage should stop now: its best val mIoU gained < ``plateau_stop_gain`` over the last
    ``plateau_stop_epochs`` epochs (issue #18: "trained to a plateau, not to a clock"); None to go on."""
    window, gain = run.cfg.plateau_stop_epochs, run.cfg.plateau_stop_gain
    if window <= 0 or stage.index != len(run.cfg.stages) - 1 or epoch + 1 <= window:
        return None
    mious = {r["epoch"]: r["val_miou"] for r in run.history if r["stage"] == stage.name and r["val_miou"] is not None}
    before = [v for e, v in mious.items() if e <= epoch + 1 - window]
    if not before or (epoch + 1) not in mious:
        return None
    best_now, best_then = max(mious.values()), max(before)
    if best_now - best_then >= gain:
        return None
    return (f"plateau: stopped after epoch {epoch + 1}, the best val mIoU ({100 * best_now:.2f}) gained "
            f"{100 * (best_now - best_then):.2f} < {100 * gain:.2f} points over the last {window} epochs")


def _end_epoch(run: _Run, stage: _Stage, epoch: int, ep: _Epoch) -> bool:
    """Validate when due, log the epoch, save ``best`` when it improved and the training state always;
    True when the run stops here at a plateau."""
    cfg, d = run.cfg, run.d
    metrics = None
    if run.val_loader is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == stage.n_epochs):
        metrics = run.final = _validate(run, stage)
    record = _record(run, stage, epoch, ep, metrics)
    if ep.skipped and d.main:
        print(f"warning: {stage.name} epoch {epoch + 1}: skipped {ep.skipped} of {run.steps} steps with a "
              "non-finite loss or gradient", flush=True)
    run.history.append(record)
    score = -ep.loss if run.val_loader is None else (metrics["miou"] if metrics is not None else None)
    improved = score is not None and not math.isnan(score) and score > run.best["score"]
    if improved:
        run.best = {"score": score, "miou": record["val_miou"], "epoch": epoch + 1}
    for name, m in (("model", run.model), ("EMA model", run.eval_model if run.ema is not None else None)):
        bad = _nonfinite_tensors(m) if m is not None else []
        if bad:  # never written as best.pt/last.pt: the previous last.pt stays the one to resume from
            raise TrainingError(f"{stage.name} epoch {epoch + 1}: {len(bad)} {name} tensors are non-finite "
                                f"(e.g. {', '.join(bad[:3])}); stopped without saving them")
    run.stopped = _plateau(run, stage, epoch)
    if run.stopped:
        record["stopped"] = run.stopped
    if not d.main:
        return run.stopped is not None
    if cfg.progress:
        # percent, as eval and report print it (metrics.jsonl keeps the fraction: val_miou)
        miou = "" if metrics is None else f" val mIoU {100 * metrics['miou']:.1f}%"
        print(f"[{stage.name} {epoch + 1}/{stage.n_epochs}] loss {ep.loss:.4f}{miou} "
              f"lr {record['lr']:.2e} {record['img_per_s']:.1f} img/s{' *' if improved else ''}")
    with open(run.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}, allow_nan=False) + "\n")
    if improved:
        save_model(run.eval_model, stage.best_path, class_names=run.class_names, dataset=cfg.dataset,
                   stage=stage.name, epoch=epoch + 1, val_miou=record["val_miou"],
                   metrics=None if metrics is None else _plain_metrics(metrics), train_loss=ep.loss,
                   config=config_to_dict(cfg))
    _save_state(run, stage, epoch)
    if run.stopped and cfg.progress:
        print(f"stopped: {run.stopped}")
    return run.stopped is not None


def _save_state(run: _Run, stage: _Stage, epoch: int) -> None:
    global_epoch = stage.epoch_offset + epoch
    save_train_state(
        run.run_dir / "last.pt",
        config=config_to_dict(run.cfg),
        stage_index=stage.index,
        stage=stage.name,
        epoch=epoch + 1,
        global_epoch=global_epoch + 1,
        model=run.model.state_dict(),
        optimizer=stage.optimizer.state_dict(),
        scheduler=stage.scheduler.state_dict() if stage.scheduler is not None else {},
        scaler=run.scaler.state_dict(),
        ema=run.ema.module.state_dict() if run.ema is not None else {},
        best=run.best,
        class_weights=run.weights,
        class_names=run.class_names,
        history=run.history,
        rng=rng_state(run.train_loader.generator),
        data_order={"sampler_seed": run.cfg.seed, "next_global_epoch": global_epoch + 1},
        **({"stopped": run.stopped} if run.stopped else {}),
    )


def _plain_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar and per-class parts of a metrics dict (no confusion matrix) for checkpoint meta."""
    keep = ("miou", "pixel_acc", "mean_class_acc", "fwiou", "per_class_iou", "per_class_acc")
    return {k: m[k] for k in keep if k in m}


def _bar(loader: DataLoader, show: bool, desc: str) -> Any:
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True) if show else loader
