"""unshuffle_with_mask_token: the decoder input. Visible tokens go back to their
original places, mask tokens fill the removed ones, positions are added."""
import torch

from . import dispatch

OP = "unshuffle_with_mask_token"


def unshuffle_with_mask_token_torch(x, mask_token, ids_restore, pos_embed):
    B, K1, D = x.shape
    L = ids_restore.shape[1]
    tokens = torch.cat([x[:, 1:], mask_token.expand(B, L + 1 - K1, D).to(x.dtype)], dim=1)
    tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
    return torch.cat([x[:, :1], tokens], dim=1) + pos_embed


class UnshuffleWithMaskToken(torch.autograd.Function):
    """Triton forward and backward; grad of pos_embed (a batch sum) only when it is asked for."""

    @staticmethod
    def forward(ctx, x, mask_token, ids_restore, pos_embed):
        from ..kernels import unshuffle
        ctx.save_for_backward(ids_restore)
        ctx.num_visible = x.shape[1] - 1
        ctx.x_dtype, ctx.mask_dtype, ctx.pos_dtype = x.dtype, mask_token.dtype, pos_embed.dtype
        return unshuffle.unshuffle_fwd(x, mask_token, ids_restore, pos_embed)

    @staticmethod
    def backward(ctx, grad_out):
        from ..kernels import unshuffle
        (ids_restore,) = ctx.saved_tensors
        need_x, need_mask, _, need_pos = ctx.needs_input_grad
        grad_x, grad_mask = unshuffle.unshuffle_bwd(grad_out, ids_restore, ctx.num_visible,
                                                    ctx.x_dtype, mask_grad=need_mask)
        if grad_mask is not None:
            grad_mask = grad_mask.to(ctx.mask_dtype).view(1, 1, -1)
        grad_pos = grad_out.sum(0, keepdim=True).to(ctx.pos_dtype) if need_pos else None
        return (grad_x if need_x else None), grad_mask, None, grad_pos


def check_permutation(ids_restore: torch.Tensor) -> None:
    """ids_restore must be a per-row permutation of 0..L-1 (checked on CPU, where it
    costs no device sync; on CUDA argsort output is trusted)."""
    if ids_restore.is_cuda or ids_restore.numel() == 0:
        return
    L = ids_restore.shape[1]
    expected = torch.arange(L, device=ids_restore.device).expand_as(ids_restore)
    if not torch.equal(ids_restore.sort(dim=1).values.to(torch.int64), expected):
        raise ValueError("ids_restore must hold a permutation of 0..L-1 in every row "
                         "(the argsort of the shuffle)")


def unshuffle_with_mask_token(x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                              pos_embed: torch.Tensor, kernels: str = "auto") -> torch.Tensor:
    """x (B, 1+K, D) cls first, mask_token (1, 1, D), ids_restore (B, L),
    pos_embed (1, 1+L, D) -> (B, 1+L, D) in x's dtype promoted with pos_embed's."""
    if x.ndim != 3 or mask_token.ndim != 3 or ids_restore.ndim != 2 or pos_embed.ndim != 3:
        raise ValueError(f"unshuffle expects x (B, 1+K, D), mask_token (1, 1, D), ids_restore "
                         f"(B, L), pos_embed (1, 1+L, D); got {tuple(x.shape)}, "
                         f"{tuple(mask_token.shape)}, {tuple(ids_restore.shape)}, {tuple(pos_embed.shape)}")
    B, K1, D = x.shape
    L = ids_restore.shape[1]
    if (ids_restore.shape[0] != B or tuple(mask_token.shape) != (1, 1, D)
            or tuple(pos_embed.shape) != (1, L + 1, D) or not 1 <= K1 <= L + 1):
        raise ValueError(f"unshuffle shapes do not agree: x {tuple(x.shape)}, mask_token "
                         f"{tuple(mask_token.shape)}, ids_restore {tuple(ids_restore.shape)}, "
                         f"pos_embed {tuple(pos_embed.shape)}")
    if ids_restore.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids_restore must be an int64 or int32 tensor, got {ids_restore.dtype}")
    devices = {t.device for t in (x, mask_token, ids_restore, pos_embed)}
    if len(devices) != 1:
        raise ValueError(f"unshuffle inputs are on different devices: {sorted(map(str, devices))}")
    check_permutation(ids_restore)
    impl = dispatch.resolve(kernels, x)
    dispatch.record(OP, impl)
    if impl == "triton":
        return UnshuffleWithMaskToken.apply(x, mask_token, ids_restore, pos_embed)
    return unshuffle_with_mask_token_torch(x, mask_token, ids_restore, pos_embed)
