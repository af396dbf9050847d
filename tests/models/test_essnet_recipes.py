"""Per-architecture ESSNet recipes: the released code's values where it exists, the thesis text otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtseg.engine.config import load_config
from rtseg.models import create_model
from rtseg.models._essnet_blocks import BN_EPS, ConvModule, NonBottleneck1D

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _encoder_dropout(model) -> list[float]:
    return [m.dropout.p for m in model.encoder.layers if isinstance(m, (ConvModule, NonBottleneck1D))]


def test_builder_dropout_follows_the_released_code():
    # DGstar_model.py (DG2/DG4): 0.1 at 1/4 and 1/8; imgnet_ups.py (D): 0.03 / 0.3
    for name in ("essnet_dg2s", "essnet_dg4s", "essnet_dg2", "essnet_dg8s"):
        assert _encoder_dropout(create_model(name)) == [0.1] * 13
    assert _encoder_dropout(create_model("essnet_d")) == [0.03] * 5 + [0.3] * 8
    # no released code for ESSNet-A/B: ERFNet's values
    assert _encoder_dropout(create_model("essnet_b_dg2")) == [0.03] * 5 + [0.3] * 8
    assert _encoder_dropout(create_model("essnet_dg2s", dropout=(0.3, 0.3))) == [0.3] * 13
    with pytest.raises(ValueError, match="dropout"):
        create_model("essnet_d", dropout=(0.1,))


def test_batchnorm_eps_and_momentum():
    """Thesis §3.4.1: BN eps 0.001, momentum 0.1 (PyTorch's default momentum)."""
    bns = [m for m in create_model("essnet_dg2s").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == BN_EPS == 1e-3 and m.momentum == 0.1 for m in bns)


def test_released_code_recipe():
    """DG_main.py (scheduler 2) and the training logs: Adam 5e-4 / wd 1e-4, poly 0.9 per epoch, 200 epochs,
    batch 6, 512x1024 without random scaling, flip + 0-2 px shift, no vertical flip."""
    for f, model in (("essnet_dg_cityscapes.yaml", "essnet_dg2s"), ("essnet_d_cityscapes.yaml", "essnet_d")):
        c = load_config(CONFIGS / f, {})
        assert c.model == model and c.dataset == "cityscapes"
        assert (c.optimizer, c.lr, c.weight_decay) == ("adam", 5e-4, 1e-4)
        assert (c.scheduler, c.poly_power, c.poly_by_epoch, c.epochs) == ("poly", 0.9, True, 200)
        assert c.batch_size == 6 and tuple(c.crop) == (512, 1024) and tuple(c.scale) == (0.5, 0.5)
        assert (c.hflip, c.vflip, c.translate) == (0.5, 0.0, 2)
        create_model(c.model, num_classes=19, **c.model_kwargs)
    assert load_config(CONFIGS / "essnet_dg_cityscapes.yaml", {}).stages == ("full",)  # from the ImageNet encoder


def test_thesis_text_recipes():
    t = load_config(CONFIGS / "essnet_thesis_cityscapes.yaml", {})
    assert (t.weight_decay, t.scheduler, t.plateau_factor) == (2e-4, "plateau", 0.5)
    assert t.vflip > 0 and tuple(t.scale) == (0.25, 1.0)  # 0.5-2 of the 512x1024 training resolution
    assert t.model_kwargs["dropout"] == [0.3, 0.3]
    assert t.lr * t.encoder_lr_scale == pytest.approx(5e-20) and t.decoder_warmup_epochs > 0
    p = load_config(CONFIGS / "essnet_ppm_imagenet_cityscapes.yaml", {})
    assert (p.encoder_lr, p.encoder_weight_decay) == (1.25e-4, 0.5e-4)
    assert p.lr == 4 * p.encoder_lr and p.weight_decay == 4 * p.encoder_weight_decay  # "4x smaller"
