"""Optimisers, learning-rate schedules, the weight EMA and ``init=`` weight transfer for the training loop."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from rtseg.checkpoint import load_checkpoint, resolve_checkpoint
from rtseg.engine.config import ConfigError, TrainConfig

__all__ = ["ModelEMA", "build_optimizer", "build_scheduler", "init_from"]


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


def init_from(model: nn.Module, path: str, strict: bool = True) -> dict[str, Any]:
    """Copy every same-named, same-shaped tensor of rtseg checkpoint ``path`` into ``model``.

    Returns ``{"loaded", "total", "path", "skipped"}`` (``skipped``: the model's tensors left at their
    initial values). With ``strict`` (``init_strict=true``, the default) an init= that fits fewer than half
    of the model's tensors -- a checkpoint of another architecture -- is refused instead of loading a few.
    """
    ckpt_path = resolve_checkpoint(path)
    src = load_checkpoint(ckpt_path)["state_dict"]
    own = model.state_dict()
    take = {k: v for k, v in src.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    name = getattr(model, "rtseg_name", "?")
    if not take:
        raise ConfigError(f"init={path}: no tensor of the checkpoint fits model {name}")
    skipped = [k for k in own if k not in take]
    if strict and len(take) * 2 < len(own):
        raise ConfigError(
            f"init={path}: only {len(take)} of model {name}'s {len(own)} tensors fit (e.g. {', '.join(skipped[:3])} "
            "do not): it is a checkpoint of another architecture; set init_strict=false to load them anyway"
        )
    model.load_state_dict(take, strict=False)
    return {"loaded": len(take), "total": len(own), "path": str(ckpt_path), "skipped": skipped}


def build_optimizer(model: nn.Module, cfg: TrainConfig, split_encoder: bool = False) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD over the trainable parameters; with ``split_encoder`` param group 1 is the encoder.

    Group 1 exists for the decoder warm-up (thesis §3.5.1, its lr scaled each step in the loop) and for a
    pretrained encoder's own lr / weight decay (``encoder_lr``, ``encoder_weight_decay``; thesis §4.2).
    """
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if split_encoder:
        if not isinstance(getattr(model, "encoder", None), nn.Module):
            raise ConfigError(
                "decoder_warmup_epochs / encoder_lr / encoder_weight_decay need a model with an `encoder` submodule"
            )
        enc = {id(p) for p in model.encoder.parameters()}
        group1: dict[str, Any] = {"params": [p for p in params if id(p) in enc]}
        if cfg.encoder_lr is not None:
            group1["lr"] = cfg.encoder_lr
        if cfg.encoder_weight_decay is not None:
            group1["weight_decay"] = cfg.encoder_weight_decay
        params = [{"params": [p for p in params if id(p) not in enc]}, group1]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # Adam with L2 weight decay (ENet/ERFNet used Torch7/PyTorch Adam with weightDecay, i.e. coupled L2)
    return opt_cls(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, epochs: int, steps: int) -> Any:
    if cfg.scheduler == "poly":
        power, total = cfg.poly_power, epochs if cfg.poly_by_epoch else epochs * steps
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / total) ** power)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    return None
