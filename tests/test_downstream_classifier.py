"""The ViT classifier built from an MAE encoder: weights land where they should, position
embeddings resize correctly, the forward pass matches the MAE encoder's."""

import pytest
import torch

from fastmae.downstream.classifier import VisionTransformer, encoder_config, load_encoder
from fastmae.downstream.pretrained import build_classifier, default_layer_decay
from fastmae.settings import CheckpointError, ConfigError
from fastmae.models.pos_embed import interpolate_pos_embed, sincos_2d

from .downstream_helpers import save_checkpoint, tiny_mae


def _vit(mae, **kw):
    return VisionTransformer(**encoder_config(mae.config), **kw)


def test_cls_features_match_mae_encoder():
    mae = tiny_mae().eval()
    vit = _vit(mae, num_classes=0, global_pool=False).eval()
    info = load_encoder(vit, mae.state_dict())
    assert info["missing"] == []
    imgs = torch.randn(3, 3, 16, 16)
    ref = mae.forward_features(imgs)  # whole image, no masking, final norm
    got = torch.full_like(ref, float("nan"))
    got.copy_(vit.norm(vit.tokens(imgs)))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vit.features(imgs, "cls"), ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vit.features(imgs, "avg"), ref[:, 1:].mean(1), rtol=1e-5, atol=1e-5)


def test_global_pool_drops_norm_and_inits_head_and_fc_norm():
    mae = tiny_mae()
    vit = _vit(mae, num_classes=5, global_pool=True)
    info = load_encoder(vit, mae.state_dict())
    assert sorted(info["missing"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert not hasattr(vit, "norm")
    torch.testing.assert_close(vit.blocks[1].mlp.fc2.weight, mae.blocks[1].mlp.fc2.weight)
    assert vit.head.weight.abs().max() < 1e-3  # tiny head init, as the official fine-tuning
    imgs = torch.randn(2, 3, 16, 16)
    tokens = mae.blocks[1](mae.blocks[0](
        torch.cat([(mae.cls_token + mae.pos_embed[:, :1]).expand(2, -1, -1),
                   mae.patch_embed(imgs) + mae.pos_embed[:, 1:]], 1)))
    ref = vit.head(torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (32,), eps=1e-6))
    torch.testing.assert_close(vit.eval()(imgs), ref, rtol=1e-5, atol=1e-6)


def test_interpolate_identity_on_same_grid():
    pos = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pos, (4, 4), (4, 4)) is pos


def test_interpolate_shape_and_cls_kept():
    pos = torch.randn(1, 1 + 4 * 6, 12)
    out = interpolate_pos_embed(pos, (4, 6), (8, 3))
    assert out.shape == (1, 1 + 24, 12)
    torch.testing.assert_close(out[:, :1], pos[:, :1])


def test_interpolate_smooth_field():
    # A smooth field over the patch centres, sampled on an 8x8 grid and resized to 12x12,
    # stays close to the same field sampled at the 12x12 centres (bicubic with a = -0.75
    # is not exact on linear functions: within ~2% of the field's range here), and a
    # constant field stays exactly constant.
    def field(g):
        ys = (torch.arange(g, dtype=torch.float64) + 0.5) / g
        yy, xx = torch.meshgrid(ys, ys, indexing="ij")
        return torch.stack([2 * xx - 1, torch.sin(3 * yy), xx * yy], -1).reshape(1, g * g, 3).float()

    pos = torch.cat([torch.randn(1, 1, 3), field(8)], 1)
    out = interpolate_pos_embed(pos, (8, 8), (12, 12))[:, 1:].reshape(12, 12, 3)
    ref = field(12).reshape(12, 12, 3)
    assert (out - ref).abs().max() < 0.04
    assert (out[2:-2, 2:-2] - ref[2:-2, 2:-2]).abs().max() < 0.025
    const = torch.cat([torch.zeros(1, 1, 3), torch.full((1, 64, 3), 0.7)], 1)
    torch.testing.assert_close(interpolate_pos_embed(const, (8, 8), (5, 11))[:, 1:],
                               torch.full((1, 55, 3), 0.7), rtol=0, atol=1e-6)


def test_checkpoint_at_another_image_size(tmp_path):
    mae = tiny_mae()
    path = save_checkpoint(mae, tmp_path / "m.pth")
    vit, info = build_classifier(4, checkpoint=path, img_size=24, global_pool=False)
    assert vit.img_size == (24, 24) and vit.pos_embed.shape == (1, 1 + 36, 32)
    ref = interpolate_pos_embed(mae.pos_embed.data, (4, 4), (6, 6))
    torch.testing.assert_close(vit.pos_embed.data, ref)
    out = vit(torch.randn(2, 3, 24, 24))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_from_scratch_uses_architecture_not_weights(tmp_path):
    mae = tiny_mae()
    path = save_checkpoint(mae, tmp_path / "m.pth")
    vit, info = build_classifier(3, checkpoint=path, from_scratch=True)
    assert info["load"] is None and vit.embed_dim == 32 and len(vit.blocks) == 2
    assert not torch.allclose(vit.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)
    # the fixed sin-cos embedding is the scratch model's starting point
    torch.testing.assert_close(vit.pos_embed.data[0], sincos_2d(32, (4, 4), cls_token=True))


def test_drop_path_rates_increase_and_are_off_in_eval():
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4,
                            num_classes=2, drop_path_rate=0.3)
    rates = [b.drop_path.rate for b in vit.blocks]
    assert rates == pytest.approx([0.0, 0.15, 0.3])
    x = torch.randn(4, 3, 16, 16)
    vit.eval()
    torch.testing.assert_close(vit(x), vit(x))
    vit.train()
    assert not torch.allclose(vit(x), vit(x))


def test_bad_checkpoints_and_configs(tmp_path):
    with pytest.raises(CheckpointError, match="no ViT encoder"):
        load_encoder(_vit(tiny_mae(), num_classes=2), {"head.weight": torch.zeros(2, 32)})
    other = tiny_mae(embed_dim=16, num_heads=2)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_encoder(_vit(tiny_mae(), num_classes=2), other.state_dict())
    with pytest.raises(ConfigError, match="--from-scratch"):
        build_classifier(2, model="mae_vit_micro_patch4")
    with pytest.raises(ConfigError, match="--checkpoint"):
        build_classifier(2)
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        VisionTransformer(img_size=18, patch_size=4, embed_dim=32, depth=1, num_heads=4)
    with pytest.raises(CheckpointError):
        build_classifier(2, checkpoint=tmp_path / "missing.pth")


def test_default_layer_decay_by_size():
    assert default_layer_decay(12) == 0.65 and default_layer_decay(6) == 0.65
    assert default_layer_decay(24) == 0.75 and default_layer_decay(32) == 0.75


def test_official_encoder_only_checkpoint(tmp_path):
    # mae_pretrain_vit_*.pth style: {'model': encoder weights}, no config: inferred from shapes
    mae = tiny_mae(embed_dim=64, num_heads=1)
    enc = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": enc}, tmp_path / "enc.pth")
    vit, info = build_classifier(3, checkpoint=tmp_path / "enc.pth", global_pool=False)
    assert vit.embed_dim == 64 and len(vit.blocks) == 2 and vit.img_size == (16, 16)
    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit.eval().features(imgs), mae.eval().forward_features(imgs)[:, 0],
                                   rtol=1e-5, atol=1e-5)
