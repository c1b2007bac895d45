"""The byte and FLOP model of a training step: where a GPU would spend the step's time,
estimated on any machine.

One step (forward, backward, optimizer) runs under a TorchDispatchMode that records, per
aten op and per custom op (fastmae's fused ops are custom ops, so each counts as one
kernel), the FLOPs (torch.utils.flop_counter's formulas) and the bytes of the tensors it
reads and writes. Views cost nothing. The forward runs under CUDA's autocast policy,
emulated op by op (below) so that a CPU records what a GPU would move: LayerNorm, softmax
and the loss in fp32, matmuls in bf16, everything else in its inputs' dtype.

The roofline time of one op on a GPU is max(flops / peak, bytes / bandwidth) plus a fixed
launch cost; a step is the sum. Everything is linear in the batch size (weights and
optimizer state are a constant, activations grow with the batch), so two small batches
give every op's cost at any batch exactly. These are estimates, not measurements."""
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..settings import amp_dtype

aten = torch.ops.aten


@dataclass(frozen=True)
class GPU:
    name: str
    peak_flops: float      # dense bf16 tensor-core FLOP/s, datasheet
    bandwidth: float       # HBM bytes/s, datasheet


GPUS = {"h100-sxm": GPU("NVIDIA H100 SXM", 989.4e12, 3.35e12),
        "h200": GPU("NVIDIA H200", 989.4e12, 4.8e12)}
LAUNCH_S = 4e-6  # per kernel: launch plus the tail of a short kernel

GEMMS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution, aten._convolution,
         aten.convolution_backward, aten._scaled_mm}
ATTENTION = {aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
             aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_flash_attention_for_cpu,
             aten._scaled_dot_product_flash_attention_backward,
             aten._scaled_dot_product_efficient_attention_backward,
             aten._scaled_dot_product_cudnn_attention_backward,
             aten._scaled_dot_product_flash_attention_for_cpu_backward}
FREE = {aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided,
        aten._unsafe_view, aten.lift_fresh, aten.detach, aten._local_scalar_dense,
        aten.set_, aten.resize_}

FLOPS = dict(flop_counter.flop_registry)
# The CPU flash kernel has the GPU flash kernel's signature and arithmetic.
FLOPS[aten._scaled_dot_product_flash_attention_for_cpu] = \
    FLOPS[aten._scaled_dot_product_flash_attention]
FLOPS[aten._scaled_dot_product_flash_attention_for_cpu_backward] = \
    FLOPS[aten._scaled_dot_product_flash_attention_backward]


def kind_of(func) -> str:
    packet = func._overloadpacket
    if func.namespace not in ("aten", "prims"):
        return "fused"  # a custom op: one kernel that reads its inputs and writes its outputs
    if packet in GEMMS:
        return "gemm"
    if packet in ATTENTION:
        return "attention"
    name = packet.__name__
    if name.startswith("_fused_adam") or name.startswith("_foreach"):
        return "optimizer"
    return "glue"


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches for t: broadcast (stride-0) dimensions are read once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        n *= size if stride != 0 else 1
    return n * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


@dataclass
class OpCost:
    op: str
    kind: str
    flops: float
    bytes_read: float
    bytes_written: float

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    def seconds(self, gpu: GPU) -> float:
        return max(self.flops / gpu.peak_flops, self.bytes / gpu.bandwidth) + LAUNCH_S


class TrafficMode(TorchDispatchMode):
    """Records an OpCost for every op that would launch a kernel."""

    def __init__(self):
        super().__init__()
        self.ops: list[OpCost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if func.is_view or packet in FREE or func.namespace == "profiler":
            return out
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        flops = FLOPS[packet](*args, **kwargs, out_val=out) if packet in FLOPS else 0
        self.ops.append(OpCost(str(packet).replace("aten.", ""), kind_of(func), float(flops),
                               float(sum(tensor_bytes(t) for t in inputs)),
                               float(sum(tensor_bytes(t) for t in outputs))))
        return out


# CUDA autocast's cast policy (aten/src/ATen/autocast_mode.cpp), for the functions an
# MAE step calls. Functions not listed run in their inputs' dtype, as under autocast.
LOWER = {"linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "baddbmm",
         "conv2d", "convolution", "einsum", "scaled_dot_product_attention"}
FP32 = {"layer_norm", "group_norm", "softmax", "log_softmax", "mse_loss", "pow", "__pow__",
        "__rpow__", "exp", "log", "rsqrt", "reciprocal", "norm", "logsumexp", "erfinv",
        "cross_entropy", "nll_loss", "kl_div", "l1_loss", "smooth_l1_loss", "cumsum", "sum", "prod"}
PROMOTE = {"cat", "stack"}
REDUCED = (torch.float16, torch.bfloat16)


class CudaAutocastPolicy(TorchFunctionMode):
    """torch.autocast("cuda", dtype) as far as its casts go, on any device."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in LOWER:
            args, kwargs = _cast((args, kwargs), lambda t: t.is_floating_point(), self.dtype)
        elif name in FP32:
            reduced = any(t.dtype in REDUCED for t in _tensors((args, kwargs)))
            if reduced:
                args, kwargs = _cast((args, kwargs), lambda t: t.dtype in REDUCED, torch.float32)
        elif name in PROMOTE:
            floats = [t.dtype for t in _tensors((args, kwargs)) if t.is_floating_point()]
            if len(set(floats)) > 1:
                widest = max(floats, key=lambda d: torch.finfo(d).bits)
                args, kwargs = _cast((args, kwargs), lambda t: t.is_floating_point(), widest)
        return func(*args, **kwargs)


def _cast(tree, pick, dtype):
    def one(x):
        if isinstance(x, torch.Tensor) and pick(x) and x.dtype != dtype:
            return x.to(dtype)
        if isinstance(x, (list, tuple)):
            return type(x)(one(y) for y in x)
        if isinstance(x, dict):
            return {k: one(v) for k, v in x.items()}
        return x
    return one(tree)


def record_step(model: torch.nn.Module, optimizer, imgs: torch.Tensor, loss_fn,
                precision: str = "bf16") -> list[OpCost]:
    """The ops of one steady-state training step. `loss_fn(model, imgs) -> loss`; the
    forward runs under the CUDA autocast policy of `precision`, backward and the optimizer
    outside it. A first, unrecorded step creates the optimizer state, as in a real run."""
    amp = amp_dtype(precision)

    def step():
        if amp is None:
            loss = loss_fn(model, imgs)
        else:
            # The device's own autocast tells autocast-aware ops (fastmae's fused norm writes
            # its output in the autocast dtype) that they run under autocast; the policy on
            # top makes its casts CUDA's.
            with torch.autocast(imgs.device.type, dtype=amp), CudaAutocastPolicy(amp):
                loss = loss_fn(model, imgs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with TrafficMode() as mode:
        step()
    return mode.ops


def extrapolate(small: list[OpCost], large: list[OpCost], b_small: int, b_large: int,
                batch: int) -> list[OpCost]:
    """Every op's cost at `batch` from its cost at two batch sizes (each is linear in it)."""
    if [o.op for o in small] != [o.op for o in large]:
        raise RuntimeError("the step ran different ops at the two batch sizes; cannot extrapolate")
    t = (batch - b_small) / (b_large - b_small)

    def at(a: float, b: float) -> float:
        return max(0.0, a + (b - a) * t)

    return [OpCost(a.op, a.kind, at(a.flops, b.flops), at(a.bytes_read, b.bytes_read),
                   at(a.bytes_written, b.bytes_written)) for a, b in zip(small, large)]


def summarize(ops: list[OpCost], batch: int, train_flops_per_image: float | None = None) -> dict:
    """Totals per image by kind, the roofline step time on each GPU and the costliest ops."""
    by_kind = defaultdict(lambda: {"flops": 0.0, "bytes": 0.0, "launches": 0})
    for o in ops:
        k = by_kind[o.kind]
        k["flops"] += o.flops
        k["bytes"] += o.bytes
        k["launches"] += 1
    per_image = {kind: {"gflop": v["flops"] / batch / 1e9, "mbytes": v["bytes"] / batch / 1e6,
                        "launches": v["launches"]} for kind, v in sorted(by_kind.items())}
    non_gemm = sum(v["bytes"] for kind, v in by_kind.items() if kind not in ("gemm", "attention"))
    gpus = {}
    for key, gpu in GPUS.items():
        seconds = sum(o.seconds(gpu) for o in ops)
        time_by_kind = defaultdict(float)
        for o in ops:
            time_by_kind[o.kind] += o.seconds(gpu)
        row = {"step_ms": seconds * 1e3, "img_per_s": batch / seconds,
               "ms_by_kind": {k: v * 1e3 for k, v in sorted(time_by_kind.items())}}
        if train_flops_per_image:
            row["mfu"] = batch / seconds * train_flops_per_image / gpu.peak_flops
        gpus[key] = row
    grouped = defaultdict(lambda: [0.0, 0.0, 0])
    for o in ops:
        g = grouped[(o.op, o.kind)]
        g[0] += o.bytes
        g[1] += o.flops
        g[2] += 1
    top = sorted(grouped.items(), key=lambda kv: -kv[1][0])[:15]
    return {"batch": batch, "launches": len(ops),
            "gflop_per_image": sum(o.flops for o in ops) / batch / 1e9,
            "mbytes_per_image": sum(o.bytes for o in ops) / batch / 1e6,
            "non_gemm_mbytes_per_image": non_gemm / batch / 1e6,
            "per_image_by_kind": per_image, "gpus": gpus,
            "top_ops_by_bytes": [{"op": op, "kind": kind, "mbytes_per_image": b / batch / 1e6,
                                  "gflop_per_image": f / batch / 1e9, "calls": n}
                                 for (op, kind), (b, f, n) in top]}


def compare(summaries: dict[str, dict], baseline: str = "reference") -> dict:
    """Ratios of every contender to the baseline: non-GEMM bytes and estimated speed."""
    base = summaries[baseline]
    out = {}
    for name, s in summaries.items():
        if name == baseline:
            continue
        out[name] = {"non_gemm_bytes_vs_" + baseline: s["non_gemm_mbytes_per_image"]
                     / base["non_gemm_mbytes_per_image"],
                     **{f"speedup_{gpu}": s["gpus"][gpu]["img_per_s"] / base["gpus"][gpu]["img_per_s"]
                        for gpu in GPUS}}
    return out

