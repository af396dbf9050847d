"""Deploy form: fold every eval-mode BatchNorm into the convolution that feeds it.

The mechanism is generic and needs no per-family list: :func:`fold_batchnorm` runs the model once on a
small input while recording, for every tensor, which module produced it and how many operations consumed
it (module hooks + a ``TorchFunctionMode``). A ``BatchNorm2d`` whose input is the output of exactly one
``Conv2d``/``ConvTranspose2d`` call, consumed by nothing but that BatchNorm, is folded into the conv's
weight and bias and replaced by ``nn.Identity``. A BatchNorm with no such conv (ERFNet/ESSNet/ENet
downsamplers normalise ``cat(conv(x), maxpool(x))``) becomes a :class:`ChannelAffine` (one fused
multiply-add, no running statistics). The result is then checked against the original model on the same
input; any mismatch raises instead of returning a silently different network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["ChannelAffine", "FoldReport", "FuseError", "SubPixelConv2d", "fold_batchnorm", "transposed_to_subpixel"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv2d, nn.ConvTranspose2d)


class FuseError(RuntimeError):
    """BatchNorm folding changed the model's outputs (the folded model is not returned)."""


class ChannelAffine(nn.Module):
    """Frozen per-channel ``y = x * scale + shift`` for ``B x C x ...`` inputs (an eval BatchNorm, pre-computed)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(shape), x, self.scale.view(shape))

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}"


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: BN names folded into a conv (with the conv), made affine, and the check."""

    folded: dict[str, str] = field(default_factory=dict)
    affine: list[str] = field(default_factory=list)
    max_abs_error: float = 0.0


def _bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise FuseError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    inv = torch.rsqrt(bn.running_var.double() + bn.eps)
    w = bn.weight.double() if bn.weight is not None else torch.ones_like(inv)
    b = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv)
    scale = w * inv
    return scale, b - bn.running_mean.double() * scale


@torch.no_grad()
def _fold_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    """``bn(conv(x)) == conv'(x)``: scale the output channels of the conv, fold the shift into its bias."""
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight.double()
    if isinstance(conv, nn.ConvTranspose2d):
        # weight: Cin x (Cout/g) x kh x kw; output channel o = group * (Cout/g) + j
        g = conv.groups
        cin, cog = w.shape[:2]
        w = w.view(g, cin // g, cog, *w.shape[2:]) * scale.view(g, 1, cog, *([1] * (w.dim() - 2)))
        w = w.view(cin, cog, *w.shape[3:])
    else:  # Cout x (Cin/g) x kh x kw
        w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(w.to(dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter((b * scale + shift).to(dtype))


class _Recorder(TorchFunctionMode):
    """Counts how many tensor-producing torch operations consume each tensor (by id; all kept alive meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.uses: dict[int, int] = {}
        self.keep: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        results = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if results:  # shape / dim queries return no tensor and are not data uses
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
                    self.uses[id(t)] = self.uses.get(id(t), 0) + 1
            self.keep.extend(results)
        return out


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, str], list[str]]:
    """(bn name -> conv name) for foldable pairs, and the BN names with no foldable conv."""
    names = {id(m): n for n, m in model.named_modules()}
    produced: dict[int, str] = {}  # tensor id -> conv name
    calls: dict[str, int] = {}
    bn_inputs: dict[str, int] = {}
    handles = []

    def conv_hook(mod, inp, out):
        n = names[id(mod)]
        calls[n] = calls.get(n, 0) + 1
        produced[id(out)] = n

    def bn_hook(mod, inp):
        n = names[id(mod)]
        calls[n] = calls.get(n, 0) + 1
        bn_inputs[n] = id(inp[0])

    for m in model.modules():
        if isinstance(m, _CONV):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, _BN):
            handles.append(m.register_forward_pre_hook(bn_hook))
    rec = _Recorder()
    try:
        with torch.no_grad(), rec:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    del out
    pairs, affine = {}, []
    for bn, tid in bn_inputs.items():
        conv = produced.get(tid)
        # the conv must run once, feed only this BN (which runs once), else scaling its weight changes others
        if conv is not None and calls[conv] == 1 and calls[bn] == 1 and rec.uses.get(tid, 0) == 1:
            pairs[bn] = conv
        else:
            affine.append(bn)
    return pairs, affine


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None, inplace: bool = False,
                   atol: float = 1e-4, report: FoldReport | None = None) -> nn.Module:
    """The eval-mode deploy form of ``model`` with no BatchNorm left; outputs equal to the original's.

    Args:
        model: any module taking one ``B x 3 x H x W`` tensor (every rtseg model).
        example: input used to trace which conv feeds which BN and to check the result
            (default ``1 x 3 x 64 x 64`` uniform in [0, 1]).
        inplace: modify ``model`` itself instead of a deep copy.
        atol: largest allowed ``max |folded - original|``, scaled by ``max(1, max |original|)``.
        report: filled with the folded / affine BN names and the measured error.

    Returns the folded model in eval mode. Raises :class:`FuseError` if the check fails.
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    if example is None:
        example = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    example = example.to(next(model.parameters()).device)
    if not any(isinstance(m, _BN) for m in model.modules()):
        return model
    with torch.no_grad():
        ref = model(example)
    pairs, affine = _trace(model, example)
    for bn_name, conv_name in pairs.items():
        _fold_into_conv(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _set(model, bn_name, nn.Identity())
    for bn_name in affine:
        bn = model.get_submodule(bn_name)
        scale, shift = _bn_scale_shift(bn)
        _set(model, bn_name, ChannelAffine(scale.to(bn.running_mean.dtype), shift.to(bn.running_mean.dtype)))
    with torch.no_grad():
        out = model(example)
    err = float((out - ref).abs().max()) if out.shape == ref.shape else float("inf")
    tol = atol * max(1.0, float(ref.abs().max()))
    if not err <= tol:
        raise FuseError(f"folding BatchNorm changed the outputs of {getattr(model, 'rtseg_name', type(model).__name__)}"
                        f" by {err:.3g} (> {tol:.3g})")
    if report is not None:
        report.folded, report.affine, report.max_abs_error = dict(pairs), list(affine), err
    return model


# ------------------------------------------------------------------ transposed conv -> sub-pixel conv
class SubPixelConv2d(nn.Module):
    """A stride-``s`` ``ConvTranspose2d`` rewritten as ``pad -> Conv2d(cin, cout*s*s) -> pixel_shuffle(s)``.

    Output pixel ``(s*m + a, s*n + b)`` of a stride-``s`` transposed conv only ever receives the kernel taps
    of its phase ``(a, b)``; gathering each phase's taps into an ordinary convolution (one output channel per
    class and phase) and interleaving the phases with ``pixel_shuffle`` (ONNX ``DepthToSpace``) gives the
    same numbers. Graph runtimes run this form much faster than ``ConvTranspose`` (docs/deploy.md).
    Build it with :meth:`from_transposed`. With ``emit_phases`` set, :meth:`forward` returns the conv's
    ``cout*s*s`` phase channels without the ``pixel_shuffle`` (what :class:`rtseg.deploy.exporter.ArgmaxHead`
    uses to take the argmax before the interleaving).
    """

    #: return the conv output before ``pixel_shuffle`` (set per instance, only while a graph is traced)
    emit_phases: bool = False

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int], stride: int) -> None:
        super().__init__()
        self.conv = conv
        self.pad = pad  # F.pad order: (left, right, top, bottom)
        self.stride = stride

    @staticmethod
    def _taps(k: int, s: int, p: int) -> list[list[tuple[int, int]]]:
        """Per output phase ``a`` (row/column ``s*m + a``): the ``(kernel index, input offset)`` pairs feeding it."""
        return [[(t, (a + p - t) // s) for t in range(k) if (a + p - t) % s == 0] for a in range(s)]

    @classmethod
    def supports(cls, m: nn.Module) -> bool:
        """True for a 2-D transposed conv whose output is exactly ``stride`` x its input (any input size)."""
        if type(m) is not nn.ConvTranspose2d or m.groups != 1 or m.dilation != (1, 1):
            return False
        if m.padding_mode != "zeros" or m.stride[0] != m.stride[1] or m.stride[0] < 2:
            return False
        s = m.stride[0]
        for k, p, op in zip(m.kernel_size, m.padding, m.output_padding):
            if k + op != s + 2 * p:  # (n-1)s - 2p + k + op == s*n for every n
                return False
            offsets = [d for phase in cls._taps(k, s, p) for _, d in phase]
            if offsets and (min(offsets) > 0 or max(offsets) < 0):
                return False
        return True

    @classmethod
    def from_transposed(cls, m: nn.ConvTranspose2d) -> SubPixelConv2d:
        if not cls.supports(m):
            raise ValueError(f"no sub-pixel form for {m}")
        s = m.stride[0]
        taps_h = cls._taps(m.kernel_size[0], s, m.padding[0])
        taps_w = cls._taps(m.kernel_size[1], s, m.padding[1])
        offs_h = [d for ph in taps_h for _, d in ph] or [0]
        offs_w = [d for ph in taps_w for _, d in ph] or [0]
        h0, h1, w0, w1 = min(offs_h), max(offs_h), min(offs_w), max(offs_w)
        cin, cout = m.in_channels, m.out_channels
        w = m.weight.detach()  # cin x cout x kh x kw
        new_w = w.new_zeros(cout, s, s, cin, h1 - h0 + 1, w1 - w0 + 1)
        for a, ph in enumerate(taps_h):
            for b, pw in enumerate(taps_w):
                for th, dh in ph:
                    for tw, dw in pw:
                        new_w[:, a, b, :, dh - h0, dw - w0] = w[:, :, th, tw].t()
        conv = nn.Conv2d(cin, cout * s * s, (h1 - h0 + 1, w1 - w0 + 1), bias=m.bias is not None)
        conv = conv.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(new_w.reshape(cout * s * s, cin, h1 - h0 + 1, w1 - w0 + 1))
            if m.bias is not None:
                conv.bias.copy_(m.bias.detach().repeat_interleave(s * s))
        return cls(conv, (-w0, w1, -h0, h1), s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = torch.nn.functional.pad(x, self.pad)
        y = self.conv(x)
        return y if self.emit_phases else torch.nn.functional.pixel_shuffle(y, self.stride)

    @classmethod
    def waste_free(cls, m: nn.Module) -> bool:
        """True when the sub-pixel conv of ``m`` has no zero taps: every output phase reads the same input
        window (e.g. kernel = stride, padding 0), so the rewrite adds no multiply-adds. ESSNet's "UPS"
        (kernel 1, stride 2) or ERFNet's 3x3 stride-2 upsampler would compute zeros (4x / 1.8x the MACs)."""
        if not cls.supports(m):
            return False
        s = m.stride[0]
        for k, p in zip(m.kernel_size, m.padding):
            taps = cls._taps(k, s, p)
            offsets = [d for ph in taps for _, d in ph]
            width = max(offsets) - min(offsets) + 1
            if any(len(ph) != width for ph in taps):
                return False
        return True

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


def transposed_to_subpixel(model: nn.Module, inplace: bool = False,
                           waste_free: bool = False) -> tuple[nn.Module, list[str]]:
    """Replace every supported stride-``s`` ``ConvTranspose2d`` by a :class:`SubPixelConv2d` (same outputs);
    with ``waste_free`` only those whose rewrite adds no multiply-adds (:meth:`SubPixelConv2d.waste_free`).

    Returns the model (a copy unless ``inplace``) and the names of the replaced modules.
    """
    if not inplace:
        model = copy.deepcopy(model)
    ok = SubPixelConv2d.waste_free if waste_free else SubPixelConv2d.supports
    names = [n for n, m in model.named_modules() if ok(m)]
    for n in names:
        _set(model, n, SubPixelConv2d.from_transposed(model.get_submodule(n)))
    return model, names


class PhaseMaxPool2d(nn.Module):
    """``MaxPool2d(2, stride=2)`` written as ``pixel_unshuffle(2)`` -> max over each channel's four phases
    (exported as ``Reshape -> Transpose -> Reshape -> ReduceMax``): the same numbers on even-sized inputs.

    On a few-channel tensor (the image an ERFNet/ESSNet stem pools) OpenVINO's CPU plugin runs
    ``MaxPool`` in its 16-channel blocked layout and first reorders the 3-channel image into it (5x the
    bytes: ~4 ms of the int8 ESSNet-DG2S graph at 512x1024); the phase split reads the planar image as it is
    (docs/deploy.md).
    """

    @staticmethod
    def supports(m: nn.Module) -> bool:
        """True for a plain 2x2 stride-2 ``MaxPool2d`` (no padding, dilation, ceil mode or indices)."""
        from torch.nn.modules.utils import _pair

        return (type(m) is nn.MaxPool2d and _pair(m.kernel_size) == (2, 2) and _pair(m.stride) == (2, 2)
                and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1) and not m.ceil_mode
                and not m.return_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_unshuffle(x, 2).unflatten(1, (x.shape[1], 4)).amax(2)


def image_pools_to_phase_max(model: nn.Module, example: torch.Tensor, max_channels: int = 4,
                             inplace: bool = False) -> tuple[nn.Module, list[str]]:
    """Replace every 2x2 stride-2 ``MaxPool2d`` that sees at most ``max_channels`` channels of even height
    and width on ``example`` (found with forward pre-hooks: the stems' pools of the image) by a
    :class:`PhaseMaxPool2d`. Returns the model (a copy unless ``inplace``) and the replaced module names."""
    if not inplace:
        model = copy.deepcopy(model)
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str):  # a pre-hook returning None leaves the inputs as they are
        def hook(_m: nn.Module, args: tuple) -> None:
            seen.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if PhaseMaxPool2d.supports(m)]
    if hooks:
        try:
            with torch.no_grad():
                model(example)
        finally:
            for h in hooks:
                h.remove()
    names = [n for n, s in seen.items() if len(s) == 4 and s[1] <= max_channels and s[2] % 2 == 0 and s[3] % 2 == 0]
    for n in names:
        _set(model, n, PhaseMaxPool2d())
    return model, names
