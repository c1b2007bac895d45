"""Reconstruction pictures, confusion matrices and curves."""
import pytest
import torch
from PIL import Image

from fastmae import ops
from fastmae.pictures import (reconstruct, save_confusion_matrix, save_curves,
                              save_reconstructions)

from .downstream_helpers import tiny_mae


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruct_pastes_visible_patches(norm_pix):
    model = tiny_mae(norm_pix_loss=norm_pix)
    imgs = torch.randn(2, 3, 16, 16)
    masked, rec, pasted = reconstruct(model, imgs, mask_ratio=0.75, seed=3)
    # the same seed gives the same mask; the mask keeps int(16 * 0.25) = 4 patches
    gen = torch.Generator().manual_seed(3)
    noise = torch.rand(2, 16, generator=gen)
    _, pred, mask = model(imgs, 0.75, noise)
    assert int((mask == 0).sum()) == 2 * 4
    p_in, p_pasted, p_masked = (ops.patchify(t, 4) for t in (imgs, pasted, masked))
    keep = mask == 0
    torch.testing.assert_close(p_pasted[keep], p_in[keep])
    assert (p_masked[~keep] == 0).all()
    pred = pred.detach()
    if norm_pix:  # undone with each patch's own statistics
        m, v = p_in.mean(-1, keepdim=True), p_in.var(-1, keepdim=True)
        pred = pred * (v + 1e-6) ** 0.5 + m
    torch.testing.assert_close(ops.patchify(rec, 4), pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p_pasted[~keep], pred[~keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_save_reconstructions_png(tmp_path, in_chans):
    model = tiny_mae(in_chans=in_chans)
    out = save_reconstructions(model, torch.randn(3, in_chans, 16, 16), tmp_path / "sub" / "r.png",
                               mask_ratio=0.5, seed=1)
    w, h = _png(out)
    assert w > h  # four columns, three rows
    assert not list((tmp_path / "sub").glob(".*tmp*"))


def test_save_reconstructions_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        save_reconstructions(tiny_mae(), torch.randn(0, 3, 16, 16), tmp_path / "r.png")
    with pytest.raises(ValueError, match="mean has 2 values"):
        save_reconstructions(tiny_mae(), torch.randn(1, 3, 16, 16), tmp_path / "r.png",
                             mean=(0.5, 0.5), std=(0.2, 0.2))


def test_confusion_matrix_and_curves(tmp_path):
    cm = torch.tensor([[5, 1, 0], [0, 6, 0], [2, 0, 4]])
    _png(save_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png"))
    with pytest.raises(ValueError, match="does not fit 2 classes"):
        save_confusion_matrix(cm, ["a", "b"], tmp_path / "cm2.png")
    _png(save_curves({"loss": ([0, 1, 2], [1.0, 0.5, float("nan")]), "b": ([0, 1], [2, 1])},
                     tmp_path / "c.png", title="t"))
    with pytest.raises(ValueError, match="at least one"):
        save_curves({}, tmp_path / "d.png")
    with pytest.raises(ValueError, match="2 x values and 1 y"):
        save_curves({"x": ([0, 1], [1])}, tmp_path / "d.png")
