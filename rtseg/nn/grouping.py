"""Gradual grouping: train dense convolutions into grouped ones, then deploy them as real grouped convs.

Papers:
    N. Vallurupalli, S. Annamaneni, G. Varma, C. V. Jawahar, M. Mathew, S. Nagori, "Efficient Semantic
    Segmentation using Gradual Grouping", CVPR Workshops 2018 (arXiv:1806.08522).
    N. Vallurupalli, "On Designing Efficient Deep Neural Networks for Semantic Segmentation", MS thesis,
    IIIT Hyderabad, 2022, §3.5 (gradual grouping) and §3.5.1 (attaching the decoder).

A dense ``C_out x C_in x k x k`` convolution becomes a :class:`MaskedConv2d` whose effective weight is
``w * (D + alpha * (1 - D))``: ``D`` is the 0/1 block-diagonal pattern of a ``g``-group convolution (output
block ``i`` sees input block ``i``). ``alpha`` falls from 1 (the dense conv) to 0 over a span of epochs
(:class:`AlphaSchedule`); from then on the off-group weights carry no signal and the layer *is* a grouped
conv, which :func:`convert_to_deploy` turns into ``nn.Conv2d(groups=g)`` (BatchNorm folded as well).

Model-agnostic: :func:`make_gradual` swaps every eligible conv (``groups == 1``, channels divisible by
``g``, 1x1 unless ``kernels="all"``) inside ``model.encoder`` / ``model.decoder`` / the whole model. For
ESSNet conv-modules, ``shuffle=True`` also switches on the DGCS channel shuffle after the first pointwise
conv, exactly where the natively grouped ``essnet_dg{g}s`` has it, so a gradual ``essnet_d`` converts into
an ``essnet_dg{g}s`` (same parameters, MACs and state-dict keys). docs/gradual_grouping.md has the method,
the schedule, the engine keys and every deviation from the thesis and the released code.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rtseg.models._essnet_blocks import ConvModule
from rtseg.models._registry import create_model, list_models
from rtseg.nn.fuse import fold_batchnorm

__all__ = [
    "ALPHA_SCHEDULES",
    "DEFAULT_EXCLUDE",
    "KERNELS",
    "SCOPES",
    "AlphaSchedule",
    "MaskedConv2d",
    "apply_grouping_meta",
    "block_diagonal_mask",
    "convert_to_deploy",
    "get_alpha",
    "grouping_meta",
    "make_gradual",
    "masked_convs",
    "set_alpha",
]

SCOPES = ("encoder", "decoder", "all")
KERNELS = ("pointwise", "all")
ALPHA_SCHEDULES = ("linear", "cosine", "step")
#: class-score layers are never grouped: a grouped classifier would see 1/g of the features per class
DEFAULT_EXCLUDE = ("*classifier", "*output_conv", "*head")


# ------------------------------------------------------------------------------------------------ mask
def block_diagonal_mask(
    out_channels: int, in_channels: int, groups: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``out_channels x in_channels`` float 0/1 pattern of a ``groups``-group convolution.

    Entry ``[o, i]`` is 1 when output channel ``o`` and input channel ``i`` lie in the same group, i.e.
    ``o // (out/g) == i // (in/g)``: the group-diagonal blocks. Built with one broadcast comparison.
    """
    if groups < 1 or out_channels % groups or in_channels % groups:
        raise ValueError(f"{out_channels}x{in_channels} channels cannot be split into {groups} groups")
    o = torch.arange(out_channels, device=device) // (out_channels // groups)
    i = torch.arange(in_channels, device=device) // (in_channels // groups)
    return (o[:, None] == i[None, :]).float()


class MaskedConv2d(nn.Conv2d):
    """A dense conv whose off-group weights are scaled by ``alpha``: ``w_eff = w * (D + alpha (1 - D))``.

    ``B x C_in x H x W`` -> ``B x C_out x H' x W'`` exactly like the ``nn.Conv2d`` it replaces (same
    ``weight``/``bias`` names and shapes, so dense checkpoints load into it). ``D`` (``C_out x C_in x 1 x 1``,
    the :func:`block_diagonal_mask` of ``mask_groups``) is a non-persistent buffer computed once;
    ``alpha`` is a 0-dim persistent buffer, so it travels with the state dict, EMA copies and DDP.
    ``alpha = 1`` is the dense conv; ``alpha = 0`` is the grouped conv :meth:`to_grouped` returns.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        mask_groups: int = 2,
        alpha: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            1,
            bias,
            padding_mode,
            device,
            dtype,
        )
        if mask_groups < 2:
            raise ValueError(f"MaskedConv2d needs mask_groups >= 2 (1 is a plain conv), got {mask_groups}")
        self.mask_groups = int(mask_groups)
        mask = block_diagonal_mask(out_channels, in_channels, mask_groups, device=device)
        self.register_buffer("group_mask", mask[:, :, None, None].to(self.weight.dtype), persistent=False)
        self.register_buffer(
            "alpha", torch.tensor(float(alpha), dtype=self.weight.dtype, device=self.weight.device)
        )

    def weight_mask(self) -> torch.Tensor:
        """``C_out x C_in x 1 x 1`` multiplier: 1 on the group-diagonal blocks, ``alpha`` elsewhere."""
        return self.group_mask + self.alpha * (1.0 - self.group_mask)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.weight_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_groups={self.mask_groups}, alpha={float(self.alpha):.4g}"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, groups: int, alpha: float = 1.0) -> MaskedConv2d:
        """A masked copy of a dense ``conv`` (``groups == 1``): same weights, bias, geometry and mode."""
        if conv.groups != 1:
            raise ValueError(f"only dense convs (groups=1) can be masked, got groups={conv.groups}")
        m = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.bias is not None,
            conv.padding_mode,
            mask_groups=groups,
            alpha=alpha,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            m.weight.copy_(conv.weight)
            if conv.bias is not None:
                m.bias.copy_(conv.bias)
        m.weight.requires_grad_(conv.weight.requires_grad)
        m.train(conv.training)
        return m

    def to_grouped(self, strict: bool = True) -> nn.Conv2d:
        """The ``nn.Conv2d(groups=g)`` this layer equals at ``alpha = 0`` (weights of the diagonal blocks).

        Weight ``C_out x C_in/g x kh x kw``: rows ``[i*C_out/g, (i+1)*C_out/g)`` are the block of input
        group ``i``. ``strict`` refuses ``alpha != 0``, where dropping the off-group weights changes outputs.
        """
        a = float(self.alpha)
        if strict and a != 0.0:
            raise ValueError(
                f"alpha={a:.4g}: the off-group weights still carry signal, so the grouped conv would differ; "
                "finish the alpha schedule (alpha = 0) before converting"
            )
        g, cout, cin = self.mask_groups, self.out_channels, self.in_channels
        k = tuple(self.weight.shape[2:])
        w = self.weight.detach().view(g, cout // g, g, cin // g, *k)  # [out group, o, in group, i, kh, kw]
        diag = torch.diagonal(w, dim1=0, dim2=2)  # [o, i, kh, kw, g]: block (j, j) for every group j
        gw = diag.permute(4, 0, 1, 2, 3).reshape(cout, cin // g, *k)
        conv = nn.Conv2d(
            cin,
            cout,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            groups=g,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(gw)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        conv.train(self.training)
        return conv


def masked_convs(model: nn.Module) -> Iterator[tuple[str, MaskedConv2d]]:
    """``(qualified name, module)`` of every :class:`MaskedConv2d` in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, MaskedConv2d))


@torch.no_grad()
def set_alpha(model: nn.Module, alpha: float) -> int:
    """Set ``alpha`` (in [0, 1]) of every masked conv of ``model``; returns how many were set."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    n = 0
    for _, m in masked_convs(model):
        m.alpha.fill_(alpha)
        n += 1
    return n


def get_alpha(model: nn.Module) -> float | None:
    """The common ``alpha`` of ``model``'s masked convs (None if it has none; error if they disagree)."""
    values = {float(m.alpha) for _, m in masked_convs(model)}
    if len(values) > 1:
        raise ValueError(f"masked convs disagree on alpha: {sorted(values)}")
    return values.pop() if values else None


# -------------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class AlphaSchedule:
    """``alpha`` for each (0-based, global) epoch: 1 until ``start``, falling to 0 at ``start + epochs``.

    With ``t = clamp((epoch - start) / epochs, 0, 1)``: ``linear`` 1 - t; ``cosine`` (1 + cos(pi t)) / 2;
    ``step`` 1 - floor(t * steps) / steps (``steps`` equal drops). Values are exact: 1 before the span,
    0 from epoch ``start + epochs`` on (fine-tuning of the grouped network).
    """

    kind: str = "linear"
    epochs: int = 10
    start: int = 0
    steps: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ALPHA_SCHEDULES:
            raise ValueError(f"alpha schedule {self.kind!r} unknown; choose from {ALPHA_SCHEDULES}")
        if self.epochs < 1 or self.start < 0 or self.steps < 1:
            raise ValueError(
                f"alpha schedule needs epochs >= 1, start >= 0, steps >= 1; got {self.epochs}, {self.start}, "
                f"{self.steps}"
            )

    @property
    def zero_epoch(self) -> int:
        """First epoch trained with ``alpha = 0``."""
        return self.start + self.epochs

    def __call__(self, epoch: int) -> float:
        done = epoch - self.start
        if done <= 0:
            return 1.0
        if done >= self.epochs:
            return 0.0
        t = done / self.epochs
        if self.kind == "linear":
            return 1.0 - t
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0 - (done * self.steps // self.epochs) / self.steps  # integer floor: no rounding slips

    @classmethod
    def from_config(cls, cfg: Any) -> AlphaSchedule:
        """From a :class:`rtseg.engine.config.TrainConfig` (``alpha_schedule``/``alpha_epochs``/...)."""
        return cls(cfg.alpha_schedule, cfg.alpha_epochs, cfg.alpha_start_epoch, cfg.alpha_steps)


# ------------------------------------------------------------------------------------- model surgery
def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _scope_root(model: nn.Module, scope: str) -> tuple[str, nn.Module]:
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} unknown; choose from {SCOPES}")
    if scope == "all":
        return "", model
    root = getattr(model, scope, None)
    if not isinstance(root, nn.Module):
        raise ValueError(  # noqa: TRY004  (a bad scope argument for this model, not a type error)
            f"scope={scope!r}: {getattr(model, 'rtseg_name', type(model).__name__)} has no `{scope}` "
            "submodule; use scope='all'"
        )
    return scope + ".", root


def _why_not(m: nn.Module, groups: int, kernels: str) -> str | None:
    """None if ``m`` can be masked with ``groups`` groups, else the reason."""
    if type(m) is not nn.Conv2d:
        return f"a {type(m).__name__}, not a plain nn.Conv2d"
    if m.groups != 1:
        return f"already grouped (groups={m.groups})"
    if m.in_channels % groups or m.out_channels % groups:
        return f"{m.in_channels}->{m.out_channels} channels are not divisible by {groups}"
    if kernels == "pointwise" and tuple(m.kernel_size) != (1, 1):
        return f"kernel {tuple(m.kernel_size)} is not 1x1 (kernels='pointwise')"
    return None


def make_gradual(
    model: nn.Module,
    groups: int,
    scope: str = "encoder",
    shuffle: bool = False,
    kernels: str = "pointwise",
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    alpha: float = 1.0,
) -> nn.Module:
    """Swap ``model``'s eligible convs for :class:`MaskedConv2d` (in place) and return ``model``.

    Args:
        groups: target group count ``g`` (>= 2).
        scope: ``"encoder"`` (the thesis: only the encoder is grouped), ``"decoder"`` or ``"all"``;
            resolved through the ``encoder``/``decoder`` attributes every rtseg model has.
        shuffle: ESSNet conv-modules whose first pointwise conv is masked get the DGCS channel shuffle
            (``g`` groups) after it, as in ``essnet_dg{g}s``; ``False`` gives the DGC form.
        kernels: ``"pointwise"`` masks 1x1 convs only; ``"all"`` any ``k x k`` conv (e.g. ERFNet's 3x1/1x3).
        modules: exact qualified names to mask instead of searching (used when a checkpoint is rebuilt).
        exclude: shell patterns of names never masked (class-score layers by default).
        alpha: initial ``alpha``.

    Eligible: a plain ``nn.Conv2d`` with ``groups == 1`` and in/out channels divisible by ``g``. The
    forward contract is unchanged (``B x 3 x H x W`` -> ``B x K x H x W``); at ``alpha = 1`` the model
    computes exactly what it computed before. ``model.rtseg_grouping`` records what was done (the
    checkpoint metadata that lets :func:`rtseg.load_model` rebuild it). Raises ``ValueError`` when
    nothing is eligible or a named module cannot be masked.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
        raise ValueError(f"groups must be an int >= 2, got {groups!r}")
    if kernels not in KERNELS:
        raise ValueError(f"kernels {kernels!r} unknown; choose from {KERNELS}")
    if any(True for _ in masked_convs(model)):
        raise ValueError("model already has masked convs (make_gradual was applied before)")
    prefix, root = _scope_root(model, scope)
    mname = getattr(model, "rtseg_name", type(model).__name__)
    if modules is not None:
        names = list(modules)
        for n in names:
            try:
                m = model.get_submodule(n)
            except AttributeError:
                raise ValueError(f"{mname}: no module named {n!r} to mask") from None
            why = _why_not(m, groups, "all")
            if why:
                raise ValueError(f"{mname}: {n} cannot be masked with {groups} groups: {why}")
    else:
        names = [
            prefix + n
            for n, m in root.named_modules()
            if n
            and _why_not(m, groups, kernels) is None
            and not any(fnmatch.fnmatchcase(prefix + n, p) for p in exclude)
        ]
        if not names:
            raise ValueError(
                f"{mname}: no conv in scope {scope!r} can be grouped by {groups} (kernels={kernels!r}; eligible: "
                "plain nn.Conv2d, groups=1, channels divisible by the group count, not a classifier)"
            )
    for n in names:
        _set_module(model, n, MaskedConv2d.from_conv(model.get_submodule(n), groups, alpha))

    shuffled = []
    masked = set(names)
    for n, m in model.named_modules():
        if isinstance(m, ConvModule) and f"{n}.conv1L_1" in masked:
            # the native DGC/DGCS module: ``groups`` drives its shuffle, which sits after conv1L_1's BN+ReLU
            m.groups, m.shuffle = groups, bool(shuffle)
            if shuffle:
                shuffled.append(n)
    if shuffle and not shuffled:
        raise ValueError(
            f"{mname}: shuffle=True needs ESSNet conv-modules (DGCS) with a masked first pointwise conv in "
            f"scope {scope!r}; this model has none"
        )
    model.rtseg_grouping = {
        "groups": groups,
        "scope": scope,
        "shuffle": bool(shuffle),
        "kernels": kernels,
        "modules": names,
        "shuffled": shuffled,
        "form": "masked",
        "bn_folded": False,
    }
    return model


# ------------------------------------------------------------------------------------------ deploying
def _native_equivalent(model: nn.Module, groups: int, shuffle: bool) -> str | None:
    """The registered natively grouped model that ``model`` (converted, BN kept) is identical to, if any.

    ESSNet names carry the conv-module type as a ``d`` token (``essnet_d``, ``essnet_b_d``, ``essnet_d_ppm``);
    the candidate swaps it for ``dg{g}[s]`` and is accepted only if every module type, conv group count,
    conv-module shuffle and state-dict shape agrees.
    """
    name, kwargs = getattr(model, "rtseg_name", None), getattr(model, "rtseg_kwargs", None)
    if name is None or kwargs is None or "d" not in name.split("_"):
        return None
    cand = "_".join(f"dg{groups}{'s' if shuffle else ''}" if p == "d" else p for p in name.split("_"))
    if cand not in list_models(cand):
        return None
    try:
        ref = create_model(cand, **kwargs)
    except (TypeError, ValueError):
        return None
    mine, theirs = dict(model.named_modules()), dict(ref.named_modules())
    if mine.keys() != theirs.keys():
        return None
    for n, a in mine.items():
        b = theirs[n]
        if type(a) is not type(b):
            return None
        if isinstance(a, nn.Conv2d) and a.groups != b.groups:
            return None
        if isinstance(a, ConvModule) and (a.groups, a.shuffle) != (b.groups, b.shuffle):
            return None
    sa, sb = model.state_dict(), ref.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return None
    return cand


def convert_to_deploy(
    model: nn.Module,
    fold_bn: bool = True,
    inplace: bool = False,
    strict: bool = True,
    example: torch.Tensor | None = None,
) -> nn.Module:
    """The inference form of ``model``: masked convs -> ``nn.Conv2d(groups=g)``, BatchNorm folded.

    Args:
        model: any rtseg model, gradual (after :func:`make_gradual`, trained to ``alpha = 0``) or not.
        fold_bn: fold BatchNorm with :func:`rtseg.nn.fuse.fold_batchnorm` (checked against the unfolded
            model on ``example``; default input ``1 x 3 x 64 x 64``).
        inplace: modify ``model`` instead of a deep copy.
        strict: refuse masked convs with ``alpha != 0`` (their conversion would change the outputs).

    Returns the converted model in eval mode; same ``B x 3 x H x W -> B x K x H x W`` outputs (to float
    rounding). With ``fold_bn=False`` and a registered natively grouped equivalent (a gradual
    ``essnet_d`` with ``shuffle=True`` -> ``essnet_dg{g}s``), the model is renamed to it
    (``rtseg_name``), so :func:`rtseg.save_model` writes an ordinary checkpoint of that model. Otherwise
    ``model.rtseg_grouping`` records ``form="grouped"`` and ``bn_folded``, from which
    :func:`rtseg.load_model` rebuilds the structure before loading the weights.
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    convs = list(masked_convs(model))
    for n, m in convs:
        _set_module(model, n, m.to_grouped(strict=strict))
    info = getattr(model, "rtseg_grouping", None)
    if info is None:
        if convs:
            gs = sorted({m.mask_groups for _, m in convs})
            info = {
                "groups": gs[0] if len(gs) == 1 else gs,
                "scope": "all",
                "shuffle": False,
                "kernels": "all",
            }
            info["modules"] = [n for n, _ in convs]
        else:
            info = {"groups": 1, "scope": "all", "shuffle": False, "kernels": "pointwise", "modules": []}
        info["shuffled"] = []
    info = {**info, "form": "grouped", "bn_folded": bool(fold_bn)}
    model.rtseg_grouping = info
    if not fold_bn and info["modules"] and isinstance(info["groups"], int):
        native = _native_equivalent(model, info["groups"], info["shuffle"])
        if native is not None:
            model.rtseg_name = native
            del model.rtseg_grouping  # an ordinary checkpoint of the native model
    if fold_bn:
        model = fold_batchnorm(model, example=example, inplace=True)
    return model


# ----------------------------------------------------------------------------------------- checkpoints
_META_KEYS = ("groups", "scope", "shuffle", "kernels", "modules", "form", "bn_folded")


def grouping_meta(model: nn.Module) -> dict[str, Any] | None:
    """Plain-data record of ``model``'s grouping for checkpoint metadata (None for an ordinary model).

    ``{"groups", "scope", "shuffle", "kernels", "modules", "shuffled", "form": "masked" | "grouped",
    "bn_folded", "alpha"}``; ``alpha`` is the masked convs' current value (None once converted).
    """
    info = getattr(model, "rtseg_grouping", None)
    if info is None:
        return None
    out = {k: copy.deepcopy(v) for k, v in info.items()}
    out["alpha"] = get_alpha(model) if info.get("form") == "masked" else None
    return out


def apply_grouping_meta(model: nn.Module, meta: Mapping[str, Any]) -> nn.Module:
    """Rebuild the structure a checkpoint's ``meta["grouping"]`` describes on a fresh ``model``.

    Re-applies :func:`make_gradual` on the recorded module names and, for ``form="grouped"``,
    :func:`convert_to_deploy` (with BN folding when recorded), so that the saved state dict fits.
    """
    missing = [k for k in _META_KEYS if k not in meta]
    if missing or meta["form"] not in ("masked", "grouped"):
        raise ValueError(
            f"grouping metadata is incomplete or unknown: missing {missing}, form {meta.get('form')!r}"
        )
    if meta["modules"]:
        groups = meta["groups"]
        if not isinstance(groups, int):
            raise ValueError(f"grouping metadata: cannot rebuild mixed group counts {groups}")
        make_gradual(
            model,
            groups,
            scope=meta["scope"],
            shuffle=meta["shuffle"],
            kernels=meta["kernels"],
            modules=meta["modules"],
        )
        if meta.get("alpha") is not None:
            set_alpha(model, float(meta["alpha"]))
    if meta["form"] == "grouped":
        if not meta["modules"]:  # a deployed model without masked convs (BN folding only)
            model.rtseg_grouping = {
                "groups": 1,
                "scope": "all",
                "shuffle": False,
                "kernels": "pointwise",
                "modules": [],
                "shuffled": [],
            }
        model = convert_to_deploy(model, fold_bn=bool(meta["bn_folded"]), inplace=True, strict=False)
    return model


def gradual_setup(model: nn.Module, cfg: Any) -> AlphaSchedule | None:
    """Training-engine hook: apply ``cfg.gradual_*`` to ``model``; the alpha schedule, or None when off."""
    if cfg.gradual_groups < 2:
        return None
    make_gradual(
        model,
        cfg.gradual_groups,
        scope=cfg.gradual_scope,
        shuffle=cfg.gradual_shuffle,
        kernels=cfg.gradual_kernels,
    )
    return AlphaSchedule.from_config(cfg)
