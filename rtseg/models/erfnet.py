"""ERFNet: Efficient Residual Factorized ConvNet for Real-time Semantic Segmentation.

Romera, Alvarez, Bergasa, Arroyo, IEEE Transactions on Intelligent Transportation Systems 19(1),
2018 (online 2017). Layout as in the paper's Table 1 and the authors' PyTorch code
(github.com/Eromera/erfnet_pytorch, ``train/erfnet.py``), whose state dicts convert exactly
(``rtseg convert --source erfnet-eromera``). Differences between paper text and code are listed in
``docs/models.md`` (section 5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import CheckpointError
from rtseg.models._base import SegmentationModel
from rtseg.models._registry import create_model, register_model
from rtseg.models.convert import Converted, register_converter, remap, strip_prefix

__all__ = ["ERFNet", "convert_erfnet_eromera"]

PAPER = (
    "Romera et al., ERFNet: Efficient Residual Factorized ConvNet for Real-time Semantic Segmentation, "
    "IEEE T-ITS 19(1):263-272, 2018"
)

#: BatchNorm epsilon of the authors' code (1e-3, not PyTorch's 1e-5)
BN_EPS = 1e-3


# ----------------------------------------------------------------------------------------- blocks


class DownsamplerBlock(nn.Module):
    """``B x Cin x H x W`` -> ``B x Cout x H/2 x W/2`` (even ``H``, ``W``).

    3x3 stride-2 conv with ``Cout - Cin`` filters (with bias) ‖ 2x2 max-pool, concatenated, BN, ReLU.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat((self.conv(x), self.pool(x)), 1)))


class NonBottleneck1D(nn.Module):
    """Non-bottleneck-1D residual block, ``B x C x H x W`` -> same shape.

    3x1, ReLU, 1x3, BN, ReLU, 3x1 and 1x3 dilated by ``dilation``, with a ReLU between, BN,
    spatial dropout; added to the input, then ReLU. All convolutions have biases.
    """

    def __init__(self, channels: int, dropout: float = 0.0, dilation: int = 1) -> None:
        super().__init__()
        c, d = channels, dilation
        self.conv_v1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0), bias=True)
        self.conv_h1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv_v2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv_h2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(c, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv_h1(F.relu(self.conv_v1(x)))))
        y = self.bn2(self.conv_h2(F.relu(self.conv_v2(y))))
        return F.relu(self.dropout(y) + x)


class UpsamplerBlock(nn.Module):
    """``B x Cin x h x w`` -> ``B x Cout x 2h x 2w``: 3x3 stride-2 transposed conv (bias), BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=True)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


# ------------------------------------------------------------------------------ variant table

#: encoder stages (paper Table 1, layers 2-16): (out channels, [(dropout, dilation) per nb-1D])
ENCODER_STAGES = (
    (64, [(0.03, 1)] * 5),
    (128, [(0.3, d) for d in (2, 4, 8, 16)] * 2),
)

#: decoder stages (layers 17-22): (out channels, number of nb-1D blocks; no dropout)
DECODER_STAGES = ((64, 2), (16, 2))


# -------------------------------------------------------------------------------------- model


class ERFNetEncoder(nn.Module):
    """``B x 3 x H x W`` -> ``B x 128 x H/8 x W/8``; ``classifier`` maps that to class scores."""

    def __init__(self, num_classes: int, classifier: bool = True) -> None:
        super().__init__()
        self.initial = DownsamplerBlock(3, 16)
        cin = 16
        for i, (cout, blocks) in enumerate(ENCODER_STAGES, start=1):
            layers = [DownsamplerBlock(cin, cout)] + [NonBottleneck1D(cout, p, d) for p, d in blocks]
            self.add_module(f"stage{i}", nn.Sequential(*layers))
            cin = cout
        self.out_channels = cin
        # 1x1 classifier used only for encoder-only (stage-one) training; part of the authors' code
        self.classifier = nn.Conv2d(cin, num_classes, 1, bias=True) if classifier else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(self.initial(x)))


class ERFNetDecoder(nn.Module):
    """``B x 128 x H/8 x W/8`` -> ``B x K x H x W``; ``head`` is a 2x2 stride-2 transposed conv."""

    def __init__(self, num_classes: int, cin: int = 128) -> None:
        super().__init__()
        for i, (cout, n) in enumerate(DECODER_STAGES, start=1):
            layers = [UpsamplerBlock(cin, cout)] + [NonBottleneck1D(cout, 0.0, 1) for _ in range(n)]
            self.add_module(f"stage{i}", nn.Sequential(*layers))
            cin = cout
        self.head = nn.ConvTranspose2d(cin, num_classes, 2, stride=2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(x)))


class ERFNet(SegmentationModel):
    """ERFNet. Input ``B x 3 x H x W`` RGB in [0, 1]; output ``B x num_classes x H x W`` logits.

    ``forward(x, encoder_only=True)`` returns the encoder classifier's ``B x K x ceil(H/8) x
    ceil(W/8)`` scores (the authors train the encoder this way first); ``encoder_classifier=False``
    leaves that 1x1 classifier out (a model that is only ever trained or run end to end).
    ``mean``/``std`` set an input normalisation inside the model (the authors' code uses none).
    """

    size_divisor = 8
    output_stride = 8

    def __init__(
        self,
        num_classes: int,
        encoder_classifier: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std)
        self.encoder = ERFNetEncoder(num_classes, classifier=encoder_classifier)
        self.decoder = ERFNetDecoder(num_classes, self.encoder.out_channels)

    def forward_padded(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        feats = self.encoder(x)
        if encoder_only:
            if self.encoder.classifier is None:
                raise RuntimeError(
                    "this ERFNet was built with encoder_classifier=False, so it has no encoder-only output; "
                    "rebuild it with encoder_classifier=True to train one"
                )
            return self.encoder.classifier(feats)
        return self.decoder(feats)


# ------------------------------------------------------------------------ registered builders


@register_model(
    "erfnet",
    family="erfnet",
    paper=PAPER,
    description="ERFNet (Romera et al. 2017), layout of the authors' PyTorch code",
    # The ERFNet documents in ../shared give no count; the ESSNet thesis re-measured ERFNet as its baseline
    # (Tables 3.2 and 3.5; its §4.3 text says "0.72 million", which contradicts both, docs/models.md §4).
    published={
        "params": 2_038_448,
        "gmacs": 27.705,
        "flops_convention": "macs",
        "miou": 70.45,
        "dataset": "cityscapes-val",
        "size": (512, 1024),
        "source": "ESSNet thesis, Tables 3.2 and 3.5 (ERFNet baseline, the thesis' own count)",
    },
    default_size=(512, 1024),
)
def erfnet(num_classes: int = 19, **kwargs) -> ERFNet:
    """ERFNet as in the authors' PyTorch code."""
    return ERFNet(num_classes, **kwargs)


# --------------------------------------------------------------------------------- converters

_NB_NAMES = {
    "conv3x1_1": "conv_v1",
    "conv1x3_1": "conv_h1",
    "conv3x1_2": "conv_v2",
    "conv1x3_2": "conv_h2",
    "bn1": "bn1",
    "bn2": "bn2",
}


def _layer_index_map() -> dict[tuple[str, int], str]:
    """``("encoder", 6)`` -> ``"encoder.stage2.0"``: the authors' flat ``layers`` lists onto stages."""
    out: dict[tuple[str, int], str] = {}
    for part, stages in (
        ("encoder", [len(b) + 1 for _, b in ENCODER_STAGES]),
        ("decoder", [n + 1 for _, n in DECODER_STAGES]),
    ):
        flat = 0
        for s, size in enumerate(stages, start=1):
            for j in range(size):
                out[(part, flat)] = f"{part}.stage{s}.{j}"
                flat += 1
    return out


_LAYERS = _layer_index_map()


def _eromera_key(key: str) -> str | None:
    if key.startswith("encoder.initial_block."):
        return "encoder.initial." + key[len("encoder.initial_block.") :]
    if key.startswith("encoder.output_conv."):
        return "encoder.classifier." + key[len("encoder.output_conv.") :]
    if key.startswith("decoder.output_conv."):
        return "decoder.head." + key[len("decoder.output_conv.") :]
    m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.([A-Za-z0-9_]+)\.(.*)$", key)
    if not m or (m[1], int(m[2])) not in _LAYERS:
        return None
    name = _NB_NAMES.get(m[3], m[3])  # down/upsampler blocks keep conv/bn
    return f"{_LAYERS[(m[1], int(m[2]))]}.{name}.{m[4]}"


@register_converter("erfnet-eromera")
def convert_erfnet_eromera(sd: dict[str, torch.Tensor], num_classes: int | None = None, **kw) -> Converted:
    """Eromera/erfnet_pytorch ``state_dict`` (``Net``) -> rtseg ``erfnet``.

    ``num_classes`` is read from ``decoder.output_conv.weight`` (``16 x K x 2 x 2``) when not given.
    A ``module.`` (DataParallel) prefix is stripped. Weights saved without the encoder's
    ``output_conv`` (some releases drop it) convert with ``encoder_classifier=False``.
    """
    if kw:
        raise TypeError(f"erfnet-eromera converter got unexpected options {sorted(kw)}")
    sd = strip_prefix(sd)
    head = sd.get("decoder.output_conv.weight")
    if head is None or head.dim() != 4 or tuple(head.shape[::2]) != (16, 2):
        raise CheckpointError(
            "not an Eromera ERFNet state dict: no 16 x K x 2 x 2 'decoder.output_conv.weight'"
        )
    inferred = int(head.shape[1])
    if num_classes is not None and num_classes != inferred:
        raise CheckpointError(
            f"--num-classes {num_classes} does not match the weights' {inferred} output channels"
        )
    dropped = [k for k in sd if _eromera_key(k) is None]
    if dropped:
        raise CheckpointError(f"erfnet-eromera: keys with no rtseg counterpart: {dropped[:4]}")
    kwargs = {"num_classes": inferred}
    if "encoder.output_conv.weight" not in sd:
        kwargs["encoder_classifier"] = False
    target = create_model("erfnet", **kwargs).state_dict()
    mapped = remap(
        sd, _eromera_key, {k: v for k, v in target.items() if k not in ("mean", "std")}, "erfnet-eromera"
    )
    # the authors' code feeds ToTensor() images (pixel / 255, no mean/std): identity normalisation
    mapped["mean"], mapped["std"] = target["mean"], target["std"]
    return Converted(
        model="erfnet",
        model_kwargs=kwargs,
        state_dict=mapped,
        meta={"notes": "Eromera/erfnet_pytorch weights; input RGB pixel/255 without normalisation"},
    )
