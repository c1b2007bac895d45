"""Perceptual hashes and their near-duplicate index.

phash: the DCT hash (as the imagehash library's phash): grayscale, resized to 32x32, 2-D
DCT-II, the 8x8 lowest frequencies compared with their median -> 64 bits. Resizing,
re-encoding and small crops move few bits; different pictures differ in ~32.

near_pairs finds every pair within Hamming distance `radius` without comparing all pairs
(multi-index hashing, Norouzi et al. 2012): see its docstring."""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np
from PIL import Image

HASH_SIZE, SIDE = 8, 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    m[0] /= np.sqrt(2)
    return m * np.sqrt(2 / n)


_DCT = _dct_matrix(SIDE)


def phash(img: Image.Image) -> int:
    """The 64-bit DCT perceptual hash of a picture, as an int."""
    g = np.asarray(img.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ g @ _DCT.T)[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


BANDS, BAND_BITS = 4, 16


def _flip_masks(bits: int, width: int) -> np.ndarray:
    """Every value of `width` bits with at most `bits` ones (the XOR probes of one band)."""
    masks = [0]
    for k in range(1, bits + 1):
        masks += [sum(1 << i for i in c) for c in combinations(range(width), k)]
    return np.array(masks, dtype=np.int64)


def near_pairs(hashes, radius: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every i < j with hamming(hashes[i], hashes[j]) <= radius.

    Multi-index hashing: the 64 bits are 4 bands of 16; a pair within `radius` differs in
    at most radius // 4 bits of some band (pigeonhole), so each band's table is probed at
    every value within that many bit flips (a dense table per band, vectorised over all hashes). Work ~ n log n per probe plus the candidates found, never n²."""
    if not 0 <= radius <= 19:
        raise ValueError(f"radius must be in [0, 19], got {radius}")
    h = np.array([int(x) for x in hashes], dtype=np.uint64)
    n = len(h)
    if n < 2:
        return []
    masks = _flip_masks(radius // BANDS, BAND_BITS)
    found_i, found_j = [], []
    for band in range(BANDS):
        keys = ((h >> np.uint64(band * BAND_BITS)) & np.uint64(0xFFFF)).astype(np.int64)
        # a dense table of the band: the hashes with key k are order[start[k]:start[k] + count[k]]
        order = np.argsort(keys, kind="stable")
        count = np.bincount(keys, minlength=1 << BAND_BITS)
        start = np.cumsum(count) - count
        for mask in masks:
            q = keys ^ mask
            cnt = count[q]
            total = int(cnt.sum())
            if total == 0:
                continue
            qi = np.repeat(np.arange(n), cnt)
            offs = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            cj = order[np.repeat(start[q], cnt) + offs]
            keep = qi < cj
            qi, cj = qi[keep], cj[keep]
            ok = _popcount(h[qi] ^ h[cj]) <= radius
            found_i.append(qi[ok])
            found_j.append(cj[ok])
    if not found_i:
        return []
    pair = np.unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))
    ii, jj = pair // n, pair % n
    d = _popcount(h[ii] ^ h[jj])
    return list(zip(ii.tolist(), jj.tolist(), d.tolist()))


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).astype(np.int64)


def groups(n: int, pairs) -> list[list[int]]:
    """Connected components (union-find) of the pairs, each sorted, components of size >= 2."""
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, *_ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comp: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        comp[find(i)].append(i)
    return sorted((sorted(c) for c in comp.values() if len(c) > 1), key=lambda c: c[0])
