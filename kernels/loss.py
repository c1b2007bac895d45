"""Masked pixel loss with its gradient computed in the forward pass.

For patch (b, l) with weight m = mask[b, l] (1 = removed), target t = the patch read
straight from the images in patchify order (optionally normalised per patch with the
unbiased variance, eps 1e-6 inside the sqrt):

    row_loss[b, l] = m * mean_P((pred - t)^2)
    loss           = sum(row_loss) / denom,            denom = max(sum(mask), 1)
    g              = 2 * m * (pred - t)                (written by the forward, in fp32)
    grad_pred      = g * (grad_output / (P * denom))   (backward: one scale, in fp32)

g is stored unscaled and in fp32: the full gradient is ~1e-7 at ViT-B shapes, a
subnormal in fp16 that would lose most of its bits before a loss scaler (GradScaler's
65536) could lift it. Backward applies grad_output (the loss scale included) and
1/(P * denom) in fp32 and rounds to pred's dtype once, at the store (a bf16 g would
round twice). The
target is never materialised; patches with m == 0 read nothing and get a zero gradient
row. Forward: one program per patch; backward: one per BLOCK elements."""
import torch
import triton
import triton.language as tl

from .device import guard

EPS = 1.0e-6
MAX_BLOCK = 16384
BWD_BLOCK = 1024


@triton.jit
def _masked_pixel_loss_fwd_kernel(
    pred_ptr,  # (B, L, P), strides (s_pb, s_pl, s_pp), any float dtype
    imgs_ptr,  # (B, C, H, W), strides (s_ib, s_ic, s_ih, s_iw)
    mask_ptr,  # (B, L) float, strides (s_mb, s_ml)
    row_loss_ptr,  # (B * L,) fp32 contiguous
    grad_ptr,  # (B, L, P) contiguous fp32: g = 2 m (pred - t) (unused unless WRITE_GRAD)
    s_pb, s_pl, s_pp,
    s_ib, s_ic, s_ih, s_iw,
    s_mb, s_ml,
    L, GRID_W,
    C: tl.constexpr,  # constexpr: the per-element // and % by C become multiplies
    P: tl.constexpr,  # constexpr: rows of P values (588 at p=14) get vector stores
    eps,
    PATCH: tl.constexpr,
    BLOCK: tl.constexpr,
    NORM_PIX: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * L + l
    b = row // L
    l = row % L
    m = tl.load(mask_ptr + b * s_mb + l * s_ml).to(tl.float32)
    gh = l // GRID_W
    gw = l % GRID_W

    offs = tl.arange(0, BLOCK)
    ok = offs < P
    i = offs // (PATCH * C)
    j = (offs // C) % PATCH
    c = (offs % C).to(tl.int64)  # c * s_ic may pass 2**31
    ld = offs < tl.where(m != 0.0, P, 0)  # a visible patch (m == 0) reads nothing
    t = tl.load(imgs_ptr + b * s_ib + c * s_ic + (gh * PATCH + i) * s_ih + (gw * PATCH + j) * s_iw,
                mask=ld, other=0.0).to(tl.float32)
    if NORM_PIX:
        mean = tl.sum(t, axis=0) / P
        centred = tl.where(ok, t - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / (P - 1)
        t = centred * tl.rsqrt(var + eps)
    x = tl.load(pred_ptr + b * s_pb + l * s_pl + offs * s_pp, mask=ld, other=0.0).to(tl.float32)
    diff = tl.where(ld, x - t, 0.0)
    mse = tl.sum(diff * diff, axis=0) / P
    tl.store(row_loss_ptr + row, m * mse)
    if WRITE_GRAD:
        g = diff * (2.0 * m)
        tl.store(grad_ptr + row * P + offs, g, mask=ok)


@triton.jit
def _masked_pixel_loss_bwd_kernel(
    g_ptr,  # (n,) contiguous fp32: g from the forward
    go_ptr,  # (1,) grad of the loss (the loss scale under GradScaler), any float dtype
    denom_ptr,  # (1,) fp32: max(sum(mask), 1)
    out_ptr,  # (n,) contiguous, pred's dtype
    n,
    P: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    scale = tl.load(go_ptr).to(tl.float32) / (P * tl.load(denom_ptr))
    g = tl.load(g_ptr + offs, mask=ok, other=0.0)
    tl.store(out_ptr + offs, (g * scale).to(out_ptr.dtype.element_ty), mask=ok)


def masked_pixel_loss_fwd(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor,
                          patch_size: int, norm_pix_loss: bool, write_grad: bool = True,
                          grad: torch.Tensor | None = None):
    """pred (B, L, p*p*C), imgs (B, C, H, W), mask (B, L) -> (loss: 0-d fp32 tensor,
    g = 2 m (pred - t) in fp32 or None when write_grad is False, denom (1,) fp32).
    `grad`, when given, is a contiguous fp32 buffer of pred's shape to write g into."""
    B, L, P = pred.shape
    _, C, H, W = imgs.shape
    p = patch_size
    if P > MAX_BLOCK:
        raise ValueError(f"patches of {P} values are larger than this kernel handles ({MAX_BLOCK})")
    if not mask.dtype.is_floating_point:
        mask = mask.float()
    denom = mask.sum(dtype=torch.float32).clamp(min=1.0).reshape(1)
    row_loss = torch.empty(B * L, dtype=torch.float32, device=pred.device)
    if write_grad:
        if grad is None:
            grad = torch.empty(pred.shape, dtype=torch.float32, device=pred.device)
        elif tuple(grad.shape) != tuple(pred.shape) or grad.dtype != torch.float32 or not grad.is_contiguous():
            raise ValueError(f"grad must be a contiguous torch.float32 tensor of shape "
                             f"{tuple(pred.shape)}, got {grad.dtype} {tuple(grad.shape)}")
    if B * L:
        with guard(pred):
            _masked_pixel_loss_fwd_kernel[(B * L,)](
                pred, imgs, mask, row_loss, grad if write_grad else row_loss,
                *pred.stride(), *imgs.stride(), *mask.stride(),
                L, W // p, C, P,
                EPS,
                PATCH=p, BLOCK=triton.next_power_of_2(P), NORM_PIX=bool(norm_pix_loss),
                WRITE_GRAD=write_grad,
            )
    loss = row_loss.sum() / denom[0]
    return loss, (grad if write_grad else None), denom


def masked_pixel_loss_bwd(g: torch.Tensor, grad_output: torch.Tensor, denom: torch.Tensor,
                          dtype: torch.dtype) -> torch.Tensor:
    """g (B, L, P) fp32 from the forward, grad_output (a 1-element tensor), denom (1,) fp32
    -> the gradient of pred, g * grad_output / (P * denom) computed in fp32, in `dtype`."""
    out = torch.empty(g.shape, dtype=dtype, device=g.device)
    n = g.numel()
    if n:
        g = g.contiguous()
        with guard(g):
            _masked_pixel_loss_bwd_kernel[(triton.cdiv(n, BWD_BLOCK),)](
                g, grad_output.reshape(1), denom, out, n, P=g.shape[-1], BLOCK=BWD_BLOCK,
            )
    return out
