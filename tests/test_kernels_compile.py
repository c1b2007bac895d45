"""Every Triton kernel compiled for a real GPU (CUDA sm_90, H100) on a machine without one.

The other kernel tests run in the interpreter, which accepts what the compiler refuses
(non-constexpr block shapes, dtype mismatches, ...). Here each kernel is compiled ahead
of time, to PTX and cubin with the ptxas that ships with Triton, with the argument types
the ops really launch it with (tests/kernel_compile_worker.py). The compile runs in a
process of its own: one that imported triton with TRITON_INTERPRET=1, like this one,
cannot lower triton.language's own @jit helpers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from fastmae.kernels import bias_gelu, gather, layer_norm, loss, unshuffle
from tests import kernel_compile_worker as worker

ROOT = Path(__file__).resolve().parents[1]
ARCH = 90  # H100


def kernels_here():
    """The @triton.jit kernels of fastmae.kernels, as this (interpreting) process sees them."""
    return sorted(name for module in (gather, unshuffle, loss, layer_norm, bias_gelu)
                  for name, obj in vars(module).items()
                  if isinstance(obj, triton.runtime.KernelInterface))


def compile_report(which, tmp_path_factory):
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(ARCH).path
    except Exception as e:
        pytest.skip(f"no ptxas to assemble for sm_{ARCH}: {e}")
    tmp = tmp_path_factory.mktemp(f"compile-{which}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "cache")  # cold: every kernel really compiles
    out = tmp / "report.json"
    proc = subprocess.run([sys.executable, worker.__file__, which, str(out), "--arch", str(ARCH)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"compile worker failed (ptxas {ptxas}):\n{proc.stderr[-6000:]}"
    report = json.loads(out.read_text())
    assert report["kernel_files"] == worker.kernel_files(), "the worker compiled other kernel sources"
    return report


@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    return compile_report("default", tmp_path_factory)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    return compile_report("full", tmp_path_factory)


def failures(report):
    """Why each specialisation is not a clean sm_90 binary: empty when all are."""
    bad = []
    for rec in report["results"]:
        what = f"{rec['kernel']} {rec['signature']} {rec['constexprs']} (from {rec['cases']})"
        if not rec["ok"]:
            bad.append(f"{what}: {rec['error']}")
            continue
        if not (rec["ptx_entry"] and rec["ptx_target"].startswith(f"sm_{ARCH}")):
            bad.append(f"{what}: PTX without the kernel's entry for sm_{ARCH} ({rec['ptx_target']})")
        if not (rec["cubin_elf"] and rec["cubin_bytes"] > 0):
            bad.append(f"{what}: no cubin")
        if rec["registers"] is None or rec["spill_stores"] is None:
            bad.append(f"{what}: no register/spill report from ptxas -v")
        elif rec["spill_stores"] or rec["spill_loads"]:
            bad.append(f"{what}: spills registers ({rec['spill_stores']} B stored, "
                       f"{rec['spill_loads']} B loaded, {rec['registers']} registers)")
    return bad


def specs(report, kernel):
    return [rec for rec in report["results"] if rec["kernel"] == kernel]


def test_vit_b16_bf16_step_compiles_every_kernel(default_report):
    # One bf16-autocast training step of a model with ViT-B/16's geometry at the kernels
    # (224 px, 196 patches of 768 values, 512-wide decoder) launches every kernel.
    assert default_report["kernels"] == kernels_here()
    assert sorted({rec["kernel"] for rec in default_report["results"]}) == kernels_here()
    assert failures(default_report) == []

    (g,) = specs(default_report, "_gather_fwd_kernel")
    assert g["signature"]["imgs_ptr"] == "*fp32" and g["signature"]["ids_ptr"] == "*i64"
    assert g["constexprs"] == {"s_iw": 1, "s_dk": 1, "C": 3, "P": 768, "PATCH": 16, "BLOCK": 1024}
    (u,) = specs(default_report, "_unshuffle_fwd_kernel")
    assert (u["signature"]["x_ptr"], u["signature"]["out_ptr"]) == ("*bf16", "*fp32")  # + fp32 pos
    assert (u["constexprs"]["BLOCK_D"], "D" in u["divisible_by_16"]) == (512, True)
    (ub,) = specs(default_report, "_unshuffle_bwd_kernel")
    assert ub["signature"]["gx_ptr"] == "*bf16" and ub["constexprs"]["MASK_GRAD"] is True
    (lo,) = specs(default_report, "_masked_pixel_loss_fwd_kernel")
    # the unscaled gradient g = 2 m (pred - t) is kept in fp32 (fp16-safe under loss scaling)
    assert (lo["signature"]["pred_ptr"], lo["signature"]["grad_ptr"]) == ("*bf16", "*fp32")
    assert {k: lo["constexprs"][k] for k in ("C", "PATCH", "BLOCK", "WRITE_GRAD")} == \
        {"C": 3, "PATCH": 16, "BLOCK": 1024, "WRITE_GRAD": True}
    (lb,) = specs(default_report, "_masked_pixel_loss_bwd_kernel")
    assert (lb["signature"]["g_ptr"], lb["signature"]["out_ptr"]) == ("*fp32", "*bf16")
    # LayerNorm: the bf16 branch output added to the fp32 residual stream, y written in bf16,
    # at the encoder's 768 and the decoder's 512 features
    ln = specs(default_report, "_add_layer_norm_fwd_kernel")
    fused = {(r["constexprs"]["BLOCK_N"], r["signature"]["x_ptr"], r["signature"]["res_ptr"],
              r["signature"]["y_ptr"]) for r in ln if r["constexprs"]["HAS_RESIDUAL"]}
    assert {(1024, "*bf16", "*fp32", "*bf16"), (512, "*bf16", "*fp32", "*bf16")} <= fused
    lnb = specs(default_report, "_add_layer_norm_bwd_kernel")
    assert any(r["constexprs"]["STORE_DR"] and r["signature"]["dx_ptr"] == "*bf16"
               and r["signature"]["dr_ptr"] == "*fp32" for r in lnb)
    # bias + GELU on the fc1 matmul output: bf16 activations, the fp32 bias parameter
    (bg,) = [r for r in specs(default_report, "_bias_gelu_fwd_kernel") if r["constexprs"]["BLOCK_N"] == 1024
             and r["signature"]["x_ptr"] == "*bf16" and "N" in r["divisible_by_16"]][:1]
    assert bg["signature"]["b_ptr"] == "*fp32"
    assert specs(default_report, "_bias_gelu_bwd_kernel")


def test_a_kernel_only_the_interpreter_accepts_fails_to_compile(default_report):
    # The control kernel's arange width is int() of a runtime argument: the interpreter runs it...
    out = torch.full((8,), -1, dtype=torch.int32)
    worker._runtime_width_kernel[(1,)](out, 8)
    assert torch.equal(out, torch.arange(8, dtype=torch.int32))
    # ...and the compiler, in the same worker that compiled the real kernels, refuses it.
    control = default_report["control"]
    assert control["ok"] is False
    assert control["error"].startswith("CompilationError") and "int(n)" in control["error"]
    (why,) = failures({"results": [control]})
    assert why.startswith("_runtime_width_kernel") and "int(n)" in why


@pytest.mark.slow
def test_every_launch_configuration_compiles(full_report):
    # fp32 / bf16-autocast / fp16-autocast training steps, eval, the ops on their own in
    # fp32, bf16 and fp16; 16 px and 14 px patches; norm_pix_loss; int32 and int64 indices.
    assert failures(full_report) == []

    def seen(kernel, *keys):
        """The (type or constexpr value of each key) combinations the kernel compiled with."""
        return {tuple(rec["constexprs"][k] if k in rec["constexprs"] else rec["signature"][k]
                      for k in keys) for rec in specs(full_report, kernel)}

    dtypes = {"*fp32", "*bf16", "*fp16"}
    assert seen("_gather_fwd_kernel", "imgs_ptr", "PATCH") >= {(d, p) for d in dtypes for p in (16, 14)}
    assert {ids for (ids,) in seen("_gather_fwd_kernel", "ids_ptr")} == {"*i32", "*i64"}
    assert {x for (x,) in seen("_unshuffle_fwd_kernel", "x_ptr")} == dtypes
    assert seen("_unshuffle_bwd_kernel", "MASK_GRAD") == {(True,), (False,)}
    assert {g for (g,) in seen("_unshuffle_bwd_kernel", "gx_ptr")} == dtypes
    assert seen("_masked_pixel_loss_fwd_kernel", "pred_ptr", "PATCH", "NORM_PIX") >= {
        (d, p, n) for d in dtypes for p in (16, 14) for n in (False, True)}
    assert {w for (w,) in seen("_masked_pixel_loss_fwd_kernel", "WRITE_GRAD")} == {True, False}
    assert {o for (o,) in seen("_masked_pixel_loss_bwd_kernel", "out_ptr")} == dtypes
    assert {x for (x,) in seen("_add_layer_norm_fwd_kernel", "x_ptr")} == dtypes
    assert seen("_add_layer_norm_fwd_kernel", "HAS_RESIDUAL", "HAS_BIAS") >= {
        (True, True), (False, True), (False, False)}
    assert {s for (s,) in seen("_add_layer_norm_bwd_kernel", "STORE_DR")} == {True, False}
    assert {x for (x,) in seen("_bias_gelu_fwd_kernel", "x_ptr")} == dtypes
    assert {x for (x,) in seen("_bias_gelu_bwd_kernel", "dx_ptr")} == dtypes
