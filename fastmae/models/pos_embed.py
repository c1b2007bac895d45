"""Fixed 2-D sin-cos position embeddings, as in the official MAE code (which follows MoCo v3).

Half the channels encode the column index, half the row index; each half is
[sin(pos * omega), cos(pos * omega)] with omega = 1 / 10000^(2i/d). Computed in
float64 and cast once, so fastmae and the official numpy version agree to the bit
after the cast to float32."""
import torch

from ..settings import ConfigError


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) embedding."""
    if dim % 2:
        raise ConfigError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_hw: tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """(grid_h * grid_w [+1], dim) float32 embedding; row-major over the patch grid."""
    if dim % 4:
        raise ConfigError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    gh, gw = grid_hw
    # The official code meshgrids (w, h): the first half of the channels encodes the column.
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def interpolate_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int],
                          new_grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Resize a (1, prefix + gh*gw, D) position embedding to another patch grid (bicubic),
    keeping the prefix (cls) tokens, as the official fine-tuning code does."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic",
                                           align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
