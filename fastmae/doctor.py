"""What this machine can run: versions, the GPU, whether Triton compiles and launches a
kernel, which attention backends really run, whether DALI's GPU decoder works, and what
`auto` chooses for kernels, attention and loader. `fastmae doctor` prints it.

Every check is tried, not inferred from what is installed, and every check is fenced: a
missing or broken optional package becomes a line saying what it disables, never an
exception. The Triton checks run in a child process, so a compiler crash or a hang
(bounded by a timeout) cannot take the report down with it."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import traceback

import torch

from . import __version__
from .settings import CHOICES, activation_dtype, resolve_device, resolve_precision

# Optional packages: import name -> (label, what fastmae loses without it).
OPTIONAL = {
    "triton": ("triton", "the Triton kernels: fastmae's ops run their torch implementation"),
    "nvidia.dali": ("nvidia-dali", "the DALI loader: `auto` reads images with torchvision"),
    "flash_attn": ("flash-attn", "flash-attn attention: `auto` uses PyTorch SDPA"),
    "transformers": ("transformers", "the Hugging Face contender of `fastmae bench` and HF ViTMAE "
                                     "weights (from_hf_vitmae, apply_to on HF models)"),
    "timm": ("timm", "no fastmae feature (timm weights are written without it); only the tests "
                     "that load exports into timm or build the official models_mae blocks"),
    "matplotlib": ("matplotlib", "pictures (reconstructions, curves, confusion matrices, "
                                 "`bench --plot`): each is skipped with a warning"),
}
FA4_DIST = "flash-attn-4"
TRITON_TIMEOUT_S = 40
# Attention probe: ViT-B/16's encoder shape per head (50 tokens, head size 64).
ATTN_SHAPE = (2, 2, 50, 64)  # (B, H, N, hd)


def _error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _status(status: str, detail: str = "", **extra) -> dict:
    return {"status": status, "detail": detail, **extra}


# ---------------------------------------------------------------- versions

def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package(name: str) -> dict:
    """Import `name` and say its version, or why it does not import. The import is what
    counts: a distribution whose module does not import is as good as missing."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        # The package itself (or a parent of it) is absent; a dependency missing is an error.
        absent = e.name is not None and (name == e.name or name.startswith(e.name + "."))
        return {"ok": False, "version": None, "error": "not installed" if absent else _error(e)}
    except Exception as e:  # a broken install (a CUDA library missing, an ABI mismatch)
        return {"ok": False, "version": None, "error": _error(e)}
    version = getattr(module, "__version__", None)
    return {"ok": True, "version": str(version) if version is not None else None, "error": None}


def versions() -> dict:
    """name -> {"ok", "version", "error"} for python, torch and its CUDA/cuDNN, and every
    optional package (flash-attn 2 and FA4 apart)."""
    out = {"fastmae": {"ok": True, "version": __version__, "error": None},
           "python": {"ok": True, "version": platform.python_version(), "error": None},
           "torch": {"ok": True, "version": torch.__version__, "error": None},
           "cuda": {"ok": torch.version.cuda is not None, "version": torch.version.cuda,
                    "error": None if torch.version.cuda else "this torch build has no CUDA"}}
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["cudnn"] = {"ok": cudnn is not None, "version": None if cudnn is None else str(cudnn),
                        "error": None if cudnn else "cuDNN is not available to torch"}
    except Exception as e:
        out["cudnn"] = {"ok": False, "version": None, "error": _error(e)}
    out["numpy"] = package("numpy")
    for name in OPTIONAL:
        out[OPTIONAL[name][0]] = package(name)
    fa = out["flash-attn"]
    if fa["ok"]:  # which entry points the installed flash_attn really offers
        fa2 = package("flash_attn.flash_attn_interface")
        if not fa2["ok"]:
            out["flash-attn"] = {"ok": False, "version": fa["version"],
                                 "error": f"flash-attn 2 entry points do not import: {fa2['error']}"}
    fa4 = package("flash_attn.cute")
    if fa4["ok"]:
        fa4["version"] = _dist_version(FA4_DIST) or fa4["version"]
    out["flash-attn-4"] = fa4
    return out


def missing(vers: dict) -> dict:
    """label -> what is lost, for every optional package that does not import."""
    return {label: f"{vers[label]['error']}: disables {what}"
            for label, what in OPTIONAL.values() if not vers[label]["ok"]}


# ---------------------------------------------------------------- GPU

def gpu() -> dict:
    try:
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA" if torch.version.cuda is None else
                   "torch.cuda.is_available() is False (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides it)")
            return {"available": False, "reason": why, "devices": []}
        devices = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                            "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
        return {"available": True, "reason": None, "devices": devices,
                "driver": _nvidia_smi("driver_version")}
    except Exception as e:
        return {"available": False, "reason": _error(e), "devices": []}


def _nvidia_smi(field: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
        return r.stdout.splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------- Triton

def c_compiler() -> str | None:
    """The C compiler Triton builds its launcher with ($CC, else cc/gcc/clang on PATH)."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or None
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def python_headers() -> str | None:
    """Python.h, which the launcher's C source includes."""
    paths = sysconfig.get_paths()
    for key in ("include", "platinclude"):
        header = os.path.join(paths.get(key) or "", "Python.h")
        if os.path.isfile(header):
            return header
    return None


def _probe_kernel(interpret: bool) -> dict:
    """Compile (or interpret) and launch a tiny kernel; compare with torch. Runs in the
    child process: TRITON_INTERPRET must be set before the kernel is decorated."""
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        import triton
        import triton.language as tl

        @triton.jit
        def _scale_shift(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            keep = offs < n
            x = tl.load(x_ptr + offs, mask=keep).to(tl.float32)
            tl.store(y_ptr + offs, x * 2.0 + 1.0, mask=keep)

        kind = type(_scale_shift).__name__
        if (kind == "InterpretedFunction") != interpret:
            return _status("failed", f"TRITON_INTERPRET={int(interpret)} gave a {kind}")
        device = "cpu" if interpret else "cuda"
        x = torch.randn(100, device=device)
        y = torch.full_like(x, float("nan"))
        _scale_shift[(triton.cdiv(x.numel(), 64),)](x, y, x.numel(), BLOCK=64)
        if device == "cuda":
            torch.cuda.synchronize()
        err = float((y - (x * 2 + 1)).abs().max())
        if not err < 1e-5:  # NaN fails too
            return _status("wrong", f"the kernel ran but its output is off by {err}")
        return _status("ok", "interpreted on CPU" if interpret else "compiled and launched on the GPU")
    except Exception as e:
        tail = traceback.format_exc().strip().splitlines()[-6:]
        return _status("failed", _error(e), traceback=tail)


def _triton_child() -> None:
    """`python -c 'from fastmae.doctor import _triton_child; _triton_child()' interp [gpu]`:
    one JSON line per probe, each printed as soon as it is known."""
    for what in sys.argv[1:]:
        print(json.dumps({"probe": what, **_probe_kernel(interpret=what == "interpreter")}), flush=True)


def triton_checks(gpu_ok: bool, installed: bool) -> dict:
    out = {"c_compiler": c_compiler(), "python_headers": python_headers(),
           "interpret_env": os.environ.get("TRITON_INTERPRET", "0") == "1"}
    if not installed:
        skip = _status("skipped", "triton is not installed")
        return {**out, "interpreter": skip, "compiled": skip}
    probes = (["compiled"] if gpu_ok else []) + ["interpreter"]  # the GPU's answer first
    results = {} if gpu_ok else {"compiled": _status(
        "skipped", "no CUDA GPU here: compiled kernels cannot run (the interpreter is what the CPU tests use)")}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
        ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    code = "from fastmae.doctor import _triton_child; _triton_child()"
    try:
        r = subprocess.run([sys.executable, "-c", code, *probes], capture_output=True, text=True,
                           timeout=TRITON_TIMEOUT_S, env=env)
        stdout, stderr, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr, rc = f"timed out after {TRITON_TIMEOUT_S}s", None
    for line in stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("probe") in probes:
            results[row.pop("probe")] = row
    for what in probes:
        if what not in results:
            why = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {rc}"
            results[what] = _status("failed", f"the probe process died before answering: {why}")
    if results["compiled"]["status"] == "failed":
        hints = []
        if out["c_compiler"] is None:
            hints.append("no C compiler found (set CC or install gcc): Triton cannot build its launcher")
        if out["python_headers"] is None:
            hints.append("Python.h not found (install the python3-dev headers): Triton cannot build "
                         "its launcher")
        results["compiled"]["hints"] = hints
    return {**out, **results}


# ---------------------------------------------------------------- attention

def _reference(q, k, v) -> torch.Tensor:
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


def _attention_probe(fn, q, k, v, tol: float) -> dict:
    try:
        with torch.no_grad():
            out = fn(q, k, v)
        if q.is_cuda:
            torch.cuda.synchronize(q.device)
        err = float((out.double().cpu() - _reference(q, k, v)).abs().max())
    except Exception as e:
        return _status("failed", _error(e))
    if not err <= tol:
        return _status("wrong", f"ran but differs from the fp64 reference by {err:.3g} (> {tol})",
                       max_abs_err=err)
    return _status("ok", f"max abs error vs fp64 {err:.2g}", max_abs_err=err)


def attention_checks(device: torch.device, vers: dict) -> dict:
    """Each backend on one small (B, H, N, hd) problem in the dtype a run would use."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(ATTN_SHAPE, generator=gen).to(device, dtype) for _ in range(3))
    out = {"device": str(device), "dtype": str(dtype).replace("torch.", ""),
           "shape_bhnd": list(ATTN_SHAPE), "backends": {}}
    rows = out["backends"]

    def flash2(q, k, v):
        from flash_attn import flash_attn_func  # (B, N, H, hd) layout
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    def flash4(q, k, v):
        from flash_attn.cute import flash_attn_func
        res = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (res[0] if isinstance(res, tuple) else res).transpose(1, 2)

    for name, label, fn in (("flash-attn", "flash-attn", flash2), ("flash-attn-4", "flash-attn-4", flash4)):
        if not vers[label]["ok"]:
            rows[name] = _status("missing", vers[label]["error"])
        elif device.type != "cuda":
            rows[name] = _status("skipped", "needs a CUDA GPU")
        else:
            rows[name] = _attention_probe(fn, q, k, v, tol)
    sdpa = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
            "sdpa-efficient": "EFFICIENT_ATTENTION", "sdpa-math": "MATH"}
    for name, member in sdpa.items():
        backend = getattr(SDPBackend, member, None)
        if backend is None:
            rows[name] = _status("missing", f"this torch has no SDPBackend.{member}")
            continue

        def run(q, k, v, backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v)
        rows[name] = _attention_probe(run, q, k, v, tol)
    return out


# ---------------------------------------------------------------- DALI

def dali_decode(device: str, device_id: int | None = None, size: int = 24) -> dict:
    """Decode one small JPEG with DALI's decoder on `device` ("mixed" = nvJPEG on the GPU,
    "cpu") and compare with Pillow's decode."""
    try:
        import io

        import numpy as np
        from PIL import Image
        from nvidia.dali import Pipeline, fn, types

        gen = np.random.default_rng(0)
        # Smooth content (a gradient plus a little noise): JPEG keeps it close.
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        pixels = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                           np.full((size, size), 128.0, np.float32)], -1)
        pixels = np.clip(pixels + gen.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
        encoded = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32)

        pipe = Pipeline(batch_size=1, num_threads=1, device_id=device_id if device == "mixed" else None)
        with pipe:
            enc = fn.external_source(source=lambda: [encoded], batch=True, dtype=types.UINT8, ndim=1)
            pipe.set_outputs(fn.decoders.image(enc, device=device, output_type=types.RGB))
        pipe.build()
        (imgs,) = pipe.run()
        if device == "mixed":
            imgs = imgs.as_cpu()
        got = np.asarray(imgs.as_array()[0], dtype=np.float32)
        if got.shape != expected.shape:
            return _status("wrong", f"decoded shape {got.shape}, expected {expected.shape}")
        diff = float(np.abs(got - expected).mean())
        if not diff < 4.0:  # decoders may round differently, not by whole intensity levels
            return _status("wrong", f"decoded pixels differ from Pillow's by {diff:.2f} on average")
        return _status("ok", f"decoded a {size}x{size} JPEG (mean abs difference to Pillow {diff:.2f})")
    except Exception as e:
        return _status("failed", _error(e))


def dali_checks(gpu_info: dict, vers: dict) -> dict:
    if not vers["nvidia-dali"]["ok"]:
        return {"mixed_decoder": _status("missing", f"nvidia-dali {vers['nvidia-dali']['error']}")}
    if not gpu_info["available"]:
        return {"mixed_decoder": _status("skipped", "needs a CUDA GPU (nvJPEG); the CPU decoder "
                                                    "serves the loaders here")}
    return {"mixed_decoder": dali_decode("mixed", torch.cuda.current_device())}


# ---------------------------------------------------------------- what auto picks

def auto_choices() -> dict:
    """fastmae's own resolvers asked what `auto` means here, for a ViT-B/16-like call."""
    from .data.loader import _resolve_backend
    from .models import attention
    from .ops import dispatch

    out = {"allowed": {k: list(v) for k, v in CHOICES.items()}}
    try:
        device = resolve_device("auto")
        precision = resolve_precision(None, device)
        out.update(device=str(device), precision=precision)
    except Exception as e:
        return {**out, "error": _error(e)}
    dtype = activation_dtype(precision)
    qkv = torch.zeros(1, 50, 3 * 768, device=device, dtype=dtype)
    for key, ask in (("kernels", lambda: dispatch.resolve("auto", qkv)),
                     ("attn", lambda: attention.resolve("auto", qkv, num_heads=12)),
                     ("loader", lambda: _resolve_backend("auto"))):
        try:
            out[key] = ask()
        except Exception as e:
            out[key] = None
            out[f"{key}_error"] = _error(e)
    if out.get("kernels") == "triton" and device.type == "cpu":
        out["kernels_note"] = "TRITON_INTERPRET=1 is set: the kernels run in the interpreter"
    return out


# ---------------------------------------------------------------- the report

def _fenced(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as e:  # a bug in a check must not hide the other checks
        return {"error": _error(e)}


def report() -> dict:
    vers = versions()
    gpu_info = _fenced(gpu)
    gpu_ok = bool(gpu_info.get("available"))
    device = torch.device("cuda", torch.cuda.current_device()) if gpu_ok else torch.device("cpu")
    rep = {
        "fastmae": __version__,
        "platform": platform.platform(),
        "executable": sys.executable,
        "versions": {k: v["version"] for k, v in vers.items()},
        "imports": vers,
        "missing": missing(vers),
        "gpu": gpu_info,
        "triton": _fenced(triton_checks, gpu_ok, vers["triton"]["ok"]),
        "attention": _fenced(attention_checks, device, vers),
        "dali": _fenced(dali_checks, gpu_info, vers),
        "auto": _fenced(auto_choices),
    }
    rep["problems"] = problems(rep)
    return rep


def problems(rep: dict) -> list[str]:
    """Where `auto` picks something that failed its own check here: a run would fail."""
    auto, out = rep["auto"], []
    compiled = rep["triton"].get("compiled", {}).get("status")
    if auto.get("kernels") == "triton" and auto.get("device", "").startswith("cuda") and compiled != "ok":
        out.append(f"auto picks the Triton kernels but the compiled probe is {compiled}: "
                   "use --kernels torch until it passes")
    backends = rep["attention"].get("backends", {})
    if auto.get("attn") == "flash" and not any(
            backends.get(n, {}).get("status") == "ok" for n in ("flash-attn", "flash-attn-4")):
        out.append("auto picks flash attention but no flash-attn probe passed: use --attn sdpa")
    if auto.get("attn") == "sdpa" and not any(
            r.get("status") == "ok" for n, r in backends.items() if n.startswith("sdpa-")):
        out.append("auto picks SDPA but none of its kernels ran here")
    mixed = rep["dali"].get("mixed_decoder", {}).get("status")
    if auto.get("loader") == "dali" and rep["gpu"].get("available") and mixed != "ok":
        out.append(f"auto picks the DALI loader but its GPU decoder is {mixed}: use --loader torch")
    return out


def _line(status: dict) -> str:
    text = status.get("status", "error")
    detail = status.get("detail") or status.get("error") or ""
    return f"{text}: {detail}" if detail else text


def format_report(rep: dict) -> str:
    """The report as one screen of text."""
    lines = [f"fastmae doctor (fastmae {rep['fastmae']}, {rep['platform']})", "", "versions"]
    for name, row in rep["imports"].items():
        lines.append(f"  {name:<14} {row['version'] or '-'}" + ("" if row["ok"] else f"  ({row['error']})"))
    g = rep["gpu"]
    lines += ["", "GPU"]
    if g.get("available"):
        for d in g["devices"]:
            lines.append(f"  cuda:{d['index']}  {d['name']}, {d['memory_gib']} GiB, compute capability "
                         f"{d['capability']}, {d['multiprocessors']} SMs")
        if g.get("driver"):
            lines.append(f"  driver {g['driver']}")
    else:
        lines.append(f"  none: {g.get('reason') or g.get('error')}")
    t = rep["triton"]
    lines += ["", "Triton"]
    if "error" in t:
        lines.append(f"  check failed: {t['error']}")
    else:
        lines += [f"  C compiler     {t['c_compiler'] or 'NOT FOUND'}",
                  f"  Python.h       {t['python_headers'] or 'NOT FOUND'}",
                  f"  compiled       {_line(t['compiled'])}",
                  f"  interpreter    {_line(t['interpreter'])}"]
        for hint in t["compiled"].get("hints", ()):
            lines.append(f"    hint: {hint}")
    a = rep["attention"]
    if "error" in a:
        lines += ["", f"attention: check failed: {a['error']}"]
    else:
        lines += ["", f"attention ({a['dtype']} on {a['device']}, B,H,N,hd = {tuple(a['shape_bhnd'])})"]
        for name, row in a["backends"].items():
            lines.append(f"  {name:<14} {_line(row)}")
    d = rep["dali"]
    lines += ["", "DALI", f"  mixed decoder  {_line(d['mixed_decoder']) if 'mixed_decoder' in d else d.get('error')}"]
    au = rep["auto"]
    lines += ["", "auto chooses"]
    if "error" in au:
        lines.append(f"  {au['error']}")
    else:
        for key in ("device", "precision", "kernels", "attn", "loader"):
            extra = f"  ({au[key + '_error']})" if au.get(key + "_error") else ""
            lines.append(f"  {key:<10} {au.get(key)}{extra}")
        if au.get("kernels_note"):
            lines.append(f"  note: {au['kernels_note']}")
    lines += ["", "problems"] + ([f"  {p}" for p in rep.get("problems", ())] or ["  none"])
    lines += ["", "missing optional packages"]
    lines += [f"  {name}: {what}" for name, what in rep["missing"].items()] or ["  none"]
    return "\n".join(lines)
