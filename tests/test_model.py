"""The fast model against the paper's reference semantics."""
import pytest
import torch

import fastmae
from fastmae import reference
from fastmae.models.pos_embed import sincos_2d
from tests.helpers import TINY, assert_close, grads, tiny_pair


def test_masking_invariants():
    model = fastmae.MaskedAutoencoderViT(**TINY)
    B, L = 5, model.num_patches
    for ratio in (0.0, 0.5, 0.75, 0.9):
        ids_keep, mask, ids_restore = model.random_masking(B, ratio, None, "cpu")
        len_keep = int(L * (1 - ratio))
        assert ids_keep.shape == (B, len_keep)
        assert torch.equal(mask.sum(1), torch.full((B,), float(L - len_keep)))
        ids_shuffle = torch.argsort(ids_restore, dim=1)
        assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(L).expand(B, L))
        # every kept index is unmasked, every other index masked
        assert torch.all(torch.gather(mask, 1, ids_keep) == 0)
        assert all(len(set(row.tolist())) == len_keep for row in ids_keep)


def test_loss_matches_hand_computation():
    model = fastmae.MaskedAutoencoderViT(img_size=4, patch_size=2, in_chans=1, embed_dim=8, depth=1,
                                         num_heads=2, decoder_embed_dim=8, decoder_depth=1,
                                         decoder_num_heads=2)
    imgs = torch.randn(1, 1, 4, 4)
    pred = torch.randn(1, 4, 4)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # patches in row-major order; patch (0,0) = pixels [0:2, 0:2] read row by row
    target = [imgs[0, 0, r * 2:r * 2 + 2, c * 2:c * 2 + 2].reshape(-1) for r in range(2) for c in range(2)]
    expected = (((pred[0, 0] - target[0]) ** 2).mean() + ((pred[0, 3] - target[3]) ** 2).mean()) / 2
    assert_close(model.forward_loss(imgs, pred, mask), expected, what="plain loss")
    model.norm_pix_loss = True
    normed = [(t - t.mean()) / (t.var(unbiased=True) + 1e-6).sqrt() for t in target]
    expected = (((pred[0, 0] - normed[0]) ** 2).mean() + ((pred[0, 3] - normed[3]) ** 2).mean()) / 2
    assert_close(model.forward_loss(imgs, pred, mask), expected, what="norm_pix loss")


@pytest.mark.parametrize("overrides", [
    {},
    {"norm_pix_loss": True},
    {"in_chans": 1},
    {"img_size": (16, 40)},
    {"patch_size": 4, "img_size": 28},
])
def test_fast_matches_reference(overrides):
    fast, ref = tiny_pair(**overrides)
    c = fast.in_chans
    imgs = torch.randn(3, c, *fast.img_size)
    noise = torch.rand(3, fast.num_patches)
    lf, pf, mf = fast(imgs, 0.75, noise)
    lr, pr, mr = ref(imgs, 0.75, noise)
    assert torch.equal(mf, mr)
    assert_close(pf, pr, what="pred")
    assert_close(lf, lr, what="loss")
    lf.backward()
    lr.backward()
    gf, gr = grads(fast), grads(ref)
    assert gf.keys() == gr.keys() and len(gf) > 10
    for name in gr:
        assert_close(gf[name], gr[name], rtol=1e-4, atol=1e-6, what=f"grad {name}")


def test_pos_embed_matches_official_numpy():
    for dim, grid in ((32, (4, 4)), (16, (2, 5))):
        ours = sincos_2d(dim, grid, cls_token=True)
        theirs = torch.from_numpy(reference._sincos_2d(dim, *grid)).float()
        assert torch.equal(ours, theirs)


def test_official_state_dict_keys_and_strict_load():
    fast, ref = tiny_pair()
    keys = set(fast.state_dict())
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.norm1.weight",
              "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.1.mlp.fc2.weight",
              "norm.weight", "mask_token", "decoder_pos_embed", "decoder_embed.weight",
              "decoder_blocks.0.mlp.fc1.bias", "decoder_norm.bias", "decoder_pred.weight"):
        assert k in keys
    assert keys == set(ref.state_dict())
    encoder_only = {k: v for k, v in ref.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    result = fast.load_state_dict(encoder_only, strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith(("decoder", "mask_token")) for k in result.missing_keys)


def test_init_follows_official():
    model = fastmae.MaskedAutoencoderViT(**TINY)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert torch.all(model.norm.weight == 1)
    assert 0.005 < model.mask_token.std().item() < 0.05
    fan_in, fan_out = model.blocks[0].mlp.fc1.in_features, model.blocks[0].mlp.fc1.out_features
    bound = (6 / (fan_in + fan_out)) ** 0.5
    w = model.blocks[0].mlp.fc1.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound


def test_forward_features_without_masking():
    fast, ref = tiny_pair()
    imgs = torch.randn(2, 3, 32, 32)
    feats = fast.forward_features(imgs)
    assert feats.shape == (2, 1 + fast.num_patches, TINY["embed_dim"])
    # the same as the reference encoder with noise that keeps the grid order at ratio 0
    noise = torch.arange(fast.num_patches, dtype=torch.float32).expand(2, -1)
    latent, _, _ = ref.forward_encoder(imgs, 0.0, noise)
    assert_close(feats, latent, what="features")


def test_patchify_roundtrip_and_layout():
    model = fastmae.MaskedAutoencoderViT(**{**TINY, "img_size": (16, 24)})
    imgs = torch.randn(2, 3, 16, 24)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 6, 8 * 8 * 3)
    # patch 4 = grid row 1, column 1; inside a patch the channel varies fastest
    assert torch.equal(patches[1, 4, :3], imgs[1, :, 8, 8])
    assert torch.equal(model.unpatchify(patches), imgs)


@pytest.mark.parametrize("imgs, ratio, match", [
    (torch.randn(2, 3, 30, 30), 0.75, "not a multiple of the patch size"),
    (torch.randn(2, 1, 32, 32), 0.75, "channels"),
    (torch.randn(3, 32, 32), 0.75, "4-D"),
    (torch.randn(2, 3, 32, 32), 1.0, "mask_ratio"),
    (torch.randn(2, 3, 32, 32), -0.1, "mask_ratio"),
    (torch.randn(2, 3, 40, 40), 0.75, "built for img_size"),
])
def test_bad_input_raises(imgs, ratio, match):
    model = fastmae.MaskedAutoencoderViT(**TINY)
    with pytest.raises(ValueError, match=match):
        model(imgs, ratio)


def test_bad_constructor_and_names():
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        fastmae.MaskedAutoencoderViT(**{**TINY, "img_size": 30})
    with pytest.raises(fastmae.ConfigError, match="unknown model"):
        fastmae.create_model("mae_vit_gigantic")
    with pytest.raises(fastmae.ConfigError, match="unknown kernels"):
        fastmae.MaskedAutoencoderViT(**TINY, kernels="cuda")
    with pytest.raises(fastmae.ConfigError, match="unknown attention"):
        fastmae.MaskedAutoencoderViT(**TINY, attn="fast")


def test_registry_sizes():
    model = fastmae.create_model("mae_vit_base_patch16")
    n_params = sum(p.numel() for p in model.parameters())
    assert 111e6 < n_params < 113e6  # official MAE ViT-B/16 with decoder: 111.9M (incl. frozen pos)
    assert fastmae.create_model("mae_vit_huge_patch14", depth=1, decoder_depth=1).num_patches == 256


def test_backends_report_what_will_run(monkeypatch):
    model = fastmae.MaskedAutoencoderViT(**TINY, attn="math")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert model.backends("cpu", torch.float32) == {"attn": "math", "decoder_attn": "math", "kernels": "torch"}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    auto = fastmae.MaskedAutoencoderViT(**TINY)
    assert auto.backends("cpu", torch.float32) == {"attn": "sdpa", "decoder_attn": "sdpa", "kernels": "triton"}
    flash = fastmae.MaskedAutoencoderViT(**TINY, attn="flash") if fastmae.models.attention.flash_available() else None
    if flash is not None:  # installed, but fp32 CPU tensors cannot run it
        with pytest.raises(fastmae.BackendUnavailable, match="flash"):
            flash.backends("cpu", torch.float32)
