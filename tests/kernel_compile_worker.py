"""Compile every Triton kernel of fastmae.kernels ahead of time for a CUDA GPU, with the
arguments the ops really launch them with, on a machine with no GPU and no driver.

The ops run on small CPU tensors with ViT geometry (224 px images, 16 px or 14 px
patches, a 512-wide decoder); each kernel launch is recorded instead of run, specialised
the way Triton's JIT specialises it on a GPU (dtypes, strides equal to 1, 16-byte
alignment and divisibility), compiled to PTX and assembled to cubin by the ptxas that
ships with Triton. The register and spill counts come from `ptxas -v`.

This must run in its own process with TRITON_INTERPRET unset: where triton was imported
with TRITON_INTERPRET=1, triton.language's own @jit helpers (tl.sum's combine function,
tl.cdiv, ...) are interpreter objects that the compiler cannot lower.

    python tests/kernel_compile_worker.py {default|full} OUT.json [--arch 90] [--dump DIR]
"""
import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

SETS = ("default", "full")


@triton.jit
def _runtime_width_kernel(out_ptr, n):
    # A control that runs in the interpreter but cannot compile: there a runtime
    # argument is a value Python's int() can read; in the compiler it has no value yet.
    offs = tl.arange(0, int(n))
    tl.store(out_ptr + offs, offs)


@dataclass
class Spec:
    """One specialisation of one kernel, and the cases that launch it."""
    kernel: object  # the JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: object
    cases: list = field(default_factory=list)

    def key(self):
        return (self.kernel.fn.__name__, repr(sorted(self.signature.items())),
                repr(sorted(self.constexprs.items())), repr(sorted(self.attrs.items())))


class Recorder:
    """Stands in for a JITFunction in its module: `kernel[grid](*args)` records the
    specialisation the launch would compile on the target instead of running it (the
    launcher's outputs stay unwritten; only the arguments matter here)."""

    def __init__(self, kernel, backend, specs, case):
        self.kernel, self.backend, self.specs, self.case = kernel, backend, specs, case  # case: a name
        self.binder = triton.runtime.jit.create_function_from_signature(
            kernel.signature, kernel.params, backend)

    def __getitem__(self, grid):
        return self.launch

    def launch(self, *args, **kwargs):
        # What JITFunction.run does before it compiles, with the target's backend.
        kwargs = dict(kwargs, debug=bool(self.kernel.debug or triton.knobs.runtime.debug),
                      instrumentation_mode=triton.knobs.compilation.instrumentation_mode)
        bound, specialization, options = self.binder(*args, **kwargs)
        options, signature, constexprs, attrs = self.kernel._pack_args(
            self.backend, kwargs, bound, specialization, options)
        spec = Spec(self.kernel, signature, constexprs, attrs, options)
        spec = self.specs.setdefault(spec.key(), spec)
        if self.case not in spec.cases:
            spec.cases.append(self.case)


def kernel_modules():
    from fastmae.kernels import bias_gelu, gather, layer_norm, loss, unshuffle
    return [gather, unshuffle, loss, layer_norm, bias_gelu]


def kernel_files():
    return sorted(os.path.realpath(module.__file__) for module in kernel_modules())


def jit_kernels(module):
    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, triton.runtime.jit.JITFunction)}


@contextlib.contextmanager
def recording(backend, specs, case):
    """Every kernel of fastmae.kernels replaced by a Recorder; the ops choose Triton
    for CPU tensors."""
    from fastmae.ops import dispatch
    saved = [(dispatch, "resolve", dispatch.resolve)]
    dispatch.resolve = lambda name, x: "torch" if dispatch.check_kernels(name) == "torch" else "triton"
    for module in kernel_modules():
        for name, kernel in jit_kernels(module).items():
            saved.append((module, name, kernel))
            setattr(module, name, Recorder(kernel, backend, specs, case))
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def vit(patch_size, norm_pix_loss=False):
    """ViT-B's geometry at the kernels (224 px, 768-wide encoder with a 3072-wide MLP,
    512-wide decoder) on a one-block model."""
    from fastmae.models.mae import MaskedAutoencoderViT
    return MaskedAutoencoderViT(img_size=224, patch_size=patch_size, embed_dim=768, depth=1, num_heads=12,
                                decoder_embed_dim=512, decoder_depth=1, decoder_num_heads=16,
                                norm_pix_loss=norm_pix_loss)


def train_step(patch_size, amp=None, norm_pix_loss=False, img_dtype=torch.float32):
    model = vit(patch_size, norm_pix_loss)
    imgs = torch.randn(2, 3, 224, 224).to(img_dtype)
    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        loss, _, _ = model(imgs)
    loss.backward()


def eval_forward(patch_size, img_dtype=torch.float32):
    model = vit(patch_size)
    imgs = torch.randn(2, 3, 224, 224).to(img_dtype)
    with torch.no_grad():
        model(imgs)  # loss without its gradient
        model.forward_features(imgs)  # gather of every patch, ids broadcast over the batch


def op_calls(patch_size, dtype):
    """The ops on their own, inputs all in one dtype: what a caller outside the model does."""
    from fastmae import ops
    p, L, D = patch_size, (224 // patch_size) ** 2, 512
    K = L // 4
    imgs = torch.randn(2, 3, 224, 224).to(dtype)
    ids = torch.rand(2, L).argsort(dim=1)
    ops.gather_visible_patches(imgs, ids[:, :K].to(torch.int32), p)
    x = torch.randn(2, K + 1, D, dtype=dtype, requires_grad=True)
    token = torch.randn(1, 1, D, dtype=dtype)  # frozen: no mask-token gradient
    pos = torch.randn(1, L + 1, D, dtype=dtype)
    out = ops.unshuffle_with_mask_token(x, token, ids.argsort(dim=1), pos)
    out.backward(torch.randn_like(out))
    pred = torch.randn(2, L, p * p * 3, dtype=dtype, requires_grad=True)
    mask = (torch.rand(2, L) < 0.75).float()
    for norm_pix in (False, True):
        ops.masked_pixel_loss(pred, imgs, mask, p, norm_pix).backward()
    # LayerNorm without a residual and without a bias (the model always has both)
    h = torch.randn(2, K + 1, 768, dtype=dtype, requires_grad=True)
    y, _ = ops.add_layer_norm(h, None, torch.randn(768, dtype=dtype, requires_grad=True), None)
    y.backward(torch.randn_like(y))
    z = torch.randn(2, K + 1, 3072, dtype=dtype, requires_grad=True)
    out = ops.bias_gelu(z, torch.randn(3072, dtype=dtype, requires_grad=True))
    out.backward(torch.randn_like(out))


def cases(which):
    """(name, thunk) pairs. default: a ViT-B/16 bf16 training step, which launches every
    kernel once; full: fp32/bf16/fp16, p=16 and p=14, norm_pix_loss, eval and op-level calls."""
    out = [("vit_b16 train bf16-autocast", lambda: train_step(16, torch.bfloat16))]
    if which == "full":
        out += [
            ("vit_b16 train fp32", lambda: train_step(16)),
            ("vit_b16 train fp16-autocast norm_pix", lambda: train_step(16, torch.float16, True)),
            ("vit_b16 train bf16-autocast bf16-images", lambda: train_step(16, torch.bfloat16,
                                                                           img_dtype=torch.bfloat16)),
            ("vit_14 train bf16-autocast norm_pix", lambda: train_step(14, torch.bfloat16, True)),
            ("vit_14 train fp32", lambda: train_step(14)),
            ("vit_b16 eval fp32", lambda: eval_forward(16)),
            ("vit_14 eval bf16-images", lambda: eval_forward(14, torch.bfloat16)),
        ]
        for p in (16, 14):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                out.append((f"ops p={p} {str(dtype).split('.')[-1]}",
                            lambda p=p, dtype=dtype: op_calls(p, dtype)))
    return out


PTXAS_USE = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_spec(spec, target, dump=None):
    """triton.compile of one specialisation -> a JSON-able record; with `dump`, its
    TTIR, TTGIR, LLVM IR, PTX and cubin are written to that folder."""
    names = spec.kernel.arg_names
    rec = dict(kernel=spec.kernel.fn.__name__, cases=spec.cases, signature=spec.signature,
               constexprs={names[k[0]]: (v.value if isinstance(v, tl.constexpr) else v)
                           for k, v in spec.constexprs.items()},
               divisible_by_16=[names[k[0]] for k, v in spec.attrs.items() if v])
    src = triton.compiler.ASTSource(spec.kernel, spec.signature, spec.constexprs, spec.attrs)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=spec.options.__dict__)
    except Exception as e:  # reported, not raised: the test names every failure
        rec.update(ok=False, error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start)
        return rec
    rec["seconds"] = time.perf_counter() - start
    if dump:
        stem = os.path.join(dump, f"{spec.kernel.fn.__name__}-{compiled.hash[:10]}")
        for ext in ("ttir", "ttgir", "llir", "ptx", "cubin"):
            with open(f"{stem}.{ext}", "wb" if ext == "cubin" else "w") as f:
                f.write(compiled.asm[ext])
        rec["dumped"] = stem
    ptx, cubin = compiled.asm.get("ptx", ""), compiled.asm.get("cubin", b"")
    regs, spills = PTXAS_USE.search(log.getvalue()), PTXAS_SPILL.search(log.getvalue())
    rec.update(ok=True, error=None, ptx_entry=f".entry {spec.kernel.fn.__name__}(" in ptx,
               ptx_target=(re.search(r"^\.target (\S+)", ptx, re.M) or [None, None])[1],
               ptx_bytes=len(ptx), cubin_bytes=len(cubin), cubin_elf=cubin[:4] == b"\x7fELF",
               shared=compiled.metadata.shared, num_warps=compiled.metadata.num_warps,
               registers=int(regs[1]) if regs else None,
               spill_stores=int(spills[1]) if spills else None,
               spill_loads=int(spills[2]) if spills else None)
    return rec


def control(target, backend):
    """The control kernel, compiled like the others: its failure must be reported."""
    spec = Spec(_runtime_width_kernel, {"out_ptr": "*i32", "n": "i32"}, {}, {},
                backend.parse_options({}), ["control"])
    return compile_spec(spec, target)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=SETS)
    parser.add_argument("out")
    parser.add_argument("--arch", type=int, default=90, help="compute capability: 90 = H100")
    parser.add_argument("--dump", metavar="DIR", help="write each kernel's IRs, PTX and cubin here")
    args = parser.parse_args(argv)
    if triton.knobs.runtime.interpret or not isinstance(_runtime_width_kernel, triton.runtime.jit.JITFunction):
        sys.exit("TRITON_INTERPRET must be unset for an ahead-of-time compile")
    # Triton prints the `ptxas -v` log (registers, spills) when asked; compile_spec reads it.
    triton.knobs.nvidia.dump_ptxas_log = True
    target = triton.backends.compiler.GPUTarget("cuda", args.arch, 32)
    backend = triton.compiler.make_backend(target)
    torch.manual_seed(0)
    specs = {}
    kernels = sorted(name for module in kernel_modules() for name in jit_kernels(module))
    for name, run in cases(args.which):
        with recording(backend, specs, name):
            run()
    start = time.perf_counter()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    results = [compile_spec(spec, target, args.dump) for spec in specs.values()]
    report = dict(target=f"cuda sm_{args.arch}", triton=triton.__version__, kernels=kernels,
                  kernel_files=kernel_files(),
                  cases=[name for name, _ in cases(args.which)], results=results,
                  control=control(target, backend), compile_seconds=time.perf_counter() - start)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
