"""ESSNet: ERFNet-style real-time segmentation with depthwise-separable, grouped and shuffled conv-modules.

Papers:
    N. Vallurupalli, S. Annamaneni, G. Varma, C. V. Jawahar, M. Mathew, S. Nagori, "Efficient Semantic
    Segmentation using Gradual Grouping", CVPR Workshops (Embedded Vision) 2018, arXiv:1806.08522.
    N. Vallurupalli, "On Designing Efficient Deep Neural Networks for Semantic Segmentation", MS thesis,
    IIIT Hyderabad, 2022 -- ch. 3 (conv-modules D/DGC/DGCS, ESSNet-A, ESSNet-B, final ESSNet, Fig 3.9) and
    ch. 4 (decoder study §4.1, pyramid pooling §4.2).

Family members (all take ``B x 3 x H x W`` RGB in [0, 1] and return ``B x num_classes x H x W``):
    ``essnet_b_<m>``  thesis Table 3.1: ERFNet with every encoder non-bt-1D replaced by a conv-module.
    ``essnet_a_<m>``  Table 3.3 / Fig 3.5: selective -- non-bt-1D early and in the first dilated group.
    ``essnet_<m>``    final ESSNet, Fig 3.9: conv-modules in encoder and (dense) decoder, 1x1 "UPS" upsampling.
    ``essnet_<m>_{trans4x,trans8x,nodec,ppm}``  the decoder variants of §4.1 and the pyramid-pooling head of §4.2.
with ``<m>`` the conv-module type: ``d`` (depthwise separable), ``dg2/dg4/dg8`` (+ grouped pointwise convs),
``dg2s/dg4s/dg8s`` (+ channel shuffle). The released Cityscapes checkpoints are ``essnet_dg2s`` and
``essnet_dg4s`` (converter ``essnet-official`` below). Where this file reads an ambiguous thesis passage,
docs/models.md (section 6) says how and why.
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

__all__ = ["CITYSCAPES_CLASSES", "DECODERS", "ENCODERS", "MODULES", "ESSNet", "PyramidPooling"]

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


def _adaptive_avg_pool_exportable(x: torch.Tensor, bins: int) -> torch.Tensor:
    # Same cells as F.adaptive_avg_pool2d (start=floor(i*H/b), end=ceil((i+1)*H/b)) written as slices, because
    # the ONNX exporter only supports adaptive pooling when the bin count divides the input size.
    h, w = int(x.shape[-2]), int(x.shape[-1])
    rows = []
    for i in range(bins):
        h0, h1 = (i * h) // bins, -((-(i + 1) * h) // bins)
        cols = [
            x[..., h0:h1, (j * w) // bins : -((-(j + 1) * w) // bins)].mean(dim=(-2, -1), keepdim=True)
            for j in range(bins)
        ]
        rows.append(torch.cat(cols, dim=-1))
    return torch.cat(rows, dim=-2)


class PyramidPooling(nn.Module):
    """PSPNet-style pyramid pooling (§4.2): ``B x C x H x W`` -> ``B x (C + len(bins)*branch_ch) x H x W``.

    Each level: adaptive average pool to ``b x b`` -> 1x1 conv -> ReLU -> bilinear back to ``H x W``; the
    levels are concatenated with the input (128 + 4*32 = 256 channels for ESSNet). Unlike PSPNet there is no
    BatchNorm on the pooled levels: on the 1x1 level it sees one value per channel and sample, which fails
    (batch of 1) or is noisy (small batches) in training; the x4 block after the concat normalises anyway.
    """

    def __init__(self, in_ch: int, branch_ch: int = 32, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_ch, branch_ch, 1, bias=True), nn.ReLU(inplace=True)) for _ in self.bins
        )
        self.out_channels = in_ch + len(self.bins) * branch_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        exporting = torch.onnx.is_in_onnx_export()
        outs = [x]
        for b, stage in zip(self.bins, self.stages):
            p = _adaptive_avg_pool_exportable(x, b) if exporting else F.adaptive_avg_pool2d(x, b)
            outs.append(F.interpolate(stage(p), size=size, mode="bilinear", align_corners=False))
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
    """``layers`` then a ``k x k`` stride-``k`` transposed-conv classifier: ``B x C x H x W -> B x n x kH' x kW'``."""

    def __init__(self, layers: list[nn.Module], in_ch: int, num_classes: int, out_factor: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.output_conv = nn.ConvTranspose2d(in_ch, num_classes, out_factor, stride=out_factor, bias=True)

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

    Input ``B x 3 x H x W`` RGB in [0, 1] (no normalisation, as the released weights expect); output
    ``B x num_classes x H x W``; ``encoder_only=True`` gives ``B x num_classes x ceil(H/8) x ceil(W/8)``.
    """

    size_divisor = 8
    output_stride = 8

    def __init__(
        self,
        num_classes: int,
        encoder_cfg: Sequence[Row],
        decoder: str = "ups",
        groups: int = 1,
        shuffle: bool = False,
        encoder_classifier: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std)
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
        if decoder == "nodec" and not encoder_classifier:
            raise ValueError(
                "decoder='nodec' upsamples the encoder classifier's scores: needs encoder_classifier=True"
            )
        self.groups, self.shuffle, self.decoder_kind = groups, shuffle, decoder
        layers, ch = self._build(encoder_cfg, 16, encoder=True)
        self.encoder = ESSNetEncoder(layers, ch, num_classes, classifier=encoder_classifier)
        dec = DECODERS[decoder]
        if dec is None:  # nodec: parameter-free bilinear x8 of the encoder's class scores
            self.decoder = nn.Identity()
        else:
            rows, out_factor = dec
            layers, dch = self._build(rows, ch, encoder=False)
            self.decoder = ESSNetDecoder(layers, dch, num_classes, out_factor)

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
def _dilated(kind: str, dilations: Sequence[int]) -> list[Row]:
    return [(kind, 128, d, 0.3) for d in dilations]


_DIL = (2, 4, 8, 16)
_STEM: list[Row] = [("down", 64, 1, 0.0)]

#: Encoders after the initial 3->16 downsampler (dropout 0.03 at 1/4 and 0.3 at 1/8, as in ERFNet and the
#: authors' ESSNet code). ESSNet-B (Table 3.1) replaces every non-bt-1D; ESSNet-A (Table 3.3 / Fig 3.5,
#: our reading of its garbled channel column) keeps non-bt-1D at 1/4 and in the first dilated group.
ENCODERS: dict[str, list[Row]] = {
    "b": _STEM + [("cm", 64, 1, 0.03)] * 5 + [("down", 128, 1, 0.0)] + _dilated("cm", _DIL * 2),
    "a": _STEM
    + [("nb1d", 64, 1, 0.03)] * 5
    + [("down", 128, 1, 0.0)]
    + _dilated("nb1d", _DIL)
    + _dilated("cm", _DIL),
}

#: Decoders from the 128-channel 1/8 features: (rows, stride of the final transposed-conv classifier), or
#: None for bilinear x8 of the encoder classifier's scores.
DECODERS: dict[str, tuple[list[Row], int] | None] = {
    # ERFNet's decoder (ESSNet-A/B): 3x3 transposed-conv upsamplers and non-bt-1D layers.
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
    ),
    # §4.1: one x4 transposed-conv block then the 2x2 transposed-conv classifier.
    "trans4x": ([("upx4", 16, 1, 0.0)], 2),
    # §4.1: a single 8x8 stride-8 transposed conv straight to the classes.
    "trans8x": ([], 8),
    # §4.1: no decoder, bilinear x8.
    "nodec": None,
    # §4.2: pyramid pooling (4 levels of 32 channels, concatenated to 256), x4 block, classifier.
    "ppm": ([("ppm", 32, 1, 0.0), ("upx4", 16, 1, 0.0)], 2),
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
def _make_builder(encoder: str, decoder: str, module: str):
    groups, shuffle = MODULES[module]

    def builder(num_classes: int = 19, **kwargs: Any) -> ESSNet:
        return ESSNet(
            num_classes, ENCODERS[encoder], decoder=decoder, groups=groups, shuffle=shuffle, **kwargs
        )

    return builder


_RELEASED = {  # numbers measured on the released checkpoints and their training logs (../shared README)
    "essnet_dg2s": {"params": 269_504, "miou": 66.10, "file": "essnet_dg2_cityscapes.pth"},
    "essnet_dg4s": {"params": 193_728, "miou": 63.80, "file": "essnet_dg4_cityscapes.pth"},
}


def _published(name: str) -> dict[str, Any]:
    # The thesis tables' numbers were not accessible (see docs/models.md, section 3): only what the released
    # checkpoints prove is recorded, with the configuration it holds for.
    r = _RELEASED.get(name)
    if r is None:
        return {}
    return {
        "params": r["params"],
        "params_config": {"num_classes": 20, "encoder_classifier": False},
        "miou": r["miou"],
        "dataset": "cityscapes-val",
        "size": (512, 1024),
        "source": f"released checkpoint {r['file']} and its training log (best val epoch)",
    }


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
        "ESSNet-A (thesis Table 3.3): non-bt-1D early, conv-modules in the last dilated group",
    ),
    ("essnet_", "b", "ups", "ESSNet (thesis Fig 3.9): conv-module encoder and decoder, 1x1 UPS upsampling"),
]
_DECODER_ROWS = [  # (suffix, decoder, description)
    ("_trans4x", "trans4x", "ESSNet encoder + x4 transposed-conv block and 2x2 classifier (thesis §4.1)"),
    ("_trans8x", "trans8x", "ESSNet encoder + one x8 transposed conv classifier (thesis §4.1)"),
    ("_nodec", "nodec", "ESSNet encoder + bilinear x8 of the encoder scores, no decoder (thesis §4.1)"),
    ("_ppm", "ppm", "ESSNet encoder + pyramid pooling head, x4 block and 2x2 classifier (thesis §4.2)"),
]

for _m in MODULES:
    for _prefix, _enc, _dec, _desc in _FAMILY_ROWS:
        _name = f"{_prefix}{_m}"
        register_model(
            _name,
            family="essnet",
            paper=PAPER,
            description=f"{_desc}; {_module_words(_m)}",
            published=_published(_name),
            default_size=(512, 1024),
        )(_make_builder(_enc, _dec, _m))
    for _suffix, _dec, _desc in _DECODER_ROWS:
        register_model(
            f"essnet_{_m}{_suffix}",
            family="essnet",
            paper=PAPER,
            description=f"{_desc}; {_module_words(_m)}",
            default_size=(512, 1024),
        )(_make_builder("b", _dec, _m))


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
    pw = [k for k in sd if k.startswith("encoder.layers.") and k.endswith("conv1L_1.weight")]
    if not pw or "decoder.output_conv.weight" not in sd:
        raise CheckpointError("not an ESSNet checkpoint: no encoder conv1L_1 / decoder.output_conv weights")
    groups = {int(sd[k].shape[0]) // int(sd[k].shape[1]) for k in pw}
    if len(groups) != 1:
        raise CheckpointError(f"encoder pointwise convs disagree on the group count: {sorted(groups)}")
    (g,) = groups
    name = "essnet_d" if g == 1 else f"essnet_dg{g}s"  # grouped releases were trained with channel shuffle
    if name not in ("essnet_d", *(f"essnet_{m}" for m in MODULES)):
        raise CheckpointError(f"no ESSNet variant with {g} groups")
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
