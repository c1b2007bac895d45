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


class MaskedPixelLoss(torch.autograd.Function):
    """The kernel writes d loss / d pred during the forward pass; backward only scales it.
    No gradient flows to the images or the mask (data, not parameters)."""

    @staticmethod
    def forward(ctx, pred, imgs, mask, patch_size, norm_pix_loss, write_grad):
        from ..kernels import loss as loss_kernels
        loss, grad = loss_kernels.masked_pixel_loss_fwd(pred, imgs, mask, patch_size, norm_pix_loss,
                                                        write_grad=write_grad)
        if grad is not None:
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None, None


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
    dispatch.record(OP, impl)
    if impl == "triton":
        # The gradient is written only when backward can be asked for.
        write_grad = pred.requires_grad and torch.is_grad_enabled()
        return MaskedPixelLoss.apply(pred, imgs.detach(), mask.detach(), patch_size,
                                     bool(norm_pix_loss), write_grad)
    return masked_pixel_loss_torch(pred, imgs, mask, patch_size, norm_pix_loss)
