"""ESSNet: ERFNet-style real-time segmentation with depthwise-separable, grouped and shuffled conv-modules.

Papers:
    N. Vallurupalli, S. Annamaneni, G. Varma, C. V. Jawahar, M. Mathew, S. Nagori, "Efficient Semantic
    Segmentation using Gradual Grouping", CVPR Workshops (Embedded Vision) 2018, arXiv:1806.08522.
    N. Vallurupalli, "On Designing Efficient Deep Neural Networks for Semantic Segmentation", MS thesis,
    IIIT Hyderabad, 2022 -- ch. 3 (conv-modules D/DGC/DGCS, ESSNet-A, ESSNet-B, final ESSNet, Fig 3.9) and
    ch. 4 (decoder study §4.1, pyramid pooling §4.2).

Family members (all take ``B x 3 x H x W`` RGB in [0, 1] and return ``B x num_classes x H x W``):
    ``essnet_b_<m>``  thesis Table 3.1: ERFNet with every encoder non-bt-1D replaced by a conv-module.
    ``essnet_a_<m>``  Table 3.3: 3 non-bt-1D + 2 conv-modules at 1/4, 4 dilated non-bt-1D + 4 conv-modules at 1/8.
    ``essnet_<m>``    final ESSNet, Fig 3.9: conv-modules in encoder and (dense) decoder, 1x1 "UPS" upsampling.
    ``essnet_<m>_{trans4x,trans8x,nodec,ppm}``  the decoder variants of §4.1 and the pyramid-pooling head of §4.2.
    ``essnet_enc_ups``  §4.1's "ESSNet-enc-UPS": ESSNet-B-D with UPS upsamplers in ERFNet's decoder.
with ``<m>`` the conv-module type: ``d`` (depthwise separable), ``dg2/dg4/dg8`` (+ grouped pointwise convs),
``dg2s/dg4s/dg8s`` (+ channel shuffle). The released Cityscapes checkpoints are ``essnet_d``, ``essnet_dg2s`` and
``essnet_dg4s`` (converter ``essnet-official``), the released ImageNet encoders those of ``essnet_dg2s`` /
``essnet_dg4s`` (converter ``essnet-official-imagenet``). ``THESIS`` holds the thesis' numbers per model;
docs/models.md §4 compares them with rtseg's counts and §6 says where the thesis leaves room and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import CheckpointError
from rtseg.models._base import SegmentationModel
from rtseg.models._essnet_blocks import BN_EPS, ConvModule, DownsamplerBlock, NonBottleneck1D, UpsamplerBlock
from rtseg.models._registry import register_model
from rtseg.models.convert import Converted, register_converter, remap, strip_prefix

__all__ = [
    "CITYSCAPES_CLASSES",
    "DECODERS",
    "ENCODERS",
    "MODULES",
    "THESIS",
    "ESSNet",
    "PyramidPooling",
    "thesis_published",
]

PAPER = (
    "Vallurupalli et al., Efficient Semantic Segmentation using Gradual Grouping, CVPRW 2018; "
    "Vallurupalli, On Designing Efficient Deep Neural Networks for Semantic Segmentation, IIIT-H thesis 2022"
)

# A layer row: (kind, out_channels, dilation, dropout probability). Kinds built by ESSNet.make_block.
Row = tuple[str, int, Any, float]


# ----------------------------------------------------------------------------------------------- blocks
class TransposedUpsample(nn.Module):
    """xF learned upsampling of §4.1: ``F x F`` stride-``F`` transposed conv -> BN -> ReLU (``H x W -> FH x FW``)."""

    def __init__(self, in_ch: int, out_ch: int, factor: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, factor, stride=factor, bias=True)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class PyramidPooling(nn.Module):
    """Pyramid pooling of thesis §4.2: ``B x C x H x W`` -> ``B x (C + len(scales)*branch_ch) x H x W``.

    Four levels "1/8x, 1/4x, 1/2x and 1x" the size of the encoder's last feature map: average pooling with
    kernel = stride = ``s`` for ``s`` in ``scales`` (8, 4, 2, 1; partial windows at the border are averaged
    over what they cover), a 1x1 conv ``C -> branch_ch`` ("reduced to 1/4 (i.e. 32)") with ReLU, bilinear back
    to ``H x W``; the levels are concatenated with the input (128 + 4*32 = 256 channels for ESSNet). The
    thesis names no BatchNorm on the levels and rtseg adds none (PSPNet has one); the x4 block after the
    concat normalises. Plain ``avg_pool2d`` exports to ONNX for any feature size.
    """

    def __init__(self, in_ch: int, branch_ch: int = 32, scales: Sequence[int] = (8, 4, 2, 1)) -> None:
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_ch, branch_ch, 1, bias=True), nn.ReLU(inplace=True)) for _ in self.scales
        )
        self.out_channels = in_ch + len(self.scales) * branch_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for s, stage in zip(self.scales, self.stages):
            p = x if s == 1 else F.avg_pool2d(x, s, stride=s, ceil_mode=True, count_include_pad=False)
            y = stage(p)
            outs.append(y if s == 1 else F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return torch.cat(outs, 1)


class ESSNetEncoder(nn.Module):
    """Initial 3->16 downsampler, then ``layers``; ``B x 3 x H x W`` -> ``B x out_ch x H/8 x W/8``.

    ``output_conv`` (1x1, ``out_ch -> num_classes``) gives the 1/8-resolution class scores of stage-one
    (encoder-only) training; it is absent when built with ``classifier=False``.
    """

    def __init__(
        self, layers: list[nn.Module], out_ch: int, num_classes: int, classifier: bool = True
    ) -> None:
        super().__init__()
        self.initial_block = DownsamplerBlock(3, 16)
        self.layers = nn.ModuleList(layers)
        self.output_conv = nn.Conv2d(out_ch, num_classes, 1, bias=True) if classifier else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial_block(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        if self.output_conv is None:
            raise RuntimeError(
                "this model was built with encoder_classifier=False (as converted released "
                "checkpoints are), so it has no encoder-only output; rebuild with "
                "encoder_classifier=True to train or run the encoder alone"
            )
        return self.output_conv(feats)


class ESSNetDecoder(nn.Module):
    """``layers`` then the transposed-conv classifier: ``B x C x H x W -> B x n x kH x kW`` (``k = out_factor``).

    The classifier is ``out_kernel x out_kernel`` with stride ``out_factor``: 2x2 stride 2 (ERFNet's, every
    ESSNet decoder), or 3x3 stride 8 for §4.1's trans8x (padding 1, output padding 7: exactly ``8H x 8W``).
    """

    def __init__(
        self, layers: list[nn.Module], in_ch: int, num_classes: int, out_factor: int, out_kernel: int | None = None
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        k = out_factor if out_kernel is None else out_kernel
        pad = 0 if k == out_factor else (k - 1) // 2
        self.output_conv = nn.ConvTranspose2d(
            in_ch, num_classes, k, stride=out_factor, padding=pad, output_padding=out_factor - k + 2 * pad,
            bias=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x)


# ------------------------------------------------------------------------------------------------ model
class ESSNet(SegmentationModel):
    """The ESSNet family: an encoder and a decoder assembled from rows of data (see ``ENCODERS``/``DECODERS``).

    Args:
        num_classes: output channels.
        encoder_cfg: encoder rows ``(kind, out_ch, dilation, dropprob)`` after the initial 3->16 downsampler.
        decoder: a key of ``DECODERS`` (``"erfnet"``, ``"ups"``, ``"trans4x"``, ``"trans8x"``, ``"nodec"``, ``"ppm"``).
        groups: groups of the encoder conv-modules' pointwise convs (1 = the thesis' D module).
        shuffle: channel shuffle inside the encoder conv-modules (DGCS).
        encoder_classifier: build the 1x1 encoder classifier used by ``encoder_only=True`` (stage-one training)
            and by the ``nodec`` decoder; the released checkpoints do not contain it.
        dropout: ``(p_quarter, p_eighth)``: spatial dropout of every encoder layer at 1/4 and at 1/8 resolution,
            replacing the rows' own values (the released DG2/DG4 code uses ``(0.1, 0.1)``, the D code and
            ERFNet ``(0.03, 0.3)``); None keeps the rows'. Dropout changes training only, never the weights.

    Input ``B x 3 x H x W`` RGB in [0, 1] (no normalisation, as the released weights expect); output
    ``B x num_classes x H x W``; ``encoder_only=True`` gives ``B x num_classes x ceil(H/8) x ceil(W/8)``.
    """

    size_divisor = 8
    output_stride = 8
    decoder_table: dict[str, Any] | None = None  # subclasses with their own decoders (WSPD-Net); None = DECODERS

    def __init__(
        self,
        num_classes: int,
        encoder_cfg: Sequence[Row],
        decoder: str = "ups",
        groups: int = 1,
        shuffle: bool = False,
        encoder_classifier: bool = True,
        dropout: Sequence[float] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std)
        if dropout is not None:
            encoder_cfg = _with_dropout(encoder_cfg, dropout)
        table = self.decoder_table if self.decoder_table is not None else DECODERS
        if decoder not in table:
            raise ValueError(f"unknown decoder {decoder!r}; choose from {', '.join(table)}")
        if decoder == "nodec" and not encoder_classifier:
            raise ValueError(
                "decoder='nodec' upsamples the encoder classifier's scores: needs encoder_classifier=True"
            )
        self.groups, self.shuffle, self.decoder_kind = groups, shuffle, decoder
        layers, ch = self._build(encoder_cfg, 16, encoder=True)
        self.encoder = ESSNetEncoder(layers, ch, num_classes, classifier=encoder_classifier)
        dec = table[decoder]
        if dec is None:  # nodec: parameter-free bilinear x8 of the encoder's class scores
            self.decoder = nn.Identity()
        else:
            rows, out_factor, out_kernel = dec
            layers, dch = self._build(rows, ch, encoder=False)
            self.decoder = ESSNetDecoder(layers, dch, num_classes, out_factor, out_kernel)

    def _build(self, rows: Sequence[Row], in_ch: int, encoder: bool) -> tuple[list[nn.Module], int]:
        layers = []
        for kind, out_ch, dilation, dropprob in rows:
            layers.append(self.make_block(kind, in_ch, out_ch, dilation, dropprob, encoder))
            in_ch = getattr(layers[-1], "out_channels", out_ch)
        return layers, in_ch

    def make_block(
        self, kind: str, in_ch: int, out_ch: int, dilation: Any, dropprob: float, encoder: bool
    ) -> nn.Module:
        """Build one row. Only the encoder's conv-modules are grouped/shuffled (the decoder's are dense)."""
        same = kind in ("nb1d", "cm")
        if same and in_ch != out_ch:
            raise ValueError(f"{kind} rows keep the channel count, got {in_ch}->{out_ch}")
        if kind == "down":
            return DownsamplerBlock(in_ch, out_ch)
        if kind == "nb1d":
            return NonBottleneck1D(out_ch, dropprob, dilation)
        if kind == "cm":
            g, s = (self.groups, self.shuffle) if encoder else (1, False)
            return ConvModule(out_ch, dropprob, dilation, groups=g, shuffle=s)
        if kind == "up3":
            return UpsamplerBlock(in_ch, out_ch, kernel_size=3)
        if kind == "up1":
            return UpsamplerBlock(in_ch, out_ch, kernel_size=1)
        if kind == "upx4":
            return TransposedUpsample(in_ch, out_ch, 4)
        if kind == "ppm":
            return PyramidPooling(in_ch, out_ch)
        raise ValueError(f"unknown layer kind {kind!r}")

    def export_form(self) -> ESSNet:
        """Fold every DGCS channel shuffle into the dense form of the pointwise conv before it
        (:meth:`ConvModule.fold_shuffle`): identical outputs; OpenVINO int8 ``essnet_dg2s`` at 512x1024
        67 -> 58 ms in an interleaved A/B (ONNX Runtime / PyTorch fp32 unchanged), docs/deploy.md."""
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.fold_shuffle()
        return self

    def forward_padded(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        feats = self.encoder(x)
        if encoder_only:
            return self.encoder.classify(feats)
        if self.decoder_kind == "nodec":
            return F.interpolate(
                self.encoder.classify(feats), scale_factor=8, mode="bilinear", align_corners=False
            )
        return self.decoder(feats)


# ------------------------------------------------------------------------------------------ variant table
def _with_dropout(rows: Sequence[Row], dropout: Sequence[float]) -> list[Row]:
    """``rows`` with the dropout of every non-downsampler row at 1/4 and 1/8 resolution replaced."""
    if len(dropout) != 2 or not all(0.0 <= float(p) < 1.0 for p in dropout):
        raise ValueError(f"dropout must be (p at 1/4, p at 1/8), each in [0, 1), got {dropout!r}")
    out, stage = [], 1  # after the initial downsampler the features are at 1/2 resolution
    for kind, ch, dil, p in rows:
        if kind == "down":
            stage += 1
        elif stage in (2, 3):
            p = float(dropout[stage - 2])
        out.append((kind, ch, dil, p))
    return out


def _dilated(kind: str, dilations: Sequence[int]) -> list[Row]:
    return [(kind, 128, d, 0.3) for d in dilations]


_DIL = (2, 4, 8, 16)
_STEM: list[Row] = [("down", 64, 1, 0.0)]

#: Encoders after the initial 3->16 downsampler (dropout 0.03 at 1/4 and 0.3 at 1/8, as in ERFNet and the
#: author's ESSNet-D code; builders of the grouped final ESSNet pass the DG code's 0.1, see ``_RECIPE_DROPOUT``).
#: ESSNet-B: Table 3.1, every non-bt-1D of ERFNet's encoder replaced by a conv-module. ESSNet-A: Table 3.3,
#: "3-5 3 x Non-bt-1D" then "5-7 2 x Conv-module 64" at 1/4 (the table's "128" on the non-bt-1D row is a
#: typo: the row is at 256x128 before the 64->128 downsampler), 4 dilated non-bt-1D, 4 dilated conv-modules.
#: Table 3.4's DG2-DG4 / DG4-DG8 deltas (36,864 / 18,432 params, 0.403 / 0.201 GFLOPs) count exactly
#: these six grouped modules (4 at 128 + 2 at 64); docs/models.md §4.
ENCODERS: dict[str, list[Row]] = {
    "b": _STEM + [("cm", 64, 1, 0.03)] * 5 + [("down", 128, 1, 0.0)] + _dilated("cm", _DIL * 2),
    "a": _STEM
    + [("nb1d", 64, 1, 0.03)] * 3
    + [("cm", 64, 1, 0.03)] * 2
    + [("down", 128, 1, 0.0)]
    + _dilated("nb1d", _DIL)
    + _dilated("cm", _DIL),
}

#: Decoders from the 128-channel 1/8 features: (rows, stride of the final transposed-conv classifier, its
#: kernel or None for kernel = stride), or None for bilinear x8 of the encoder classifier's scores.
DECODERS: dict[str, tuple[list[Row], int, int | None] | None] = {
    # ERFNet's decoder (ESSNet-A/B, Table 3.1 layers 17-23): 3x3 transposed-conv upsamplers, non-bt-1D layers.
    "erfnet": (
        [
            ("up3", 64, 1, 0.0),
            ("nb1d", 64, 1, 0.0),
            ("nb1d", 64, 1, 0.0),
            ("up3", 16, 1, 0.0),
            ("nb1d", 16, 1, 0.0),
            ("nb1d", 16, 1, 0.0),
        ],
        2,
        None,
    ),
    # §4.1 "ESSNet-enc-UPS": "optimizing only the upsampling block in ESSNetB-D decoder" -- ERFNet's decoder
    # with the 1x1 stride-2 UPS upsamplers of the final ESSNet.
    "erfnet_ups": (
        [
            ("up1", 64, 1, 0.0),
            ("nb1d", 64, 1, 0.0),
            ("nb1d", 64, 1, 0.0),
            ("up1", 16, 1, 0.0),
            ("nb1d", 16, 1, 0.0),
            ("nb1d", 16, 1, 0.0),
        ],
        2,
        None,
    ),
    # Final ESSNet (Fig 3.9): 1x1 "UPS" upsamplers and dense conv-modules.
    "ups": (
        [
            ("up1", 64, 1, 0.0),
            ("cm", 64, 1, 0.0),
            ("cm", 64, 1, 0.0),
            ("up1", 16, 1, 0.0),
            ("cm", 16, 1, 0.0),
            ("cm", 16, 1, 0.0),
        ],
        2,
        None,
    ),
    # §4.1: "two deconvolution operations, one with a upsampling factor of 4 followed by the two proposed
    # convolutional layers and the final deconvolution layer": 4x4 stride-4 block 128->16, 2 dense D modules.
    "trans4x": ([("upx4", 16, 1, 0.0), ("cm", 16, 1, 0.0), ("cm", 16, 1, 0.0)], 2, None),
    # §4.1: "only one upsampling operation with an upsampling rate of 8": a 3x3 stride-8 transposed conv
    # straight to the classes (ERFNet's deconvolution kernel; Table 4.1's 0.19 GFLOPs fix the 3x3).
    "trans8x": ([], 8, 3),
    # §4.1: no decoder, bilinear x8.
    "nodec": None,
    # §4.2: pyramid pooling (levels 1/8, 1/4, 1/2, 1 of the features, 128->32 each, concat = 256), then
    # Table 3.1's decoder without layers 17-19: the upsampling block to 16 channels at stride 4 (the x4 block
    # of trans4x), layers 21-22 (2 x non-bt-1D at 16) and the final deconvolution.
    "ppm": (
        [("ppm", 32, 1, 0.0), ("upx4", 16, 1, 0.0), ("nb1d", 16, 1, 0.0), ("nb1d", 16, 1, 0.0)],
        2,
        None,
    ),
}

#: Conv-module types of thesis ch. 3: name -> (groups, shuffle).
MODULES: dict[str, tuple[int, bool]] = {
    "d": (1, False),
    "dg2": (2, False),
    "dg4": (4, False),
    "dg8": (8, False),
    "dg2s": (2, True),
    "dg4s": (4, True),
    "dg8s": (8, True),
}

_MODULE_WORDS = {
    "d": "depthwise-separable (D)",
    "dg": "D + {g}-group pointwise (DGC)",
    "dgs": "D + {g}-group pointwise + shuffle (DGCS)",
}


def _module_words(m: str) -> str:
    g, s = MODULES[m]
    return _MODULE_WORDS["d"] if g == 1 else _MODULE_WORDS["dgs" if s else "dg"].format(g=g)


# ------------------------------------------------------------------------------------ registered builders
def _make_builder(encoder: str, decoder: str, module: str, dropout: tuple[float, float] | None = None):
    groups, shuffle = MODULES[module]

    def builder(num_classes: int = 19, **kwargs: Any) -> ESSNet:
        kwargs.setdefault("dropout", dropout)
        return ESSNet(
            num_classes, ENCODERS[encoder], decoder=decoder, groups=groups, shuffle=shuffle, **kwargs
        )

    return builder


_RELEASED = {  # numbers measured on the released checkpoints and their training logs (../shared README)
    "essnet_d": {"params": 421_056, "miou": 68.39, "file": "essnet_d_cityscapes.pth"},
    "essnet_dg2s": {"params": 269_504, "miou": 66.10, "file": "essnet_dg2_cityscapes.pth"},
    "essnet_dg4s": {"params": 193_728, "miou": 63.80, "file": "essnet_dg4_cityscapes.pth"},
}

#: The thesis' own numbers: name -> (table, Cityscapes val mIoU, params, "GFLOPs" = multiply-accumulates at
#: 1x3x512x1024; None where the thesis gives none). Read in ../shared/papers/004_*.txt; docs/models.md §4 sets
#: them beside rtseg's counts and explains each difference (and the thesis' inconsistent rows).
THESIS: dict[str, tuple[str, float, int | None, float | None]] = {
    "essnet_b_d": ("Table 3.2", 68.55, 683_568, 10.597),
    "essnet_b_dg2": ("Table 3.2", 65.35, 395_568, 8.852),
    "essnet_b_dg4": ("Table 3.2", 61.42, 319_792, 7.980),
    "essnet_b_dg8": ("Table 3.2", 59.15, 281_904, 7.543),
    "essnet_b_dg2s": ("Table 3.2", 65.36, 395_568, 8.852),
    "essnet_b_dg4s": ("Table 3.2", 61.27, 319_792, 7.980),
    "essnet_b_dg8s": ("Table 3.2", 59.89, 281_904, 7.543),
    "essnet_a_d": ("Table 3.4", 69.26, 1_291_648, 19.025),
    "essnet_a_dg2": ("Table 3.4", 69.71, 1_238_960, 18.998),
    "essnet_a_dg4": ("Table 3.4", 68.98, 1_202_096, 18.595),
    "essnet_a_dg8": ("Table 3.4", 69.57, 1_183_664, 18.394),
    "essnet_a_dg2s": ("Table 3.4", 70.62, 1_238_960, 18.998),
    "essnet_a_dg4s": ("Table 3.4", 69.59, 1_202_096, 18.595),
    "essnet_a_dg8s": ("Table 3.4", 69.57, 1_183_664, 18.394),
    # Table 3.5 names the grouped rows "ESSNet-DG2/DG4"; their mIoUs are those of the released shuffled
    # checkpoints (essnet_dg{2,4}_cityscapes.pth, 66.10 / 63.80), so the rows are recorded on the DGCS models.
    "essnet_d": ("Table 3.5", 68.39, 431_312, 5.773),
    "essnet_dg2s": ("Table 3.5", 66.10, 279_760, 4.029),
    "essnet_dg4s": ("Table 3.5", 63.80, 203_984, 3.156),
    "essnet_enc_ups": ("Table 4.1", 66.51, None, 7.41),
    "essnet_d_trans4x": ("Table 4.1", 62.12, None, 5.31),
    "essnet_d_trans8x": ("Table 4.1", 60.39, None, 4.89),
    "essnet_d_nodec": ("Table 4.1", 57.33, None, 4.70),
    "essnet_dg2_ppm": ("§4.2 text", 65.0, None, None),
    "essnet_dg4_ppm": ("§4.2 text", 62.7, None, None),
    "essnet_dg8_ppm": ("§4.2 text", 59.4, None, None),
}
#: Table 3.6: frames per second on an Nvidia GTX 1080Ti at 512x1024.
_THESIS_FPS = {"essnet_d": 47, "essnet_dg2s": 49, "essnet_dg4s": 49}


def thesis_published(name: str) -> dict[str, Any]:
    """The registry's ``published`` dict of ``name``: the thesis' numbers, and the released checkpoint's."""
    pub: dict[str, Any] = {}
    if name in THESIS:
        table, miou, params, gmacs = THESIS[name]
        pub = {"miou": miou, "dataset": "cityscapes-val", "size": (512, 1024), "source": f"ESSNet thesis, {table}"}
        if params is not None:
            pub["params"] = params
        if gmacs is not None:
            pub["gmacs"] = gmacs
            pub["flops_convention"] = "macs"  # the thesis' "GFLOPs" are multiply-accumulates (docs/models.md §2)
        if name in _THESIS_FPS:
            pub["fps"] = _THESIS_FPS[name]
            pub["fps_device"] = "Nvidia GTX 1080Ti (Table 3.6)"
    r = _RELEASED.get(name)
    if r is not None:
        pub["released"] = {
            "params": r["params"],
            "params_config": {"num_classes": 20, "encoder_classifier": False},
            "miou": r["miou"],
            "dataset": "cityscapes-val",
            "size": (512, 1024),
            "source": f"released checkpoint {r['file']} and its training log (best val epoch)",
        }
    return pub


#: Encoder dropout ``(at 1/4, at 1/8)`` per final-ESSNet module when the released code fixes it: the DG2/DG4
#: code (DGstar_model.py) uses 0.1 at both; the D code (imgnet_ups.py) 0.03 / 0.3, the rows' default.
_RECIPE_DROPOUT = {m: (0.1, 0.1) for m in MODULES if m != "d"}

_FAMILY_ROWS = [  # (name prefix, encoder, decoder, description)
    (
        "essnet_b_",
        "b",
        "erfnet",
        "ESSNet-B (thesis Table 3.1): conv-modules everywhere in ERFNet's encoder, ERFNet decoder",
    ),
    (
        "essnet_a_",
        "a",
        "erfnet",
        (
            "ESSNet-A (thesis Table 3.3): 3 non-bt-1D + 2 conv-modules at 1/4, 4 dilated non-bt-1D + 4 dilated "
            "conv-modules at 1/8, ERFNet decoder"
        ),
    ),
    ("essnet_", "b", "ups", "ESSNet (thesis Fig 3.9): conv-module encoder and decoder, 1x1 UPS upsampling"),
]
_DECODER_ROWS = [  # (suffix, decoder, description)
    ("_trans4x", "trans4x", "ESSNet encoder + 4x4 stride-4 block, 2 conv-modules, 2x2 classifier (thesis §4.1)"),
    ("_trans8x", "trans8x", "ESSNet encoder + one 3x3 stride-8 transposed-conv classifier (thesis §4.1)"),
    ("_nodec", "nodec", "ESSNet encoder + bilinear x8 of the encoder scores, no decoder (thesis §4.1)"),
    ("_ppm", "ppm", "ESSNet encoder + pyramid pooling, x4 block, 2 non-bt-1D, 2x2 classifier (thesis §4.2)"),
]

for _m in MODULES:
    for _prefix, _enc, _dec, _desc in _FAMILY_ROWS:
        _name = f"{_prefix}{_m}"
        _drop = _RECIPE_DROPOUT.get(_m) if _prefix == "essnet_" else None
        register_model(
            _name,
            family="essnet",
            paper=PAPER,
            description=f"{_desc}; {_module_words(_m)}",
            published=thesis_published(_name),
            default_size=(512, 1024),
        )(_make_builder(_enc, _dec, _m, _drop))
    for _suffix, _dec, _desc in _DECODER_ROWS:
        _name = f"essnet_{_m}{_suffix}"
        register_model(
            _name,
            family="essnet",
            paper=PAPER,
            description=f"{_desc}; {_module_words(_m)}",
            published=thesis_published(_name),
            default_size=(512, 1024),
        )(_make_builder("b", _dec, _m))

register_model(
    "essnet_enc_ups",
    family="essnet",
    paper=PAPER,
    description="ESSNet-enc-UPS (thesis §4.1, Table 4.1): ESSNet-B-D with the ERFNet decoder's upsamplers "
    "replaced by 1x1 UPS blocks",
    published=thesis_published("essnet_enc_ups"),
    default_size=(512, 1024),
)(_make_builder("b", "erfnet_ups", "d"))


# ------------------------------------------------------------------------------------------ converter
#: Cityscapes trainId order (0..18). The released checkpoints have a 20th output, the void/ignore class the
#: author trained as class 19 (ERFNet's Cityscapes recipe); rtseg names it "void".
CITYSCAPES_CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]


def _some_keys(sd: dict[str, torch.Tensor], n: int = 3) -> str:
    keys = list(sd)
    return ", ".join(repr(k) for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "") or "no keys"


def _encoder_groups(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """Group count of an ESSNet encoder from its pointwise weights ``C x C/g x 1 x 1`` (keys under ``prefix``)."""
    first = f"{prefix}layers.1.conv1L_1.weight"
    pw = [k for k in sd if k.startswith(f"{prefix}layers.") and k.endswith("conv1L_1.weight")]
    if not pw:
        raise CheckpointError(f"not an ESSNet checkpoint: key {first!r} missing (found {_some_keys(sd)})")
    bad = [(k, tuple(sd[k].shape)) for k in pw if sd[k].dim() != 4 or tuple(sd[k].shape[2:]) != (1, 1)]
    if bad:
        raise CheckpointError(f"{bad[0][0]}: expected a C x C/g x 1 x 1 pointwise weight, found shape {bad[0][1]}")
    groups = {int(sd[k].shape[0]) // int(sd[k].shape[1]) for k in pw}
    if len(groups) != 1:
        raise CheckpointError(f"encoder pointwise convs disagree on the group count: {sorted(groups)}")
    (g,) = groups
    if g != 1 and f"dg{g}s" not in MODULES:
        raise CheckpointError(f"{first}: shape {tuple(sd[first].shape)} means {g} groups; ESSNet has 1, 2, 4 or 8")
    return g


@register_converter("essnet-official")
def convert_essnet_official(sd: dict[str, torch.Tensor], **kw: Any) -> Converted:
    """Released ESSNet state dict (``module.``-prefixed, DataParallel) -> ``essnet_dg{g}s`` (or ``essnet_d``).

    The group count is read from the encoder's pointwise weights (``C x C/g x 1 x 1``), the class count from
    the output transposed conv. The checkpoint has no encoder classifier, so the model is built with
    ``encoder_classifier=False``. Input convention of these weights: RGB in [0, 1], no mean/std.
    """
    if kw:
        raise TypeError(f"essnet-official converter takes no options, got {sorted(kw)}")
    sd = strip_prefix(sd, "module.")
    if "decoder.output_conv.weight" not in sd:
        hint = (
            "; this is an ImageNet-pretrained encoder: use --source essnet-official-imagenet"
            if any(k.startswith("features.encoder.") for k in sd)
            else ""
        )
        raise CheckpointError(
            f"not an ESSNet segmentation checkpoint: key 'module.decoder.output_conv.weight' missing "
            f"(found {_some_keys(sd)}){hint}"
        )
    g = _encoder_groups(sd, "encoder.")
    name = "essnet_d" if g == 1 else f"essnet_dg{g}s"  # grouped releases were trained with channel shuffle
    num_classes = int(sd["decoder.output_conv.weight"].shape[1])
    kwargs = {"num_classes": num_classes, "encoder_classifier": False}
    target = ESSNet(num_classes, ENCODERS["b"], "ups", groups=g, shuffle=g > 1, encoder_classifier=False)
    # Released keys already use rtseg's names; BatchNorm's num_batches_tracked may be absent (old PyTorch).
    tsd = {
        k: v
        for k, v in target.state_dict().items()
        if not k.endswith("num_batches_tracked") and k not in ("mean", "std")
    }
    out = remap(sd, lambda k: None if k.endswith("num_batches_tracked") else k, tsd, "essnet-official")
    full = target.state_dict()
    for k, v in full.items():  # fill the buffers the foreign file cannot have
        out.setdefault(k, v)
    if num_classes == 20:
        class_names = CITYSCAPES_CLASSES + ["void"]
    elif num_classes == 19:
        class_names = list(CITYSCAPES_CLASSES)
    else:
        class_names = None
    meta: dict[str, Any] = {
        "dataset": "cityscapes",
        "input_convention": "RGB float in [0, 1] (pixel / 255), no mean/std normalisation; trained at 512x1024",
        "notes": "20th output channel is the void class (trainId 255 remapped to 19 during training)"
        if num_classes == 20
        else "",
    }
    if class_names is not None:
        meta["class_names"] = class_names
    return Converted(model=name, model_kwargs=kwargs, state_dict=out, meta=meta)


@register_converter("essnet-official-imagenet")
def convert_essnet_official_imagenet(
    sd: dict[str, torch.Tensor], num_classes: int = 20, seed: int = 0, **kw: Any
) -> Converted:
    """The author's ImageNet-pretrained ESSNet encoder -> ``essnet_dg{g}s`` whose ``encoder`` holds it.

    The file (``essnet_dg{2,4}_imagenet_encoder.pth.tar``: ``state_dict`` with ``module.features.encoder.*``
    and the ImageNet head ``module.classifier.linear``, 128 -> 1000) is the initialisation of the released
    Cityscapes models (thesis §3.4.2, "pretrained approach"). The encoder keys map one to one onto rtseg's
    ``encoder.*``; the ImageNet head is dropped; the decoder is freshly initialised (``torch.manual_seed(seed)``)
    and the checkpoint's meta says so, so ``rtseg train ... init=OUT.pt`` starts from the pretrained encoder.
    Built without the encoder classifier (the file has none). The encoder was trained on ImageNet-normalised
    input; the author's segmentation training fed it pixel / 255 (no mean/std), which the model keeps.
    """
    if kw:
        raise TypeError(f"essnet-official-imagenet converter takes only num_classes and seed, got {sorted(kw)}")
    sd = strip_prefix(sd, "module.")
    if not any(k.startswith("features.encoder.") for k in sd):
        hint = (
            "; this is a segmentation checkpoint: use --source essnet-official"
            if "decoder.output_conv.weight" in sd
            else ""
        )
        raise CheckpointError(
            "not an ESSNet ImageNet encoder: key 'module.features.encoder.initial_block.conv.weight' missing "
            f"(found {_some_keys(sd)}){hint}"
        )
    head = sd.get("classifier.linear.weight")
    if head is None:
        raise CheckpointError(
            "not an ESSNet ImageNet encoder: key 'module.classifier.linear.weight' (128 -> 1000 head) missing"
        )
    if tuple(head.shape) != (1000, 128):
        raise CheckpointError(f"classifier.linear.weight: expected shape (1000, 128), found {tuple(head.shape)}")
    g = _encoder_groups(sd, "features.encoder.")
    if g == 1:
        raise CheckpointError(
            "features.encoder.layers.1.conv1L_1.weight: a dense (1-group) encoder; the released ImageNet "
            "encoders are grouped (2 or 4 groups) and shuffled"
        )
    name = f"essnet_dg{g}s"
    with torch.random.fork_rng(devices=[]):  # a seeded decoder without touching the caller's RNG
        torch.manual_seed(seed)
        target = ESSNet(num_classes, ENCODERS["b"], "ups", groups=g, shuffle=True, encoder_classifier=False)
    full = target.state_dict()
    enc_target = {
        k: v for k, v in full.items() if k.startswith("encoder.") and not k.endswith("num_batches_tracked")
    }
    enc = remap(
        {k: v for k, v in sd.items() if k.startswith("features.encoder.")},
        lambda k: None if k.endswith("num_batches_tracked") else k[len("features.") :],
        enc_target,
        "essnet-official-imagenet",
    )
    out = {**full, **enc}
    meta: dict[str, Any] = {
        "pretrained": {
            "what": "encoder only: the author's ImageNet-pretrained ESSNet encoder (thesis §3.4.2)",
            "imagenet_head": "module.classifier.linear (128 -> 1000) dropped",
            "decoder": f"freshly initialised (torch.manual_seed({seed})), not trained",
        },
        "input_convention": "RGB float in [0, 1] (pixel / 255), no mean/std, as the author's Cityscapes "
        "training fed this encoder (its ImageNet training used ImageNet mean/std)",
    }
    if num_classes == 20:
        meta["class_names"] = CITYSCAPES_CLASSES + ["void"]
    return Converted(
        model=name,
        model_kwargs={"num_classes": num_classes, "encoder_classifier": False},
        state_dict=out,
        meta=meta,
    )
