"""Pictures worth looking at: MAE reconstructions (the paper's figure), confusion matrices
and loss curves, written as PNG files.

Uses matplotlib's object API (Figure + Agg canvas), never pyplot, so a library call
changes no global plotting state and needs no display. matplotlib is optional and imported
only when a picture is drawn: without it each picture is skipped with a PictureSkipped
warning (the save_* functions return None) and everything else runs."""
import math
import warnings
from pathlib import Path

import torch

from . import ops
from .files import atomic_save_file
from .settings import BackendUnavailable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The official visualisation's norm_pix_loss convention: unbiased variance, eps 1e-6.
_NORM_PIX_EPS = 1e-6


class PictureSkipped(UserWarning):
    """A picture was not drawn because matplotlib cannot be imported here."""


def matplotlib_missing() -> str | None:
    """None when matplotlib imports here, else why not, in a few words."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed"
    except Exception as e:  # a broken install: say what it raised
        return f"matplotlib does not import ({type(e).__name__}: {e})"
    return None


def skip_picture(path, why: str, stacklevel: int = 3) -> None:
    """The one warning line for a picture that is not drawn."""
    warnings.warn(f"picture {path} skipped: {why} (pip install matplotlib)", PictureSkipped,
                  stacklevel=stacklevel)


def require_matplotlib(what: str) -> None:
    """For a command whose only output is a picture: one clear error instead of a skip."""
    why = matplotlib_missing()
    if why:
        raise BackendUnavailable(f"{what} draws with matplotlib, but {why} (pip install matplotlib)")


def _figure(path, **kw):
    """A new matplotlib Figure, or None (with a PictureSkipped warning) without matplotlib."""
    why = matplotlib_missing()
    if why:
        skip_picture(path, why, stacklevel=4)
        return None
    from matplotlib.figure import Figure
    return Figure(**kw)


def _save(fig, path) -> Path:
    """Write the figure to path atomically (a half-written PNG never replaces a good one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    return atomic_save_file(lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi), path)


def _channel_stats(values, channels: int, what: str) -> torch.Tensor:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return torch.tensor(values).view(1, channels, 1, 1)
    if channels == 1:  # grey images shown with RGB statistics: use their average
        return torch.tensor([sum(values) / len(values)]).view(1, 1, 1, 1)
    raise ValueError(f"{what} has {len(values)} values but the images have {channels} channels")


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, mask_ratio: float = 0.75, seed: int = 0):
    """Run the MAE on imgs with a seeded mask. Returns (masked, reconstruction, pasted)
    as (B, C, H, W) tensors in the input's normalised space, on the CPU, float32.

    masked: removed patches set to 0 (the dataset mean after un-normalising);
    reconstruction: the decoder's prediction for every patch; pasted: the prediction for
    removed patches with the visible ones copied from the input."""
    param = next(model.parameters())
    imgs = imgs.to(device=param.device, dtype=param.dtype)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(imgs.shape[0], model.num_patches, generator=gen).to(imgs.device)
    was_training = model.training
    model.eval()
    try:
        _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    finally:
        model.train(was_training)
    pred = pred.float()
    if model.norm_pix_loss:
        # The decoder predicts each patch normalised by its own mean and std: undo that
        # with the true patch's statistics, as the official visualisation does.
        target = ops.patchify(imgs.float(), model.patch_size)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + _NORM_PIX_EPS) ** 0.5 + mean
    p, c = model.patch_size, model.in_chans
    rec = model.unpatchify(pred)
    mask_img = model.unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, p * p * c))
    x = imgs.float()
    masked = x * (1 - mask_img)
    pasted = masked + rec * mask_img
    return masked.cpu(), rec.cpu(), pasted.cpu()


def save_reconstructions(model, imgs: torch.Tensor, path, mask_ratio: float = 0.75, seed: int = 0,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Path | None:
    """PNG with one row per image: original | masked | reconstruction | reconstruction with
    the visible patches pasted back. imgs: (B, C, H, W) normalised with mean/std."""
    if imgs.ndim != 4 or imgs.shape[0] == 0:
        raise ValueError(f"imgs must be a non-empty (B, C, H, W) batch, got shape {tuple(imgs.shape)}")
    c = imgs.shape[1]
    m, s = _channel_stats(mean, c, "mean"), _channel_stats(std, c, "std")
    rows = imgs.shape[0]
    fig = _figure(path, figsize=(4 * 2.2, rows * 2.2), dpi=100)
    if fig is None:
        return None
    masked, rec, pasted = reconstruct(model, imgs, mask_ratio, seed)
    columns = [("original", imgs.detach().float().cpu()), (f"masked {mask_ratio:.0%}", masked),
               ("reconstruction", rec), ("reconstruction + visible", pasted)]
    for col, (title, batch) in enumerate(columns):
        batch = (batch * s + m).clamp(0, 1)
        for row in range(rows):
            ax = fig.add_subplot(rows, 4, row * 4 + col + 1)
            img = batch[row].permute(1, 2, 0).numpy()
            if c == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_confusion_matrix(cm, classes, path, title: str = "confusion matrix") -> Path | None:
    """cm[i, j] = number of samples of true class i predicted as class j."""
    cm = torch.as_tensor(cm).cpu()
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {tuple(cm.shape)} does not fit {n} classes")
    size = max(4.0, 0.45 * n + 2)
    fig = _figure(path, figsize=(size, size), dpi=100)
    if fig is None:
        return None
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(cm.numpy(), cmap="Blues", interpolation="nearest")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([str(c) for c in classes], rotation=90, fontsize=8)
    ax.set_yticklabels([str(c) for c in classes], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(cm.sum())
    acc = float(cm.diagonal().sum()) / total if total else 0.0
    ax.set_title(f"{title} (accuracy {acc:.1%}, n={total})", fontsize=10)
    if n <= 30:
        peak = float(cm.max()) if total else 1.0
        for i in range(n):
            for j in range(n):
                v = int(cm[i, j])
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                            color="white" if v > peak / 2 else "black")
    fig.tight_layout()
    return _save(fig, path)


def save_curves(series: dict, path, xlabel: str = "step", ylabel: str = "loss",
                title: str = "") -> Path | None:
    """series: name -> (xs, ys). One line per series on shared axes."""
    if not series:
        raise ValueError("save_curves needs at least one series")
    series = {name: (list(xs), list(ys)) for name, (xs, ys) in series.items()}
    for name, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r} has {len(xs)} x values and {len(ys)} y values")
    fig = _figure(path, figsize=(6, 4), dpi=100)
    if fig is None:
        return None
    ax = fig.add_subplot(1, 1, 1)
    for name, (xs, ys) in series.items():
        finite = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]
        if finite:
            ax.plot([x for x, _ in finite], [y for _, y in finite], label=str(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)
