"""Feature novelty: how far an image's (and each patch's) encoder features lie from the
reference set's. Features are the encoder's patch tokens on the whole image (no masking);
the image feature is their mean (MAE's CLS token alone is a weak kNN feature)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.vit import stream_after

try:  # faiss is optional: exact L2 search, faster on large banks
    import faiss  # type: ignore
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None


CENTERING = ("image", "local", "none")  # what each patch feature is measured against
LOCAL_RADIUS = 2  # "local": the patches within 2 grid steps (a 5 x 5 window) of each patch


def local_contrast(tokens: torch.Tensor, grid: tuple[int, int], radius: int = LOCAL_RADIUS) -> torch.Tensor:
    """(B, L, D) patch tokens minus the mean of their neighbours within `radius` grid steps
    (themselves excluded; the border repeats outward)."""
    b, L, d = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, d, *grid)
    k = 2 * radius + 1
    window = F.avg_pool2d(F.pad(x, (radius,) * 4, mode="replicate"), k, 1) * (k * k)
    context = (window - x) / (k * k - 1)
    return (x - context).flatten(2).transpose(1, 2)


@torch.no_grad()
def encoder_features(model, imgs: torch.Tensor, layer: int | None = None,
                     center: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """(image features (B, D), patch features (B, L, D)), float32, from the encoder's patch
    tokens on the whole image (model.forward_features, the stable public API). The image
    feature is the tokens' mean. Patch features are the final tokens, or with `layer` the
    residual stream after that many blocks (earlier layers keep more local detail), each
    measured against (`center`) its image's mean ("image": what the whole picture shares,
    lighting and colour cast, does not count as novelty), its neighbours' mean ("local": a
    patch counts by how it differs from its surroundings, so a stain or a notch stands out
    even where lighting varies across the picture) or nothing ("none")."""
    tokens = model.forward_features(imgs)[:, 1:].float()                # (B, L, D)
    mean = tokens.mean(1)
    if layer is not None:
        ids = torch.arange(model.num_patches, device=imgs.device).expand(imgs.shape[0], -1)
        x = model.embed_patches(imgs, ids)
        tokens = stream_after(model.blocks, x, int(layer), model.kernels)[:, 1:].float()
    if center == "image":
        tokens = tokens - tokens.mean(1, keepdim=True)
    elif center == "local":
        tokens = local_contrast(tokens, model.grid_size)
    return mean, tokens


class NearestNeighbours:
    """Distances from queries to their k nearest rows of a fixed bank (faiss when installed,
    else chunked torch.cdist)."""

    def __init__(self, bank: torch.Tensor):
        self.bank = bank.float().contiguous()
        self.index = None
        if faiss is not None and self.bank.device.type == "cpu":
            self.index = faiss.IndexFlatL2(self.bank.shape[1])
            self.index.add(self.bank.numpy())

    @property
    def backend(self) -> str:
        return "faiss" if self.index is not None else "torch"

    def search(self, query: torch.Tensor, k: int = 1, chunk: int = 1024):
        """(distances (N, k), bank row indices (N, k)) of each query row's k nearest, on the CPU."""
        k = min(k, self.bank.shape[0])
        query = query.float()
        if self.index is not None:
            d2, idx = self.index.search(query.cpu().contiguous().numpy(), k)
            return torch.from_numpy(d2).clamp_min(0).sqrt(), torch.from_numpy(idx).long()
        bank = self.bank.to(query.device)
        dists, ids = [torch.zeros(0, k)], [torch.zeros(0, k, dtype=torch.long)]
        for start in range(0, query.shape[0], chunk):
            d = torch.cdist(query[start:start + chunk], bank).topk(k, dim=1, largest=False)
            dists.append(d.values.cpu())
            ids.append(d.indices.cpu())
        return torch.cat(dists), torch.cat(ids)

    def distances(self, query: torch.Tensor, k: int = 1) -> torch.Tensor:
        """(N,) mean Euclidean distance of each query row to its k nearest bank rows."""
        return self.search(query, k)[0].mean(1)


def subsample(n: int, limit: int, seed: int = 0) -> torch.Tensor:
    """Indices of at most `limit` of n rows, a seeded random choice (the patch bank's size cap)."""
    if n <= limit:
        return torch.arange(n)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:limit].sort().values
