"""The fast MAE model. Same constructor, state dict and semantics as the official
MaskedAutoencoderViT (facebookresearch/mae, models_mae.py), with the data movement
done by fastmae.ops: the patch embedding runs on the gathered visible patches only,
the decoder input is built in one unshuffle pass, and the loss reads the images
directly instead of a patchified target. Those steps live in steps.py, which
fastmae.apply_to binds onto official and Hugging Face models too."""
from functools import partial

import torch
import torch.nn as nn

from .. import ops
from ..ops import dispatch
from ..settings import ConfigError
from . import attention as attn_backends
from . import steps
from .pos_embed import sincos_2d
from .vit import Block, PatchEmbed, init_weights, run_blocks


def to_pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def layer_norm_eps(norm_layer) -> float:
    """The eps of a norm_layer given the official way (partial(nn.LayerNorm, eps=...))."""
    return norm_layer(8).eps


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24,
                 num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4.0, norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=False,
                 *, norm_eps: float | None = None, kernels: str = "auto", attn: str = "auto"):
        super().__init__()
        self.img_size = to_pair(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ConfigError(f"img_size {self.img_size[0]}x{self.img_size[1]} is not a multiple "
                             f"of the patch size {patch_size}")
        eps = layer_norm_eps(norm_layer) if norm_eps is None else norm_eps
        self.patch_size, self.in_chans = patch_size, in_chans
        self.norm_pix_loss = norm_pix_loss
        self.kernels = dispatch.check_kernels(kernels)
        self.config = dict(img_size=self.img_size, patch_size=patch_size, in_chans=in_chans,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio,
                           norm_pix_loss=norm_pix_loss, norm_eps=eps)

        # Encoder
        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, eps, attn)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

        # Decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio,
                                                   eps, attn) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.initialize_weights()

    def initialize_weights(self):
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size, cls_token=True))
        self.decoder_pos_embed.data.copy_(
            sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_weights)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @property
    def attn_backend(self) -> str:
        return self.blocks[0].attn.backend if len(self.blocks) else "none"

    def backends(self, device, dtype: torch.dtype, mask_ratio: float = 0.75, batch: int = 64) -> dict:
        """What will run for activations of `dtype` on `device` at this mask ratio: the
        attention backend of the encoder and decoder (auto on CUDA times the candidates at
        these sequence lengths now, so none is timed mid-run) and the op implementation.
        Raises BackendUnavailable up front if a backend asked for by name cannot run there."""
        keep = int(self.num_patches * (1 - mask_ratio))

        def attn_of(blocks, seq_len):
            if not len(blocks):
                return "none"
            a = blocks[0].attn
            probe = torch.empty(1, 1, a.qkv.out_features, device=device, dtype=dtype)
            return attn_backends.resolve(a.backend, probe, a.num_heads, seq_len=seq_len, batch=batch)

        probe = torch.empty(0, device=device)
        return {"attn": attn_of(self.blocks, 1 + keep),
                "decoder_attn": attn_of(self.decoder_blocks, 1 + self.num_patches),
                "kernels": dispatch.resolve(self.kernels, probe)}

    def set_attn_backend(self, name: str) -> None:
        for blk in list(self.blocks) + list(self.decoder_blocks):
            blk.attn.backend = name

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return ops.patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return ops.unpatchify(x, self.patch_size, self.grid_size, self.in_chans)

    def check_input(self, imgs: torch.Tensor) -> None:
        ops.patchify_check(imgs, self.patch_size, self.in_chans)
        if tuple(imgs.shape[-2:]) != self.img_size:
            raise ConfigError(f"images are {imgs.shape[-2]}x{imgs.shape[-1]} but the model was built "
                              f"for img_size {self.img_size[0]}x{self.img_size[1]}")

    def random_masking(self, batch: int, mask_ratio: float, noise: torch.Tensor | None, device):
        """Per-sample shuffle by argsort of noise. Returns ids_keep (B, K), mask (B, L) with
        1 = removed, ids_restore (B, L)."""
        return steps.random_masking(batch, self.num_patches, mask_ratio, noise, device)

    def embed_patches(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Patch-embed only the patches in ids_keep, add their positions, prepend cls."""
        return steps.encoder_input(imgs, ids_keep, self.patch_embed.proj, self.pos_embed,
                                   self.cls_token, self.kernels)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise=None):
        self.check_input(imgs)
        ids_keep, mask, ids_restore = self.random_masking(imgs.shape[0], mask_ratio, noise, imgs.device)
        x = self.embed_patches(imgs, ids_keep)
        return run_blocks(self.blocks, x, self.norm, self.kernels), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (B, 1+L, D) of the whole image, no masking, patches in grid order:
        what fine-tuning, probing and embedding use."""
        self.check_input(imgs)
        ids = torch.arange(self.num_patches, device=imgs.device).expand(imgs.shape[0], -1)
        x = self.embed_patches(imgs, ids)
        return run_blocks(self.blocks, x, self.norm, self.kernels)

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = steps.decoder_input(x, self.decoder_embed, self.mask_token, ids_restore,
                                self.decoder_pos_embed, self.kernels)
        x = self.decoder_pred(run_blocks(self.decoder_blocks, x, self.decoder_norm, self.kernels))
        return x[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return steps.pixel_loss(imgs, pred, mask, self.patch_size, self.norm_pix_loss, self.kernels)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise=None):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask
