"""Named model sizes. Base/large/huge are the official configurations; tiny and small
use the ViT-Ti/S encoders with a lighter decoder; micro is for the built-in dataset."""
from ..settings import ConfigError
from .mae import MaskedAutoencoderViT

CONFIGS = {
    # For the built-in dataset and CPUs: 32 px images in 4 px patches (64 tokens).
    "mae_vit_micro_patch4": dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4,
                                 decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4),
    "mae_vit_tiny_patch16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3,
                                 decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    "mae_vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6,
                                  decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "mae_vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "mae_vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "mae_vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


def model_config(name: str, **overrides) -> dict:
    if name not in CONFIGS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(CONFIGS)}")
    return {**CONFIGS[name], **overrides}


def create_model(name: str, **overrides) -> MaskedAutoencoderViT:
    """create_model("mae_vit_base_patch16", img_size=224, norm_pix_loss=True, kernels="auto")."""
    return MaskedAutoencoderViT(**model_config(name, **overrides))
