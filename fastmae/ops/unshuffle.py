"""unshuffle_with_mask_token: the decoder input. Visible tokens go back to their
original places, mask tokens fill the removed ones, positions are added."""
import torch

from . import dispatch


def unshuffle_with_mask_token_torch(x, mask_token, ids_restore, pos_embed):
    B, K1, D = x.shape
    L = ids_restore.shape[1]
    tokens = torch.cat([x[:, 1:], mask_token.expand(B, L + 1 - K1, D).to(x.dtype)], dim=1)
    tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
    return torch.cat([x[:, :1], tokens], dim=1) + pos_embed


def unshuffle_with_mask_token(x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                              pos_embed: torch.Tensor, kernels: str = "auto") -> torch.Tensor:
    """x (B, 1+K, D) cls first, mask_token (1, 1, D), ids_restore (B, L),
    pos_embed (1, 1+L, D) -> (B, 1+L, D)."""
    B, K1, D = x.shape
    L = ids_restore.shape[1]
    if ids_restore.shape[0] != B or mask_token.shape[-1] != D or pos_embed.shape[-2:] != (L + 1, D):
        raise ValueError(f"unshuffle shapes do not agree: x {tuple(x.shape)}, mask_token "
                         f"{tuple(mask_token.shape)}, ids_restore {tuple(ids_restore.shape)}, "
                         f"pos_embed {tuple(pos_embed.shape)}")
    dispatch.check_kernels(kernels)
    dispatch.record("unshuffle_with_mask_token", "torch")
    return unshuffle_with_mask_token_torch(x, mask_token, ids_restore, pos_embed)
