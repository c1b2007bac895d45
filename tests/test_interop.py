"""Weights interop: safe checkpoint loading, config inference, safetensors, Hugging Face
ViTMAE both ways, timm encoders."""
import argparse
import json
import os
import pickle

import pytest
import torch

import fastmae
from fastmae import reference
from fastmae.settings import CheckpointError, ConfigError
from fastmae.interop import (Checkpoint, from_hf_vitmae, hf_config, infer_model_config, load_checkpoint,
                             model_from_checkpoint, save_safetensors, timm_vit_kwargs, to_hf_vitmae,
                             to_timm_vit)
from fastmae.interop import hf as hf_keys
from fastmae.interop.statedict import is_decoder_key
from fastmae.models.pos_embed import interpolate_pos_embed
from tests import helpers
from tests.helpers import TINY, assert_close, hf_lib, randomize


# Inferable without help: widths are multiples of 64 and match no named size.
INFERABLE = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=128, depth=2, num_heads=2,
                 decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=1, mlp_ratio=2.0)


def tiny_hf(**overrides):
    return helpers.tiny_hf(**overrides).eval()


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def outputs(model, imgs, noise):
    with torch.no_grad():
        return model(imgs, 0.75, noise)


# ------------------------------------------------------------------ Hugging Face

@pytest.mark.parametrize("overrides", [{}, {"norm_pix_loss": True, "layer_norm_eps": 0.25},
                                       {"num_channels": 1, "qkv_bias": False}])
def test_from_hf_parity(overrides):
    hf = tiny_hf(**overrides)
    model = from_hf_vitmae(hf)
    assert model.config["norm_eps"] == hf.config.layer_norm_eps
    assert model.blocks[0].norm1.eps == hf.config.layer_norm_eps
    assert model.norm_pix_loss == hf.config.norm_pix_loss
    c = hf.config.num_channels
    imgs, noise = torch.randn(3, c, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        out = hf(imgs, noise=noise)
    loss, pred, mask = outputs(model, imgs, noise)
    assert torch.equal(mask, out.mask)
    assert_close(pred, out.logits, what="pred vs logits")
    assert_close(loss, out.loss, what="loss")


def test_to_hf_parity_and_back():
    model = randomize(fastmae.MaskedAutoencoderViT(**TINY, norm_pix_loss=True, norm_eps=1e-5))
    hf = to_hf_vitmae(model, mask_ratio=0.6).eval()
    assert isinstance(hf, hf_lib().ViTMAEForPreTraining)
    assert hf.config.layer_norm_eps == 1e-5 and hf.config.norm_pix_loss and hf.config.mask_ratio == 0.6
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        out = hf(imgs, noise=noise)
        loss, pred, mask = model(imgs, 0.6, noise)
    assert torch.equal(mask, out.mask)
    assert_close(out.logits, pred, what="logits")
    assert_close(out.loss, loss, what="loss")
    same_state(from_hf_vitmae(hf), model)


def test_hf_legacy_key_names():
    """transformers 4 / hub file names map to the same official weights."""
    hf = tiny_hf()
    current = hf.state_dict()
    rename = {"vit.layers.": "vit.encoder.layer.", "attention.q_proj": "attention.attention.query",
              "attention.k_proj": "attention.attention.key", "attention.v_proj": "attention.attention.value",
              "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
              "mlp.fc2": "output.dense"}
    legacy = {}
    for k, v in current.items():
        for a, b in rename.items():
            k = k.replace(a, b)
        legacy[k] = v
    assert hf_keys.naming(legacy) == "legacy"
    a, b = hf_keys.hf_to_official(current), hf_keys.hf_to_official(legacy)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    back = hf_keys.official_to_hf(b, "legacy")
    assert back.keys() == legacy.keys() and all(torch.equal(back[k], legacy[k]) for k in back)


def test_hf_bad_configs():
    hf_lib()
    with pytest.raises(ConfigError, match="square images only"):
        hf_config(dict(TINY, img_size=(16, 40)))
    with pytest.raises(ConfigError, match="hidden_act"):
        from_hf_vitmae(tiny_hf(hidden_act="relu"))
    with pytest.raises(ConfigError, match="no dropout"):
        from_hf_vitmae(tiny_hf(hidden_dropout_prob=0.1))
    with pytest.raises(ConfigError, match="MLP ratios differ"):
        from_hf_vitmae(tiny_hf(decoder_intermediate_size=72))
    with pytest.raises(ConfigError, match="ViTMAEForPreTraining"):
        from_hf_vitmae(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="unknown model argument"):
        from_hf_vitmae(tiny_hf(), depthh=3)
    with pytest.raises(ConfigError, match="MaskedAutoencoderViT or a Checkpoint"):
        to_hf_vitmae({"a": torch.zeros(1)})


def test_hf_weights_file_with_config(tmp_path):
    """A Hugging Face folder (model.safetensors + config.json) loads by path."""
    from safetensors.torch import save_file
    hf = tiny_hf(layer_norm_eps=1e-12)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.kind == "hf" and ckpt.model_config["norm_eps"] == 1e-12
    same_state(model_from_checkpoint(ckpt), from_hf_vitmae(hf))


# ------------------------------------------------------------------ checkpoints

def test_official_checkpoint_round_trip(tmp_path):
    ref = randomize(reference.MaskedAutoencoderViT(**INFERABLE))
    path = tmp_path / "mae_pretrain.pth"
    # The official scripts store their flags as an argparse.Namespace.
    torch.save({"model": ref.state_dict(), "epoch": 7, "args": argparse.Namespace(blr=1.5e-4)}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "official" and ckpt.model_config is None and ckpt.raw["epoch"] == 7
    assert ckpt.raw["args"].blr == 1.5e-4
    cfg = infer_model_config(ckpt.state_dict)
    assert cfg == {**{k: v for k, v in INFERABLE.items()}, "mlp_ratio": 2.0}
    model = model_from_checkpoint(path)
    same_state(model, ref)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    lf, pf, _ = outputs(model, imgs, noise)
    lr, pr, _ = outputs(ref, imgs, noise)
    assert_close(pf, pr, what="pred")
    assert_close(lf, lr, what="loss")


def test_bare_state_dict_and_ddp_prefix(tmp_path):
    fast = randomize(fastmae.MaskedAutoencoderViT(**TINY))
    path = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in fast.state_dict().items()}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "state_dict" and "cls_token" in ckpt.state_dict
    with pytest.raises(CheckpointError, match="num_heads"):  # width 32 says nothing about heads
        model_from_checkpoint(ckpt)
    same_state(model_from_checkpoint(ckpt, num_heads=4, decoder_num_heads=3), fast)


def test_infer_heads_from_named_sizes():
    for name, expect in (("mae_vit_base_patch16", (12, 16)), ("mae_vit_huge_patch14", (16, 16))):
        with torch.device("meta"):
            sd = fastmae.create_model(name).state_dict()
        cfg = infer_model_config(sd)
        assert (cfg["num_heads"], cfg["decoder_num_heads"]) == expect
        assert cfg["img_size"] == 224 and cfg["mlp_ratio"] == 4.0
        assert {k: cfg[k] for k in fastmae.CONFIGS[name]} == fastmae.CONFIGS[name]


def test_encoder_only_checkpoint(tmp_path):
    ref = randomize(reference.MaskedAutoencoderViT(**INFERABLE))
    enc = {k: v for k, v in ref.state_dict().items() if not is_decoder_key(k)}
    path = tmp_path / "encoder.pth"
    torch.save({"model": enc}, path)
    model = model_from_checkpoint(path, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=1)
    own = model.state_dict()
    for k, v in enc.items():
        assert torch.equal(own[k], v), k
    assert not torch.equal(own["decoder_embed.weight"], ref.state_dict()["decoder_embed.weight"])
    full = model_from_checkpoint(_save(tmp_path / "full.pth", {"model": ref.state_dict()}))
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(model.forward_features(imgs), full.forward_features(imgs), what="features")
    # no decoder keys -> the official default decoder
    assert model_from_checkpoint(path).config["decoder_embed_dim"] == 512


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_mismatching_checkpoint_lists_keys(tmp_path):
    sd = randomize(reference.MaskedAutoencoderViT(**INFERABLE)).state_dict()
    partial_decoder = {k: v for k, v in sd.items() if k != "decoder_pred.weight"}
    with pytest.raises(CheckpointError, match=r"missing: decoder_pred\.weight"):
        model_from_checkpoint(_save(tmp_path / "a.pth", {"model": partial_decoder}))
    extra = {**sd, "head.weight": torch.randn(10, 128)}
    with pytest.raises(CheckpointError, match=r"unexpected: head\.weight"):
        model_from_checkpoint(_save(tmp_path / "b.pth", {"model": extra}))
    with pytest.raises(CheckpointError, match=r"c\.pth does not fit the model; wrong shape: pos_embed"):
        model_from_checkpoint(Checkpoint(sd, dict(INFERABLE, img_size=[32, 40]), {}, "c.pth"))
    with pytest.raises(CheckpointError, match="not a ViT/MAE state dict"):
        model_from_checkpoint(_save(tmp_path / "d.pth", {"model": {"fc.weight": torch.randn(2, 2)}}))
    with pytest.raises(ConfigError, match="unknown model argument"):
        model_from_checkpoint(_save(tmp_path / "e.pth", {"model": sd}), num_head=2)


def test_fastmae_checkpoint_with_model_config(tmp_path):
    # Non-square and 32-wide: only the stored config can say img_size and the head counts.
    fast = randomize(fastmae.MaskedAutoencoderViT(**dict(TINY, img_size=(16, 40))))
    cfg = dict(fast.config, img_size=list(fast.config["img_size"]))
    path = _save(tmp_path / "checkpoint-3.pth", {
        "model": fast.state_dict(), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "epoch": 3, "scaler": None, "args": {"blr": 1.5e-4}, "step": 30, "model_config": cfg,
        "model_name": "tiny", "fastmae_version": fastmae.__version__})
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "fastmae" and ckpt.model_config == cfg and ckpt.path == str(path)
    model = model_from_checkpoint(path, attn="math")
    assert model.img_size == (16, 40) and model.attn_backend == "math"
    same_state(model, fast)
    imgs, noise = torch.randn(2, 3, 16, 40), torch.rand(2, 10)
    assert_close(outputs(model, imgs, noise)[1], outputs(fast, imgs, noise)[1], what="pred")


def test_img_size_override_resizes_position_embeddings(tmp_path):
    ref = randomize(reference.MaskedAutoencoderViT(**INFERABLE))
    model = model_from_checkpoint(_save(tmp_path / "m.pth", {"model": ref.state_dict()}), img_size=48)
    assert model.grid_size == (6, 6)
    expect = interpolate_pos_embed(ref.pos_embed.data, (4, 4), (6, 6))
    assert torch.equal(model.pos_embed.data, expect)
    assert torch.equal(model.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)


def test_safetensors_round_trip(tmp_path):
    fast = randomize(fastmae.MaskedAutoencoderViT(**dict(TINY, img_size=(16, 40), norm_pix_loss=True)))
    path = save_safetensors(fast, tmp_path / "out" / "model.safetensors")
    assert sorted(os.listdir(tmp_path / "out")) == ["model.safetensors"]  # no temp file left
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "safetensors" and ckpt.model_config["img_size"] == [16, 40]
    assert json.loads(ckpt.raw["metadata"]["fastmae_model_config"])["norm_pix_loss"] is True
    same_state(model_from_checkpoint(ckpt), fast)
    # a state dict with the config passed separately; overwriting is atomic too
    sd = randomize(reference.MaskedAutoencoderViT(**INFERABLE)).state_dict()
    save_safetensors(sd, path, model_config=INFERABLE)
    assert load_checkpoint(path).model_config == {**INFERABLE}
    bare = save_safetensors(sd, tmp_path / "bare.safetensors")
    assert load_checkpoint(bare).model_config is None
    same_state(model_from_checkpoint(bare), model_from_checkpoint(path))
    with pytest.raises(ConfigError, match="not tensors"):
        save_safetensors({"a": 1}, tmp_path / "x.safetensors")


class _Evil:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    sd = reference.MaskedAutoencoderViT(**INFERABLE).state_dict()
    if how == "torch.save":
        torch.save({"model": sd, "extra": _Evil(marker)}, path)
    else:  # a plain pickle, no tensors
        payload = {"model": {"w": _Evil(marker)}}
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pth.*run code") as err:
        load_checkpoint(path)
    assert "system" in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        model_from_checkpoint(path)
    assert not marker.exists()


def test_corrupt_and_missing_files(tmp_path):
    good = _save(tmp_path / "good.pth", {"model": reference.MaskedAutoencoderViT(**INFERABLE).state_dict()})
    data = good.read_bytes()
    cases = {
        "truncated.pth": (data[: len(data) // 2], "corrupt, truncated"),
        "text.pth": (b"this is not a checkpoint\n", "corrupt, truncated|not a readable"),
        "empty.pth": (b"", "corrupt, truncated|not a readable"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError, match=msg) as err:
            load_checkpoint(p)
        assert name in str(err.value)
    st = save_safetensors({"w": torch.randn(4, 4)}, tmp_path / "w.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is a corrupt or truncated safetensors"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match=r"nothere\.pth does not exist"):
        load_checkpoint(tmp_path / "nothere.pth")
    with pytest.raises(CheckpointError, match="is a folder with no model.safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds no model weights.*a list"):
        load_checkpoint(_save(tmp_path / "list.pth", [torch.zeros(2)]))
    with pytest.raises(CheckpointError, match=r"not tensors: epoch"):
        load_checkpoint(_save(tmp_path / "mixed.pth", {"model": {"epoch": 3, "w": torch.zeros(2)}}))
    assert good.read_bytes() == data  # loading never touches the file


# ------------------------------------------------------------------ timm

@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_loads_encoder_with_same_features(pool):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    fast = randomize(fastmae.MaskedAutoencoderViT(**TINY, norm_eps=1e-6)).eval()
    vit = timm_vit.VisionTransformer(**timm_vit_kwargs(fast.config, global_pool=pool, num_classes=10)).eval()
    sd = to_timm_vit(fast.state_dict(), global_pool=pool)
    assert not any(is_decoder_key(k) for k in sd) and sd["pos_embed"].shape == (1, 17, 32)
    result = vit.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"]
    assert result.unexpected_keys == []
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = fast.forward_features(imgs), vit.forward_features(imgs)
        if pool == "avg":
            # timm's pooled model moves the final norm after pooling: compare the pooled,
            # normed features with the same computed from fastmae's pre-norm tokens.
            tokens = fast.embed_patches(imgs, torch.arange(fast.num_patches).expand(2, -1))
            for blk in fast.blocks:
                tokens = blk(tokens)
            ours = fast.norm(tokens[:, 1:].mean(1))
            theirs = vit.forward_head(theirs, pre_logits=True)
    assert_close(theirs, ours, what=f"timm features ({pool})")


def test_timm_rejects_bad_input():
    with pytest.raises(ConfigError, match="global_pool"):
        to_timm_vit({}, global_pool="map")
    with pytest.raises(CheckpointError, match="missing cls_token"):
        to_timm_vit({"blocks.0.norm1.weight": torch.zeros(2)})
