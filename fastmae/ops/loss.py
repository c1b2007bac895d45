"""masked_pixel_loss: mean over removed patches of the per-patch mean squared error
between the prediction and the (optionally per-patch normalised) image patches."""
import torch

from . import dispatch
from .patchify import check_images, patchify

OP = "masked_pixel_loss"


def masked_pixel_loss_torch(pred, imgs, mask, patch_size, norm_pix_loss):
    target = patchify(imgs, patch_size).float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the official code
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred.float() - target) ** 2).mean(dim=-1)
    mask = mask.float()
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


@torch.library.custom_op("fastmae::masked_pixel_loss", mutates_args=())
def _fwd_op(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch_size: int,
            norm_pix_loss: bool, write_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (loss, g = 2 m (pred - t) in fp32 or an empty tensor, denom): the kernel writes
    the unscaled gradient during the forward pass, so backward is one scale."""
    dispatch.record(OP, "triton")  # here: the body runs in compiled graphs too
    from ..kernels import loss as loss_kernels
    loss, g, denom = loss_kernels.masked_pixel_loss_fwd(pred, imgs, mask, patch_size, norm_pix_loss,
                                                        write_grad=write_grad)
    return loss, (g if g is not None else pred.new_empty(0, dtype=torch.float32)), denom


@_fwd_op.register_fake
def _(pred, imgs, mask, patch_size, norm_pix_loss, write_grad):
    g = pred.new_empty(pred.shape if write_grad else (0,), dtype=torch.float32)
    return pred.new_empty((), dtype=torch.float32), g, pred.new_empty((1,), dtype=torch.float32)


@torch.library.custom_op("fastmae::masked_pixel_loss_backward", mutates_args=())
def _bwd_op(g: torch.Tensor, grad_output: torch.Tensor, denom: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor:
    from ..kernels import loss as loss_kernels
    return loss_kernels.masked_pixel_loss_bwd(g, grad_output, denom, dtype)


@_bwd_op.register_fake
def _(g, grad_output, denom, dtype):
    return g.new_empty(g.shape, dtype=dtype)


def _setup_context(ctx, inputs, output):
    _loss, g, denom = output
    ctx.save_for_backward(g, denom)
    ctx.pred_dtype = inputs[0].dtype


def _backward(ctx, grad_output, _dg, _ddenom):
    """No gradient flows to the images or the mask (data, not parameters). grad_output
    (the loss scale under GradScaler) stays in its own dtype: the kernel applies it in fp32."""
    g, denom = ctx.saved_tensors
    return _bwd_op(g, grad_output, denom, ctx.pred_dtype), None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def masked_pixel_loss(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch_size: int,
                      norm_pix_loss: bool = False, kernels: str = "auto") -> torch.Tensor:
    """pred (B, L, p*p*C), imgs (B, C, H, W), mask (B, L) with 1 = removed -> fp32 scalar.
    With no removed patch at all the loss is 0 (not 0/0)."""
    if pred.ndim != 3 or mask.shape != pred.shape[:2]:
        raise ValueError(f"pred must be (B, L, p*p*C) and mask (B, L); got {tuple(pred.shape)} "
                         f"and {tuple(mask.shape)}")
    h, w = check_images(imgs, patch_size)
    B, L, P = pred.shape
    expected = (imgs.shape[0], h * w, patch_size * patch_size * imgs.shape[1])
    if (B, L, P) != expected:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but images {tuple(imgs.shape)} with "
                         f"patch size {patch_size} give patches of shape {expected}")
    if not (pred.is_floating_point() and imgs.is_floating_point()):
        raise ValueError(f"pred and images must be floating-point, got {pred.dtype} and {imgs.dtype}")
    if norm_pix_loss and P < 2:
        raise ValueError("norm_pix_loss needs patches of at least 2 values (unbiased variance)")
    if len({pred.device, imgs.device, mask.device}) != 1:
        raise ValueError(f"pred, images and mask are on different devices: {pred.device}, "
                         f"{imgs.device}, {mask.device}")
    impl = dispatch.resolve(kernels, pred)
    if impl == "triton":
        # The gradient is written only when backward can be asked for.
        write_grad = pred.requires_grad and torch.is_grad_enabled()
        mask = mask if mask.is_floating_point() else mask.float()
        loss, _g, _denom = _fwd_op(pred, imgs.detach(), mask.detach(), patch_size,
                                   bool(norm_pix_loss), write_grad)
        return loss
    dispatch.record(OP, impl)
    return masked_pixel_loss_torch(pred, imgs, mask, patch_size, norm_pix_loss)
