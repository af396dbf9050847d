"""Training configuration: typed defaults in one place, a YAML recipe, then ``key=value`` overrides.

The defaults are the published recipe shared by ENet (Paszke et al. 2016, Sec. 5.1), ERFNet
(Romera et al. 2018, Sec. IV) and the ESSNet thesis: Adam, lr 5e-4, weight decay 2e-4, class
weights ``1 / ln(c + p_class)``, two-stage training (encoder first, then the whole network).
See docs/training.md for every source and every deviation.

Resolution order: dataclass defaults -> YAML recipe (``--config``) -> ``key=value`` overrides.
Values are parsed by the dataclass field type (never ``eval``); unknown keys fail with a
close-match suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtseg.nn.grouping import ALPHA_SCHEDULES, KERNELS, SCOPES
from rtseg.utils.checks import parse_device
from rtseg.utils.io import atomic_write_text

__all__ = [
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
    "parse_overrides",
    "save_config",
]

STAGES = ("encoder", "full")
SCHEDULERS = ("poly", "plateau", "none")
WEIGHTINGS = ("enet", "median", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")
ENCODER_TARGETS = ("nearest", "mode")


class ConfigError(ValueError):
    """A bad config key, value or recipe file (the message names it)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; written into the run folder and every checkpoint."""

    # ---- what to train ----------------------------------------------------------------------
    model: str = "enet"  # registry name: the one string lookup (`rtseg models` lists them)
    model_kwargs: dict = field(default_factory=dict)  # extra builder arguments, e.g. {'groups': 2}
    dataset: str = "synthetic"  # name for rtseg.data.build_dataset; synthetic needs no download
    root: str | None = None  # dataset folder; None lets the dataset use its own default
    dataset_kwargs: dict = field(default_factory=dict)  # extra dataset arguments
    train_split: str = "train"  # CamVid/Cityscapes select models on val, never on test
    val_split: str | None = "val"  # None skips validation (then best.pt follows the train loss)
    cache: bool = False  # keep decoded frames in RAM: PNG decoding is the loader's main cost
    init: str | None = None  # rtseg checkpoint whose matching weights start the run (stage 2 alone)
    init_strict: bool = True  # refuse an init= checkpoint of which most tensors do not fit (another model)
    check_data: bool = True  # decode every sample of every split before epoch 1: a bad file fails in seconds

    # ---- schedule of stages -----------------------------------------------------------------
    stages: tuple[str, ...] = ("full",)  # ('encoder', 'full') = the papers' two-stage procedure
    epochs: int = 100  # epochs of the 'full' stage
    encoder_epochs: int | None = None  # epochs of the 'encoder' stage; None = same as epochs
    batch_size: int = 8  # per process; ENet used 10, ERFNet 12 (memory-bound on small GPUs)
    val_batch_size: int | None = None  # None = batch_size; validation needs no gradients
    val_every: int = 1  # validate every N epochs (and always after the last one)
    plateau_stop_epochs: int = 0  # stop the last stage once val mIoU gained < plateau_stop_gain over this many epochs; 0 = off
    plateau_stop_gain: float = 0.005  # mIoU (a fraction: 0.005 = 0.5 points) such a window must add to go on

    # ---- augmentation (train split only) ------------------------------------------------------
    crop: tuple[int, int] = (360, 480)  # H x W of training crops; CamVid frames are 360x480
    scale: tuple[float, float] = (0.5, 2.0)  # random rescale range before cropping (thesis recipe)
    hflip: float = 0.5  # probability of a horizontal flip; street scenes are left-right symmetric
    translate: int = 2  # max random shift in pixels per axis (ERFNet: 0-2 px)
    vflip: float = 0.0  # probability of a vertical flip: the ESSNet thesis text (§3.4.1); its released code has none
    encoder_target: str = "nearest"  # stage-1 labels at 1/8: 'nearest' (authors' code) or 'mode'

    # ---- loss ---------------------------------------------------------------------------------
    class_weighting: str = "enet"  # 'enet' 1/ln(c+p), 'median' frequency balancing, or 'none'
    weight_c: float = 1.02  # ENet's c; 1.10 in ERFNet and the ESSNet thesis (bounds rare weights)
    ignore_index: int = 255  # void pixels: ignored by loss and metrics (rtseg.data.IGNORE_INDEX)

    # ---- optimiser and schedule ---------------------------------------------------------------
    optimizer: str = "adam"  # Adam in ENet, ERFNet and the thesis
    lr: float = 5e-4  # ENet/ERFNet initial learning rate
    weight_decay: float = 2e-4  # ENet/ERFNet L2 penalty
    momentum: float = 0.9  # SGD momentum / Adam beta1
    scheduler: str = "poly"  # 'poly' per iteration, 'plateau' halves lr when the loss stalls
    poly_power: float = 0.9  # exponent of (1 - t/T): the common poly schedule
    poly_by_epoch: bool = False  # True: lr drops once per epoch, as in the ERFNet/ESSNet code
    plateau_factor: float = 0.5  # ERFNet: divide the lr by 2 when the training error stagnates
    plateau_patience: int = 5  # epochs without improvement before the lr is cut
    grad_clip: float = 0.0  # max global grad norm; 0 disables (the papers do not clip)
    ema: float = 0.0  # EMA decay of the weights (e.g. 0.999); 0 disables

    # ---- gradual grouping and decoder attachment (ESSNet thesis §3.5; docs/gradual_grouping.md) -
    gradual_groups: int = 0  # g >= 2: masked convs go dense -> g groups as alpha falls 1 -> 0; 0 = off
    gradual_scope: str = "encoder"  # convs to group: 'encoder' (the thesis), 'decoder' or 'all'
    gradual_kernels: str = "pointwise"  # 'pointwise' = 1x1 convs only; 'all' = any k x k conv
    gradual_shuffle: bool = False  # ESSNet conv-modules get the DGCS shuffle (-> essnet_dg{g}s)
    alpha_schedule: str = "linear"  # how alpha falls: 'linear', 'cosine' or 'step'
    alpha_start_epoch: int = 0  # global epoch (0-based, counted across stages) where alpha starts to fall
    alpha_epochs: int = 10  # epochs alpha takes to reach 0; the rest fine-tunes the grouped net
    alpha_steps: int = 4  # 'step' schedule: number of equal drops
    decoder_warmup_epochs: int = 0  # §3.5.1: first N 'full'-stage epochs barely move the encoder
    encoder_lr_scale: float = 1e-16  # encoder lr factor during that warm-up (5e-4 x 1e-16 = 5e-20)
    # ---- pretrained encoder (ESSNet thesis §4.2: ImageNet encoder fine-tuned at lr 1.25e-4, wd 0.5e-4) ----
    encoder_lr: float | None = None  # 'full'-stage lr of the encoder's parameters; None = lr
    encoder_weight_decay: float | None = None  # their weight decay; None = weight_decay

    # ---- engine -------------------------------------------------------------------------------
    device: str = "auto"  # 'auto' = cuda when available, else cpu; or 'cpu', 'cuda', 'cuda:1'
    amp: bool = True  # mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA
    channels_last: bool = False  # NHWC memory layout: faster convolutions on tensor cores
    space_to_batch: bool = True  # CPU: dilated depthwise convs as dilation-1 convs on space-to-batch phases
    # (same math; ESSNet 360x480 step 1.2-2x faster, and correct with bf16 + NHWC): rtseg/train_speed.py
    workers: int | None = None  # DataLoader processes per rank; None = min(2, CPU cores)
    persistent_workers: bool = True  # keep workers (and their caches) alive across epochs
    seed: int = 0  # one seed fixes init, data order, augmentation and dropout
    out: str = "runs/train"  # run folder: config.yaml, metrics.jsonl, last.pt, best.pt
    progress: bool = True  # tqdm bar with loss, lr and img/s on rank 0

    def stage_epochs(self, stage: str) -> int:
        """Number of epochs the given stage runs."""
        if stage == "encoder" and self.encoder_epochs is not None:
            return self.encoder_epochs
        return self.epochs

    def validate(self) -> TrainConfig:
        """Check cross-field constraints; raise :class:`ConfigError` naming the key."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        for f in dataclasses.fields(self):  # nan/inf never make sense: lr=inf trained to the end before
            v = getattr(self, f.name)
            vals = v if isinstance(v, tuple) else (v,)
            need(all(not isinstance(x, float) or math.isfinite(x) for x in vals),
                 f"{f.name} must be a finite number, got {v!r}")
        need(len(self.stages) > 0, "stages: give at least one of 'encoder', 'full'")
        for s in self.stages:
            need(s in STAGES, f"stages: unknown stage {s!r}{_suggest(s, STAGES)}; choose from {STAGES}")
        need(
            list(self.stages) == sorted(set(self.stages), key=STAGES.index),
            f"stages: {self.stages} must be distinct and in the order encoder, full",
        )
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(
            self.encoder_epochs is None or self.encoder_epochs >= 1,
            f"encoder_epochs must be >= 1, got {self.encoder_epochs}",
        )
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(
            self.val_batch_size is None or self.val_batch_size >= 1,
            f"val_batch_size must be >= 1, got {self.val_batch_size}",
        )
        need(self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}")
        need(self.plateau_stop_epochs >= 0, f"plateau_stop_epochs must be >= 0 (0 = off), got {self.plateau_stop_epochs}")
        need(0 <= self.plateau_stop_gain < 1, f"plateau_stop_gain is a mIoU fraction in [0, 1), got {self.plateau_stop_gain}")
        need(self.plateau_stop_epochs == 0 or self.val_split is not None,
             "plateau_stop_epochs needs validation (val_split) to see a plateau")
        need(all(v >= 1 for v in self.crop), f"crop must be positive HxW, got {self.crop}")
        need(0 < self.scale[0] <= self.scale[1], f"scale must be 0 < min <= max, got {self.scale}")
        need(0.0 <= self.hflip <= 1.0, f"hflip is a probability in [0, 1], got {self.hflip}")
        need(0.0 <= self.vflip <= 1.0, f"vflip is a probability in [0, 1], got {self.vflip}")
        need(self.translate >= 0, f"translate must be >= 0 pixels, got {self.translate}")
        for key, val, choices in (
            ("encoder_target", self.encoder_target, ENCODER_TARGETS),
            ("class_weighting", self.class_weighting, WEIGHTINGS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("scheduler", self.scheduler, SCHEDULERS),
        ):
            need(
                val in choices, f"{key}: unknown value {val!r}{_suggest(val, choices)}; choose from {choices}"
            )
        need(self.epochs <= 100_000 and (self.encoder_epochs or 1) <= 100_000, "epochs must be <= 100000")
        need(self.batch_size <= 4096 and (self.val_batch_size or 1) <= 4096, "batch_size must be <= 4096")
        need(all(v <= 16384 for v in self.crop), f"crop must be at most 16384 x 16384, got {self.crop}")
        need(self.scale[1] <= 16, f"scale max must be <= 16, got {self.scale}")
        need(self.weight_c > 0, f"weight_c must be > 0, got {self.weight_c}")
        need(0 <= self.ignore_index <= 65535, f"ignore_index must be in 0..65535, got {self.ignore_index}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.lr <= 10, f"lr must be <= 10 (a learning rate that large only diverges), got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(self.poly_power > 0, f"poly_power must be > 0, got {self.poly_power}")
        need(self.plateau_patience >= 0, f"plateau_patience must be >= 0, got {self.plateau_patience}")
        need(0 <= self.seed < 2**32, f"seed must be in 0..2**32-1, got {self.seed}")
        need(self.workers is None or self.workers <= 256, f"workers must be <= 256, got {self.workers}")
        try:
            parse_device(self.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        need(self.init is None or bool(self.init.strip()), "init: give a checkpoint path or shipped name, or none")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.encoder_lr is None or self.encoder_lr > 0, f"encoder_lr must be > 0, got {self.encoder_lr}")
        need(
            self.encoder_weight_decay is None or self.encoder_weight_decay >= 0,
            f"encoder_weight_decay must be >= 0, got {self.encoder_weight_decay}",
        )
        need(0 < self.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        need(0 <= self.ema < 1, f"ema is a decay in [0, 1) (0 = off), got {self.ema}")
        need(self.workers is None or self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        self._validate_grouping(need)
        return self

    def _validate_grouping(self, need: Any) -> None:
        need(0 <= self.gradual_groups <= 1024, f"gradual_groups must be >= 2 (0 or 1 = off), got {self.gradual_groups}")
        for key, val, choices in (
            ("gradual_scope", self.gradual_scope, SCOPES),
            ("gradual_kernels", self.gradual_kernels, KERNELS),
            ("alpha_schedule", self.alpha_schedule, ALPHA_SCHEDULES),
        ):
            need(
                val in choices, f"{key}: unknown value {val!r}{_suggest(val, choices)}; choose from {choices}"
            )
        need(self.alpha_epochs >= 1, f"alpha_epochs must be >= 1, got {self.alpha_epochs}")
        need(self.alpha_start_epoch >= 0, f"alpha_start_epoch must be >= 0, got {self.alpha_start_epoch}")
        need(self.alpha_steps >= 1, f"alpha_steps must be >= 1, got {self.alpha_steps}")
        need(
            self.decoder_warmup_epochs >= 0, f"decoder_warmup_epochs must be >= 0, got {self.decoder_warmup_epochs}"
        )
        need(0 <= self.encoder_lr_scale <= 1, f"encoder_lr_scale must be in [0, 1], got {self.encoder_lr_scale}")
        need(
            not self.gradual_shuffle or self.gradual_groups >= 2,
            "gradual_shuffle needs gradual_groups >= 2",
        )
        if self.gradual_groups >= 2:
            total = sum(self.stage_epochs(s) for s in self.stages)
            zero = self.alpha_start_epoch + self.alpha_epochs
            need(
                zero <= total - 1,
                f"alpha_start_epoch + alpha_epochs = {zero}: alpha would not reach 0 by the last of the "
                f"{total} epochs (it must, so that the run ends grouped); lower alpha_epochs or train longer",
            )


# --------------------------------------------------------------------------------------------
# typed parsing


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _split_seq(text: str, numeric: bool) -> list[str]:
    """``"360x480"`` (numbers only), ``"360,480"``, ``"(360, 480)"``, ``"[a, b]"`` -> item strings."""
    t = text.strip()
    if t[:1] in "([" and t[-1:] in ")]":
        t = t[1:-1]
    if numeric and "," not in t:
        t = t.lower().replace("x", ",")
    parts = t.split(",")
    return [p.strip().strip("'\"") for p in parts if p.strip()]


def coerce(key: str, value: Any, tp: Any = None) -> Any:
    """Convert ``value`` (a CLI string or a YAML/Python value) to the type of field ``key``."""
    tp = _FIELD_TYPES[key] if tp is None else tp
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~", "")):
            return None
        return coerce(key, value, inner[0])
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return int(value.strip()) if isinstance(value, str) else _exact(value, int)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value.strip()) if isinstance(value, str) else float(_exact(value, (int, float)))
        if tp is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin is tuple:
            items = (
                _split_seq(value, args[0] in (int, float))
                if isinstance(value, str)
                else list(_exact(value, (list, tuple)))
            )
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(key, v, args[0]) for v in items)
            if len(items) != len(args):
                raise ValueError
            return tuple(coerce(key, v, a) for v, a in zip(items, args))
        if tp is dict or origin is dict:
            if isinstance(value, str):
                value = _yaml_value(value)  # as in the recipe files: {size: [96, 128]}
            return dict(_exact(value, dict))
    except (ValueError, TypeError, SyntaxError):
        pass
    else:
        raise ConfigError(f"{key}: unsupported field type {tp!r}")
    raise ConfigError(f"{key}: cannot read {value!r} as {_type_name(tp)}")


def _yaml_value(text: str) -> Any:
    """A ``key=value`` override's value read the way the YAML recipes are (``{size: [96, 128]}``)."""
    import yaml

    try:
        return yaml.safe_load(text.strip() or "{}")
    except yaml.YAMLError as e:
        raise ValueError(str(e).strip().splitlines()[0]) from None


def _exact(value: Any, types_: Any) -> Any:
    if not isinstance(value, types_):
        raise TypeError
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {args[0].__name__}"
        if args == (int, int):
            return "HxW (e.g. 360x480)"
        return f"{len(args)} comma-separated values"
    if tp is dict:
        return "a YAML mapping (e.g. \"{groups: 2}\" or \"{size: [96, 128]}\")"
    return getattr(tp, "__name__", str(tp))


def _check_key(key: str) -> None:
    if key not in _FIELD_TYPES:
        raise ConfigError(f"unknown config key {key!r}{_suggest(key, _FIELD_TYPES)}")


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["lr=1e-3", "crop=360x480"]`` -> ``{"lr": "1e-3", "crop": "360x480"}`` (keys checked)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, val = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. lr=5e-4)")
        _check_key(key)
        out[key] = val
    return out


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any] | Iterable[str]) -> TrainConfig:
    """A copy of ``cfg`` with ``overrides`` (a mapping or ``key=value`` strings) applied and validated."""
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    changes = {}
    for key, val in overrides.items():
        _check_key(key)
        changes[key] = coerce(key, val)
    return dataclasses.replace(cfg, **changes).validate()


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001  (yaml/json parse errors have many types)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a readable YAML/JSON config ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of key: value, got {type(data).__name__}")
    for key in data:
        if key not in _FIELD_TYPES:
            raise ConfigError(f"{path}: unknown config key {key!r}{_suggest(str(key), _FIELD_TYPES)}")
    return data


def load_config(
    config: str | os.PathLike | Mapping[str, Any] | TrainConfig | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
) -> TrainConfig:
    """Resolve defaults -> recipe -> overrides into a validated :class:`TrainConfig`.

    ``config`` is a YAML/JSON recipe path, a mapping of keys, an existing config, or ``None``.
    ``overrides`` are ``key=value`` strings (CLI) or a mapping (Python API); strings are parsed
    by the field's type: ``crop=360x480``, ``stages=encoder,full``, ``root=none``.
    """
    if isinstance(config, TrainConfig):
        cfg = dataclasses.replace(config)
    elif config is None:
        cfg = TrainConfig()
    else:
        data = dict(config) if isinstance(config, Mapping) else _read_recipe(Path(config))
        cfg = apply_overrides(TrainConfig(), data)
    return apply_overrides(cfg, overrides)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-data view (tuples as lists) for YAML, JSON and ``weights_only`` checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_to_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: TrainConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config to ``run_dir/config.yaml`` atomically; returns the path."""
    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, config_to_yaml(cfg))
    return path
