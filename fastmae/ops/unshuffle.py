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


@torch.library.custom_op("fastmae::unshuffle_with_mask_token", mutates_args=())
def _fwd_op(x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
            pos_embed: torch.Tensor) -> torch.Tensor:
    dispatch.record(OP, "triton")  # here: the body runs in compiled graphs too
    from ..kernels import unshuffle
    return unshuffle.unshuffle_fwd(x, mask_token, ids_restore, pos_embed)


@_fwd_op.register_fake
def _(x, mask_token, ids_restore, pos_embed):
    B, _, D = x.shape
    return x.new_empty((B, ids_restore.shape[1] + 1, D),
                       dtype=torch.promote_types(x.dtype, pos_embed.dtype))


@torch.library.custom_op("fastmae::unshuffle_with_mask_token_backward", mutates_args=())
def _bwd_op(grad_out: torch.Tensor, ids_restore: torch.Tensor, num_visible: int,
            x_dtype: torch.dtype, mask_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (grad of x, grad of the mask token (D,) in fp32, or an empty tensor)."""
    from ..kernels import unshuffle
    grad_x, grad_mask = unshuffle.unshuffle_bwd(grad_out, ids_restore, num_visible, x_dtype,
                                                mask_grad=mask_grad)
    return grad_x, (grad_mask if grad_mask is not None else grad_out.new_empty(0, dtype=torch.float32))


@_bwd_op.register_fake
def _(grad_out, ids_restore, num_visible, x_dtype, mask_grad):
    B, _, D = grad_out.shape
    grad_mask = grad_out.new_empty((D,) if mask_grad else (0,), dtype=torch.float32)
    return grad_out.new_empty((B, num_visible + 1, D), dtype=x_dtype), grad_mask


def _setup_context(ctx, inputs, output):
    x, mask_token, ids_restore, pos_embed = inputs
    ctx.save_for_backward(ids_restore)
    ctx.num_visible = x.shape[1] - 1
    ctx.x_dtype, ctx.mask_dtype, ctx.pos_dtype = x.dtype, mask_token.dtype, pos_embed.dtype


def _backward(ctx, grad_out):
    """Triton backward; grad of pos_embed (a batch sum) only when it is asked for."""
    (ids_restore,) = ctx.saved_tensors
    need_x, need_mask, _, need_pos = ctx.needs_input_grad
    grad_x, grad_mask = _bwd_op(grad_out, ids_restore, ctx.num_visible, ctx.x_dtype, need_mask)
    grad_mask = grad_mask.to(ctx.mask_dtype).view(1, 1, -1) if need_mask else None
    grad_pos = grad_out.sum(0, keepdim=True).to(ctx.pos_dtype) if need_pos else None
    return (grad_x if need_x else None), grad_mask, None, grad_pos


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def check_permutation(ids_restore: torch.Tensor) -> None:
    """ids_restore must be a per-row permutation of 0..L-1 (checked on CPU, where it
    costs no device sync, and not while torch.compile traces; on CUDA argsort output is
    trusted)."""
    if not dispatch.reads_values(ids_restore) or ids_restore.numel() == 0:
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
    if impl == "triton":
        return _fwd_op(x, mask_token, ids_restore, pos_embed)
    dispatch.record(OP, impl)
    return unshuffle_with_mask_token_torch(x, mask_token, ids_restore, pos_embed)
