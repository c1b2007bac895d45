"""One optimizer step that reads nothing back to the host.

A step whose loss is not finite on any rank is skipped on the device: the fused AdamW
kernel takes a `found_inf` flag and leaves parameters, moments and its step count alone
when it is set (the same mechanism GradScaler uses), so no Python branch has to look at
the loss. The flags the loop acts on (skipped, steps skipped in a row, the last good loss)
stay on the device; the loop reads them only on logging and saving steps. With no host
sync and no data-dependent branch, the step can be captured in a CUDA graph."""
from dataclasses import dataclass

import torch

from . import distributed


@dataclass
class StepState:
    """Device-side flags of the last step."""
    skipped: torch.Tensor      # 1.0 when the last step was skipped
    bad_in_row: torch.Tensor   # consecutive skipped steps
    loss: torch.Tensor         # mean loss over ranks of the last good step (nan before one)

    @classmethod
    def new(cls, device: torch.device) -> "StepState":
        return cls(torch.zeros((), device=device), torch.zeros((), device=device),
                   torch.full((), float("nan"), device=device))

    def read(self) -> tuple[bool, int, float]:
        """The host copy: one sync, for logging and saving steps only."""
        skipped, bad, loss = torch.stack([self.skipped, self.bad_in_row, self.loss]).tolist()
        return skipped > 0, int(bad), loss


def backward(loss: torch.Tensor, accum_iter: int, scaler) -> torch.Tensor:
    """Backward of one micro-batch; returns its contribution to the window's loss."""
    scaled = loss / accum_iter
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss.detach().float() / accum_iter


def optimizer_step(model, optimizer, scaler, clip_grad: float | None, window_loss: torch.Tensor,
                   state: StepState, dist) -> None:
    """Apply the window's gradients unless its loss was non-finite on some rank."""
    bad = (~torch.isfinite(window_loss)).float()
    bad = distributed.all_reduce_max(bad, dist)
    mean_loss = distributed.all_reduce_mean(torch.nan_to_num(window_loss), dist)
    if scaler is not None:
        # GradScaler skips on non-finite gradients itself (which a non-finite loss gives)
        # and hands its own found_inf to the fused optimizer.
        scaler.unscale_(optimizer)
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = bad
            optimizer.step()
            del optimizer.found_inf
        elif not bad.item():  # no fused kernel on this device: the skip costs one sync
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.skipped.copy_(bad)
    state.bad_in_row.copy_((state.bad_in_row + bad) * bad)
    state.loss.copy_(torch.where(bad > 0, state.loss, mean_loss))
