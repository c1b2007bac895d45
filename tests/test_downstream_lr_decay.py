"""Layer-wise lr decay groups as the official util/lr_decay.py."""
import pytest
import torch

from fastmae.downstream.classifier import VisionTransformer
from fastmae.downstream.lr_decay import layer_id, param_groups_lrd
from fastmae.train.schedule import set_lr


def _model(global_pool=True):
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4,
                             num_classes=5, global_pool=global_pool)


def test_layer_ids():
    assert layer_id("cls_token", 4) == 0 and layer_id("pos_embed", 4) == 0
    assert layer_id("patch_embed.proj.weight", 4) == 0
    assert layer_id("blocks.0.attn.qkv.weight", 4) == 1
    assert layer_id("blocks.2.mlp.fc2.bias", 4) == 3
    assert layer_id("fc_norm.weight", 4) == 4 and layer_id("head.bias", 4) == 4


@pytest.mark.parametrize("global_pool", [True, False])
def test_groups_scales_and_weight_decay(global_pool):
    model = _model(global_pool)
    groups = param_groups_lrd(model, 0.05, model.no_weight_decay(), layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    params = dict(model.named_parameters())
    assert set(by_name) == set(params)  # every parameter exactly once
    assert sum(len(g["params"]) for g in groups) == len(params)
    num_layers = 4  # 3 blocks + 1
    for name, g in by_name.items():
        assert g["lr_scale"] == pytest.approx(0.5 ** (num_layers - layer_id(name, num_layers)))
        no_decay = params[name].ndim == 1 or name in ("cls_token", "pos_embed")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert by_name["head.weight"]["lr_scale"] == 1.0
    assert by_name["blocks.2.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.5)
    assert by_name["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.0625)
    assert by_name["blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["blocks.0.attn.qkv.bias"]["weight_decay"] == 0.0


def test_schedule_applies_scales():
    model = _model()
    opt = torch.optim.AdamW(param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.75), lr=1.0)
    set_lr(opt, 2e-3)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(2e-3 * g["lr_scale"])


def test_bad_layer_decay():
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups_lrd(_model(), layer_decay=0.0)
