"""ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation.

Paszke, Chaurasia, Kim, Culurciello, 2016 (arXiv:1606.02147).

The layer layout follows the paper's Table 1; where the paper text and the widely used PyTorch
port of the authors' Torch7 code (github.com/davidtvs/PyTorch-ENet) differ, the defaults follow
the port, so that its state dicts convert exactly (``rtseg convert --source enet-davidtvs``).
Every such choice is listed in ``docs/models.md`` (section 5) and most are constructor switches.

Max-unpooling is written as a scatter into a zero tensor, so the whole model exports to ONNX
(``MaxPool`` with indices + ``ScatterElements``); ``nn.MaxUnpool2d`` does not export.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import CheckpointError
from rtseg.models._base import SegmentationModel
from rtseg.models._registry import create_model, register_model
from rtseg.models.convert import Converted, register_converter, remap, strip_prefix

__all__ = ["ENet", "convert_enet_davidtvs", "max_unpool2x2"]

PAPER = "Paszke et al., ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation, arXiv:1606.02147, 2016"

_ACTIVATIONS = ("prelu", "relu")


# ----------------------------------------------------------------------------------------- blocks


def _act(kind: str | None) -> nn.Module:
    # One PReLU slope per layer (nn.PReLU() default), as in the reference port.
    if kind is None:
        return nn.Identity()
    if kind == "prelu":
        return nn.PReLU()
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {kind!r}")


class ConvBNAct(nn.Sequential):
    """``conv -> BatchNorm -> activation`` (``act=None`` leaves the activation out); no conv bias.

    ``transposed=True`` uses a ``ConvTranspose2d``. Shapes follow the wrapped convolution.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        act: str | None = "prelu",
        transposed: bool = False,
    ) -> None:
        if transposed:
            conv: nn.Module = nn.ConvTranspose2d(
                cin, cout, kernel, stride=stride, padding=padding, bias=False
            )
        else:
            conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
        super().__init__(OrderedDict(conv=conv, bn=nn.BatchNorm2d(cout), act=_act(act)))


def max_unpool2x2(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Inverse of a 2x2 stride-2 max-pool: ``B x C x h x w`` values -> ``B x C x 2h x 2w``.

    ``indices`` (``B x C x h x w``, int64) are those returned by ``F.max_pool2d(...,
    return_indices=True)``: flat positions inside each ``2h x 2w`` input plane. Positions that were
    not a maximum are zero. Written as ``zeros.scatter`` so it exports to ONNX as
    ``ScatterElements`` (``F.max_unpool2d`` has no ONNX export); equal to ``F.max_unpool2d``.
    """
    b, c, h, w = x.shape
    out = x.new_zeros((b, c, (2 * h) * (2 * w)))
    out = out.scatter(2, indices.flatten(2), x.flatten(2))
    return out.view(b, c, 2 * h, 2 * w)


def argmax_mask2x2(x: torch.Tensor) -> torch.Tensor:
    """Where each 2x2 window's maximum sits, as a one-hot ``B x C x 4 x h x w`` float mask.

    Slot ``k = 2 * i + j`` marks offset ``(i, j)`` inside the window; on ties the first maximum in
    row-major order wins (``>=`` against later positions, ``>`` against earlier ones), the position
    ``F.max_pool2d(..., return_indices=True)`` reports. The four phases are only compared with each
    other -- never with a separately computed max-pool output, which a quantized or bf16 graph may round
    differently -- using strided slices, comparisons and products (no ScatterElements).
    """
    p = (x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2])
    slots = []
    for k in range(4):
        m = None
        for j in range(4):
            if j != k:
                c = (p[k] >= p[j]) if j > k else (p[k] > p[j])
                m = c if m is None else m & c
        slots.append(m.to(x.dtype))
    return torch.stack(slots, 2)


def mask_unpool2x2(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max-unpooling with an :func:`argmax_mask2x2` mask: equal to :func:`max_unpool2x2` with indices.

    ``x * mask`` places each value in its window's slot, ``pixel_shuffle`` (ONNX ``DepthToSpace``)
    interleaves the four slots into the ``2h x 2w`` plane.
    """
    b, c, h, w = x.shape
    return F.pixel_shuffle((x.unsqueeze(2) * mask).reshape(b, 4 * c, h, w), 2)


class InitialBlock(nn.Module):
    """``B x 3 x H x W`` -> ``B x 16 x H/2 x W/2``: 13-filter 3x3 stride-2 conv ‖ max-pool, BN, act.

    ``pool_kernel=3`` (3x3, stride 2, padding 1) is the reference port; ``2`` is the paper's
    non-overlapping 2x2 pool. Both give ``H/2`` for even ``H``.
    """

    def __init__(self, cin: int = 3, cout: int = 16, act: str = "prelu", pool_kernel: int = 3) -> None:
        super().__init__()
        if pool_kernel not in (2, 3):
            raise ValueError(f"initial_pool must be 2 (paper) or 3 (reference port), got {pool_kernel!r}")
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(pool_kernel, stride=2, padding=pool_kernel // 2 if pool_kernel == 3 else 0)
        self.bn = nn.BatchNorm2d(cout)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat((self.conv(x), self.pool(x)), 1)))


class Bottleneck(nn.Module):
    """Regular, dilated or asymmetric bottleneck; ``B x C x H x W`` -> same shape.

    Extension: 1x1 projection to ``C/4``, the main conv (3x3 dilated by ``dilation``, or ``k x 1``
    then ``1 x k`` when ``asymmetric=k``), 1x1 expansion, spatial dropout; added to the input,
    then the activation. As in the port, the expansion's BN is followed by the activation too.
    """

    def __init__(
        self,
        channels: int,
        dilation: int = 1,
        asymmetric: int = 0,
        dropout: float = 0.1,
        act: str = "prelu",
        ratio: int = 4,
    ) -> None:
        super().__init__()
        mid = channels // ratio
        self.proj = ConvBNAct(channels, mid, 1, act=act)
        if asymmetric:
            k, p = asymmetric, asymmetric // 2
            self.conv = nn.Sequential(
                ConvBNAct(mid, mid, (k, 1), padding=(p, 0), act=act),
                ConvBNAct(mid, mid, (1, k), padding=(0, p), act=act),
            )
        else:
            self.conv = nn.Sequential(ConvBNAct(mid, mid, 3, padding=dilation, dilation=dilation, act=act))
        self.expand = ConvBNAct(mid, channels, 1, act=act)
        self.dropout = nn.Dropout2d(dropout)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.dropout(self.expand(self.conv(self.proj(x)))))


class DownsamplingBottleneck(nn.Module):
    """``B x Cin x H x W`` -> (``B x Cout x H/2 x W/2``, pooling indices ``B x Cin x H/2 x W/2``).

    Main branch: 2x2 max-pool (indices kept for the decoder's unpooling), zero-padded to ``Cout``
    channels. Extension: 2x2 stride-2 projection to ``Cin/4``, 3x3 conv, 1x1 expansion, dropout.
    """

    def __init__(self, cin: int, cout: int, dropout: float = 0.1, act: str = "prelu", ratio: int = 4) -> None:
        super().__init__()
        mid = cin // ratio
        self.extra = cout - cin
        self.proj = ConvBNAct(cin, mid, 2, stride=2, act=act)
        self.conv = nn.Sequential(ConvBNAct(mid, mid, 3, padding=1, act=act))
        self.expand = ConvBNAct(mid, cout, 1, act=act)
        self.dropout = nn.Dropout2d(dropout)
        self.act = _act(act)

    #: how the pooling positions travel to the decoder: ``"indices"`` (int64 flat positions, one
    #: fused kernel in PyTorch; ONNX ScatterElements) or ``"mask"`` (a one-hot 2x2 mask; exported
    #: graphs, where OpenVINO runs ScatterElements ~10x slower). Both give identical outputs.
    unpool: str = "indices"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.unpool == "mask":
            main = F.max_pool2d(x, 2, stride=2)
            where = argmax_mask2x2(x)
        else:
            main, where = F.max_pool2d(x, 2, stride=2, return_indices=True)
        # channel zero-padding as a Pad op (exports to ONNX; no device-specific zeros tensor)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra))
        ext = self.dropout(self.expand(self.conv(self.proj(x))))
        return self.act(main + ext), where


class UpsamplingBottleneck(nn.Module):
    """``B x Cin x h x w`` + indices ``B x Cout x h x w`` -> ``B x Cout x 2h x 2w``.

    Main branch: 1x1 conv + BN to ``Cout``, then max-unpooling with the indices of the matching
    downsampling bottleneck. Extension: 1x1 projection to ``Cin/4``, 2x2 stride-2 transposed conv
    (the port's choice), 1x1 expansion (conv + BN, no activation), dropout.
    """

    def __init__(self, cin: int, cout: int, dropout: float = 0.1, act: str = "relu", ratio: int = 4) -> None:
        super().__init__()
        mid = cin // ratio
        self.main = ConvBNAct(cin, cout, 1, act=None)
        self.proj = ConvBNAct(cin, mid, 1, act=act)
        self.tconv = ConvBNAct(mid, mid, 2, stride=2, act=act, transposed=True)
        # conv + BN only: the reference port has no activation here (unlike its other bottlenecks)
        self.expand = ConvBNAct(mid, cout, 1, act=None)
        self.dropout = nn.Dropout2d(dropout)
        self.act = _act(act)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        # indices (B x C x h x w) or a one-hot mask (B x C x 4 x h x w): see DownsamplingBottleneck.unpool
        unpool = mask_unpool2x2 if indices.dim() == 5 else max_unpool2x2
        main = unpool(self.main(x), indices)
        ext = self.dropout(self.expand(self.tconv(self.proj(x))))
        return self.act(main + ext)


class ENetStage(nn.Module):
    """One ENet stage: an optional down/upsampling bottleneck (``down`` / ``up``) then ``blocks``."""

    def __init__(
        self, blocks: Sequence[nn.Module], down: nn.Module | None = None, up: nn.Module | None = None
    ):
        super().__init__()
        if down is not None:
            self.down = down
        if up is not None:
            self.up = up
        self.blocks = nn.Sequential(*blocks)


# ------------------------------------------------------------------------------ variant table

#: stages 2 and 3 (paper Table 1): (kind, dilation or asymmetric kernel) for bottleneck x.1 .. x.8
STAGE23 = (
    ("regular", 1),
    ("dilated", 2),
    ("asymmetric", 5),
    ("dilated", 4),
    ("regular", 1),
    ("dilated", 8),
    ("asymmetric", 5),
    ("dilated", 16),
)

#: channels per stage: initial 16, stage 1 64, stages 2-3 128, stage 4 64, stage 5 16
WIDTHS = (16, 64, 128, 64, 16)

#: spatial dropout: p = 0.01 before bottleneck 2.0, 0.1 from there on (decoder included)
DROPOUT = (0.01, 0.1)


def _stage23_blocks(channels: int, dropout: float, act: str) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for kind, value in STAGE23:
        if kind == "asymmetric":
            blocks.append(Bottleneck(channels, asymmetric=value, dropout=dropout, act=act))
        else:
            blocks.append(Bottleneck(channels, dilation=value, dropout=dropout, act=act))
    return blocks


# -------------------------------------------------------------------------------------- model


class ENetEncoder(nn.Module):
    """Initial block + stages 1-3: ``B x 3 x H x W`` -> ``B x 128 x H/8 x W/8`` and pool indices."""

    def __init__(self, num_classes: int, act: str, initial_pool: int, classifier: bool) -> None:
        super().__init__()
        c0, c1, c2 = WIDTHS[:3]
        p1, p2 = DROPOUT
        self.initial = InitialBlock(3, c0, act=act, pool_kernel=initial_pool)
        self.stage1 = ENetStage(
            [Bottleneck(c1, dropout=p1, act=act) for _ in range(4)],
            down=DownsamplingBottleneck(c0, c1, dropout=p1, act=act),
        )
        self.stage2 = ENetStage(
            _stage23_blocks(c2, p2, act), down=DownsamplingBottleneck(c1, c2, dropout=p2, act=act)
        )
        self.stage3 = ENetStage(_stage23_blocks(c2, p2, act))
        # Not in the paper's Table 1: a 1x1 classifier on the stage-3 features for encoder-only
        # (stage-one) training, the way the ENet authors trained the encoder first.
        self.classifier = nn.Conv2d(c2, num_classes, 1) if classifier else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.initial(x)
        x, idx1 = self.stage1.down(x)
        x = self.stage1.blocks(x)
        x, idx2 = self.stage2.down(x)
        x = self.stage2.blocks(x)
        x = self.stage3.blocks(x)
        return x, [idx1, idx2]


class ENetDecoder(nn.Module):
    """Stages 4-5 + full-resolution transposed conv: ``B x 128 x H/8 x W/8`` -> ``B x K x H x W``."""

    def __init__(self, num_classes: int, act: str) -> None:
        super().__init__()
        c2, c4, c5 = WIDTHS[2:]
        p = DROPOUT[1]
        self.stage4 = ENetStage(
            [Bottleneck(c4, dropout=p, act=act) for _ in range(2)],
            up=UpsamplingBottleneck(c2, c4, dropout=p, act=act),
        )
        self.stage5 = ENetStage(
            [Bottleneck(c5, dropout=p, act=act)], up=UpsamplingBottleneck(c4, c5, dropout=p, act=act)
        )
        # 3x3 stride-2 "fullconv" without bias; output_padding=1 gives exactly 2x for even sides
        # (the port passes output_size=input_size, which is the same for the even sides we feed).
        self.head = nn.ConvTranspose2d(c5, num_classes, 3, stride=2, padding=1, output_padding=1, bias=False)

    def forward(self, x: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
        idx1, idx2 = indices
        x = self.stage4.blocks(self.stage4.up(x, idx2))
        x = self.stage5.blocks(self.stage5.up(x, idx1))
        return self.head(x)


class ENet(SegmentationModel):
    """ENet. Input ``B x 3 x H x W`` RGB in [0, 1]; output ``B x num_classes x H x W`` logits.

    Args:
        num_classes: output classes ``K``.
        encoder_act: ``"prelu"`` (paper and port) or ``"relu"``.
        decoder_act: ``"relu"`` (port, default) or ``"prelu"`` (paper: PReLU everywhere).
        initial_pool: 3 (port: 3x3 stride-2 padding-1 max-pool) or 2 (paper: 2x2).
        encoder_classifier: build the 1x1 classifier used by ``forward(x, encoder_only=True)``
            (``B x K x ceil(H/8) x ceil(W/8)``); converted reference weights have none.
        mean, std: input normalisation applied inside the model (default: none).
    """

    size_divisor = 8
    output_stride = 8

    def __init__(
        self,
        num_classes: int,
        encoder_act: str = "prelu",
        decoder_act: str = "relu",
        initial_pool: int = 3,
        encoder_classifier: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std)
        for name, value in (("encoder_act", encoder_act), ("decoder_act", decoder_act)):
            if value not in _ACTIVATIONS:
                raise ValueError(f"{name} must be one of {_ACTIVATIONS}, got {value!r}")
        self.encoder = ENetEncoder(num_classes, encoder_act, initial_pool, encoder_classifier)
        self.decoder = ENetDecoder(num_classes, decoder_act)

    def forward_padded(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        feats, indices = self.encoder(x)
        if encoder_only:
            if self.encoder.classifier is None:
                raise RuntimeError(
                    "this ENet was built with encoder_classifier=False (e.g. converted reference weights), "
                    "so it has no encoder-only output; rebuild it with encoder_classifier=True to train one"
                )
            return self.encoder.classifier(feats)
        return self.decoder(feats, indices)

    def export_form(self) -> ENet:
        """Unpool with one-hot masks instead of indices: OpenVINO runs the index form's
        ScatterElements ~10x slower (docs/deploy.md); the outputs are identical."""
        for m in self.modules():
            if isinstance(m, DownsamplingBottleneck):
                m.unpool = "mask"
        return self


# ------------------------------------------------------------------------ registered builders


@register_model(
    "enet",
    family="enet",
    paper=PAPER,
    description="ENet (Paszke et al. 2016), layout of the authors' code as ported by davidtvs/PyTorch-ENet",
    published={
        "params": 0.37e6,
        "gflops": 3.83,
        "flops_convention": "flops",
        "size": (360, 640),
        "source": "ENet paper, Table 3 (input 3 x 640 x 360)",
        # Tables 4 and 5 (../shared/papers/002_*.txt); class IoU on the test splits, at their own input sizes
        "miou": 58.3,
        "dataset": "cityscapes-test",
        "miou_source": "ENet paper, Table 4 (Cityscapes test, class IoU)",
        "camvid_test": {"class_iou": 51.3, "class_avg_acc": 68.3, "source": "ENet paper, Table 5"},
    },
    default_size=(360, 480),
)
def enet(num_classes: int = 19, **kwargs) -> ENet:
    """ENet with the reference port's defaults (PReLU encoder, ReLU decoder, 3x3 initial pool)."""
    return ENet(num_classes, **kwargs)


# --------------------------------------------------------------------------------- converters

_PORT_STAGE = re.compile(r"^(downsample|upsample|regular|dilated|asymmetric)(\d)_(\d+)\.(.*)$")
_SEQ3 = ("conv", "bn", "act")


def _port_block_rest(rest: str) -> str | None:
    """Rename a key inside one port bottleneck (after ``regular1_1.``) to rtseg's names."""
    m = re.match(r"^ext_conv1\.(\d)\.(.*)$", rest)
    if m:
        return f"proj.{_SEQ3[int(m[1])]}.{m[2]}"
    m = re.match(r"^ext_conv2\.(\d)\.(.*)$", rest)
    if m:  # regular: 0-2; asymmetric: (k x 1) 0-2 then (1 x k) 3-5; in upsampling it is the expansion
        i = int(m[1])
        return f"conv.{i // 3}.{_SEQ3[i % 3]}.{m[2]}"
    m = re.match(r"^ext_conv3\.(\d)\.(.*)$", rest)
    if m:
        return f"expand.{_SEQ3[int(m[1])]}.{m[2]}"
    m = re.match(r"^main_conv1\.(\d)\.(.*)$", rest)
    if m:
        return f"main.{_SEQ3[int(m[1])]}.{m[2]}"
    if rest.startswith("ext_tconv1_bnorm."):
        return "tconv.bn." + rest[len("ext_tconv1_bnorm.") :]
    if rest.startswith("ext_tconv1_activation."):
        return "tconv.act." + rest[len("ext_tconv1_activation.") :]
    if rest.startswith("ext_tconv1."):
        return "tconv.conv." + rest[len("ext_tconv1.") :]
    if rest.startswith("out_activation."):
        return "act." + rest[len("out_activation.") :]
    return None


def _davidtvs_key(key: str) -> str | None:
    if key.startswith("initial_block."):
        rest = key[len("initial_block.") :]
        for src, dst in (("main_branch.", "conv."), ("batch_norm.", "bn."), ("out_activation.", "act.")):
            if rest.startswith(src):
                return "encoder.initial." + dst + rest[len(src) :]
        return None
    if key.startswith("transposed_conv."):
        return "decoder.head." + key[len("transposed_conv.") :]
    m = _PORT_STAGE.match(key)
    if not m:
        return None
    kind, stage, idx, rest = m[1], int(m[2]), int(m[3]), m[4]
    inner = _port_block_rest(rest)
    if inner is None:
        return None
    if kind == "upsample" and rest.startswith("ext_conv2."):
        # the upsampling bottleneck's ext_conv2 is its 1x1 expansion (conv, bn)
        inner = "expand." + inner.split(".", 2)[2]
    part = "encoder" if stage <= 3 else "decoder"
    if kind == "downsample":
        return f"{part}.stage{stage}.down.{inner}"
    if kind == "upsample":
        return f"{part}.stage{stage}.up.{inner}"
    # the port numbers bottlenecks after a down/upsampling one from 1, those of stage 3 from 0
    block = idx if stage == 3 else idx - 1
    return f"{part}.stage{stage}.blocks.{block}.{inner}"


@register_converter("enet-davidtvs")
def convert_enet_davidtvs(sd: dict[str, torch.Tensor], num_classes: int | None = None, **kw) -> Converted:
    """davidtvs/PyTorch-ENet ``state_dict`` -> rtseg ``enet``.

    ``num_classes`` is read from ``transposed_conv.weight`` (``16 x K x 3 x 3``) when not given.
    Activations are detected from the keys (a PReLU has a weight, a ReLU has none). The port has
    no encoder-only classifier, so the model is built with ``encoder_classifier=False`` rather
    than with an untrained one.
    """
    if kw:
        raise TypeError(f"enet-davidtvs converter got unexpected options {sorted(kw)}")
    sd = strip_prefix(sd)
    head = sd.get("transposed_conv.weight")
    if head is None or head.dim() != 4 or tuple(head.shape[::2]) != (16, 3):
        raise CheckpointError("not a davidtvs ENet state dict: no 16 x K x 3 x 3 'transposed_conv.weight'")
    inferred = int(head.shape[1])
    if num_classes is not None and num_classes != inferred:
        raise CheckpointError(
            f"--num-classes {num_classes} does not match the weights' {inferred} output channels"
        )
    kwargs = {
        "num_classes": inferred,
        "encoder_act": "prelu" if "initial_block.out_activation.weight" in sd else "relu",
        "decoder_act": "prelu" if "upsample4_0.ext_conv1.2.weight" in sd else "relu",
        "encoder_classifier": False,
    }
    target = create_model("enet", **kwargs).state_dict()
    dropped = [k for k in sd if _davidtvs_key(k) is None]
    if dropped:
        raise CheckpointError(f"enet-davidtvs: keys with no rtseg counterpart: {dropped[:4]}")
    mapped = remap(
        sd, _davidtvs_key, {k: v for k, v in target.items() if k not in ("mean", "std")}, "enet-davidtvs"
    )
    # the port feeds ToTensor() images (pixel / 255, no mean/std): identity normalisation
    mapped["mean"], mapped["std"] = target["mean"], target["std"]
    meta = {
        "notes": "davidtvs/PyTorch-ENet weights; input RGB pixel/255 without normalisation; "
        "no encoder-only classifier (encoder_classifier=False)",
    }
    return Converted(model="enet", model_kwargs=dict(kwargs), state_dict=mapped, meta=meta)
