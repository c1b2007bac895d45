"""The ViT classifier that fine-tuning, probing and embedding use: an MAE encoder plus a
head, with timm's VisionTransformer parameter names (patch_embed.proj, cls_token,
pos_embed, blocks.N.*, norm or fc_norm, head), as the official models_vit.py.

global_pool=True (the paper's fine-tuning default): mean of the patch tokens -> fc_norm
-> head, and the encoder's final `norm` is dropped. global_pool=False: norm -> cls token
-> head."""
import torch
import torch.nn as nn

from ..settings import CheckpointError, ConfigError
from ..models.pos_embed import interpolate_pos_embed, sincos_2d
from ..models.vit import Block, PatchEmbed, init_weights

# MAE config keys that describe the encoder; decoder keys are ignored here.
ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                "mlp_ratio", "norm_eps")


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class VisionTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, norm_eps=1e-6, global_pool=True,
                 drop_path_rate=0.0, attn="auto"):
        super().__init__()
        self.img_size = _pair(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ConfigError(f"img_size {self.img_size[0]}x{self.img_size[1]} is not a multiple "
                              f"of the patch size {patch_size}")
        self.config = dict(img_size=list(self.img_size), patch_size=patch_size, in_chans=in_chans,
                           num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                           num_heads=num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps,
                           global_pool=global_pool, drop_path_rate=drop_path_rate)
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Learnable, as in timm and the official fine-tuning; starts at the fixed sin-cos
        # values the MAE was pretrained with (a checkpoint overwrites them).
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.grid_size, cls_token=True)[None])
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth decay rule
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, norm_eps, attn, rates[i])
                                     for i in range(depth)])
        if global_pool:
            self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        else:
            self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_weights)
        if isinstance(self.head, nn.Linear):
            # The official fine-tuning initialises the new head tiny: predictions start uniform.
            nn.init.trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """All encoder tokens (B, 1+L, D) before the final norm."""
        if imgs.ndim != 4 or tuple(imgs.shape[-2:]) != self.img_size:
            raise ConfigError(f"images of shape {tuple(imgs.shape)} do not fit this model "
                             f"(img_size {self.img_size[0]}x{self.img_size[1]})")
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """The pooled (B, D) representation the head sees."""
        x = self.tokens(imgs)
        if self.global_pool:
            return self.fc_norm(x[:, 1:].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(imgs))

    def features(self, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Frozen-encoder features for probing, k-NN and embedding: the pretrained final
        norm applied to every token, then the cls token ('cls') or the patch mean ('avg')."""
        if self.global_pool:
            raise ConfigError("features() needs the encoder's final norm: build the model with "
                              "global_pool=False")
        x = self.norm(self.tokens(imgs))
        if pool == "cls":
            return x[:, 0]
        if pool == "avg":
            return x[:, 1:].mean(dim=1)
        raise ConfigError(f"unknown pooling {pool!r}; choose cls or avg")


def encoder_config(model_config: dict) -> dict:
    """The encoder part of a MaskedAutoencoderViT config."""
    cfg = {k: model_config[k] for k in ENCODER_KEYS if k in model_config}
    missing = [k for k in ("patch_size", "embed_dim", "depth", "num_heads") if k not in cfg]
    if missing:
        raise CheckpointError(f"the model config lacks {', '.join(missing)}")
    return cfg


def encoder_state_dict(state_dict: dict) -> dict:
    """The encoder's tensors of an MAE (or ViT) state dict, decoder and head dropped."""
    keep = ("patch_embed.", "blocks.", "norm.", "fc_norm.")
    return {k: v for k, v in state_dict.items()
            if k in ("cls_token", "pos_embed") or k.startswith(keep)}


def load_encoder(model: VisionTransformer, state_dict: dict, src_grid=None) -> dict:
    """Copy an MAE encoder into model, as the official fine-tuning does: the position
    embedding is resized to the model's grid (bicubic), the head and (with global pooling)
    fc_norm stay at their init. Returns {'missing': [...], 'unexpected': [...]}."""
    sd = encoder_state_dict(state_dict)
    if "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
        raise CheckpointError("the checkpoint has no ViT encoder (pos_embed and "
                              "patch_embed.proj.weight are missing)")
    pos = sd["pos_embed"]
    n_src = pos.shape[1] - 1
    if src_grid is None:
        side = int(round(n_src ** 0.5))
        if side * side != n_src:
            raise CheckpointError(f"cannot tell the patch grid of a {n_src}-patch position "
                                  "embedding; give the model config's img_size")
        src_grid = (side, side)
    if src_grid[0] * src_grid[1] != n_src:
        raise CheckpointError(f"position embedding has {n_src} patches, not a "
                              f"{src_grid[0]}x{src_grid[1]} grid")
    sd["pos_embed"] = interpolate_pos_embed(pos, tuple(src_grid), model.grid_size)
    if model.global_pool:
        sd.pop("norm.weight", None)
        sd.pop("norm.bias", None)
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError("the checkpoint does not fit the model: " + "; ".join(bad[:4]))
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc_norm."))]
    if missing:
        raise CheckpointError(f"the checkpoint lacks encoder weights: {', '.join(missing[:6])}")
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
