"""Bytes an op must move at the least (each input read once, each output written once),
the denominator of achieved bandwidth, and the datasheet HBM bandwidth of known GPUs.

The byte counts describe the op, not an implementation: the torch path moves more (it
writes a patchified copy of the images, a full target, ...), so both contenders are
measured against the same minimum."""

# Matched in order against torch.cuda.get_device_name(), specific names first. GB/s.
PEAK_HBM_GBPS = (
    ("H100 PCIe", 2000.0),
    ("H100 NVL", 3900.0),
    ("H100", 3350.0),  # SXM5
    ("GH200", 4000.0),
    ("H200", 4800.0),
    ("H800", 3350.0),
    ("B200", 8000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB
    ("L40S", 864.0),
    ("RTX 4090", 1008.0),
)

INDEX_BYTES = 8  # int64 ids


def spec_hbm_gbps(device_name: str) -> float | None:
    for key, gbps in PEAK_HBM_GBPS:
        if key in device_name:
            return gbps
    return None


def gather_bytes(B: int, K: int, patch_values: int, img_bytes: int) -> int:
    """Forward only (no gradient): the visible patches read, the (B, K, P) output written."""
    return 2 * B * K * patch_values * img_bytes + B * K * INDEX_BYTES


def unshuffle_bytes(B: int, L: int, K: int, D: int, x_bytes: int, param_bytes: int,
                    out_bytes: int) -> int:
    """Forward + backward. Forward reads x, ids_restore, pos_embed and the mask token once
    and writes (B, 1+L, D); backward reads the output gradient and ids_restore, writes
    grad x (the mask token's partial sums are negligible)."""
    fwd = (B * (1 + K) * D * x_bytes + B * L * INDEX_BYTES + (2 + L) * D * param_bytes
           + B * (1 + L) * D * out_bytes)
    bwd = B * (1 + L) * D * out_bytes + B * L * INDEX_BYTES + B * (1 + K) * D * x_bytes
    return fwd + bwd


def loss_bytes(B: int, L: int, K: int, patch_values: int, pred_bytes: int, img_bytes: int,
               mask_bytes: int = 4) -> int:
    """Forward + backward. Forward reads pred and the image pixels of the removed patches
    only and the mask, and writes the full gradient of pred; backward scales it (one read,
    one write)."""
    removed = B * (L - K) * patch_values
    fwd = removed * (pred_bytes + img_bytes) + B * L * mask_bytes + B * L * patch_values * pred_bytes
    bwd = 2 * B * L * patch_values * pred_bytes
    return fwd + bwd


def add_layer_norm_bytes(M: int, N: int, x_bytes: int, res_bytes: int, out_bytes: int,
                         param_bytes: int = 4) -> int:
    """Forward + backward of y = LayerNorm(x + residual) over M rows of N. Forward reads x,
    residual and the parameters, writes y, the new residual and two fp32 statistics per
    row; backward reads the new residual, the statistics, dy and the new residual's
    gradient and writes the gradient of x and, when its dtype differs, of the residual
    (the parameters' partial sums are negligible)."""
    h_bytes = max(x_bytes, res_bytes)
    fwd = M * N * (x_bytes + res_bytes + out_bytes + h_bytes) + 2 * N * param_bytes + 8 * M
    grads = x_bytes + (res_bytes if res_bytes != x_bytes else 0)
    bwd = M * N * (h_bytes + out_bytes + h_bytes + grads) + 8 * M + N * param_bytes
    return fwd + bwd


def bias_gelu_bytes(M: int, N: int, x_bytes: int, bias_bytes: int = 4) -> int:
    """Forward + backward of gelu(x + bias): forward reads x, writes the output; backward
    reads x and the output gradient, writes the gradient of x."""
    return 5 * M * N * x_bytes + 2 * N * bias_bytes
