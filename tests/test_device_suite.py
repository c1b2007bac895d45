"""The first GPU run must work on a bare machine: the checkout imports without an install,
pictures are optional, `--max-batch` survives CUDA failures near the memory limit, and
benchmarks/device_suite.sh runs end to end where matplotlib, DALI, flash-attn,
transformers and timm cannot be imported, installing nothing.

The bare machine is simulated with a sitecustomize.py on PYTHONPATH that puts None into
sys.modules for each blocked package: `import x` then raises ModuleNotFoundError and
importlib.util.find_spec("x") returns None, exactly as when x is not installed. The same
file logs every start of pip, so the tests can tell whether anything was installed."""
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "device_suite.sh"
# What the GPU machine lacks, and what the bare-machine simulation takes away.
BARE = ("matplotlib", "nvidia.dali", "flash_attn", "transformers", "timm")

SITECUSTOMIZE = '''\
import os
import sys

for _name in filter(None, os.environ.get("FASTMAE_TEST_BLOCK", "").split(",")):
    sys.modules[_name] = None  # `import` fails, find_spec says None: as if not installed


class _PipWatch:
    """Logs each start of pip (python -m pip, or the pip script) to FASTMAE_TEST_PIP_LOG,
    one line per process (the import system asks for "pip" more than once)."""
    seen = False

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        log = os.environ.get("FASTMAE_TEST_PIP_LOG")
        if fullname == "pip" and log and not cls.seen:
            cls.seen = True
            with open(log, "a") as f:
                f.write(" ".join(sys.argv[1:]) + "\\n")
        return None


sys.meta_path.insert(0, _PipWatch)
'''


def blocker_env(tmp_path: Path, block=BARE, **extra) -> dict:
    """Environment for a child process whose Python cannot import `block` and logs pip."""
    d = tmp_path / "blocker"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTMAE_SUITE_")}
    env.update(PYTHONPATH=os.pathsep.join([str(d)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
               FASTMAE_TEST_BLOCK=",".join(block), FASTMAE_TEST_PIP_LOG=str(tmp_path / "pip.log"),
               OMP_NUM_THREADS="1", **extra)
    return env


def test_blocker_makes_packages_look_absent(tmp_path):
    code = ("import importlib.util, sys\n"
            "assert importlib.util.find_spec('transformers') is None\n"
            "assert importlib.util.find_spec('nvidia.dali') is None\n"
            "try:\n    import matplotlib\nexcept ModuleNotFoundError as e:\n    print('blocked', e.name)\n")
    r = subprocess.run([sys.executable, "-c", code], env=blocker_env(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "blocked matplotlib"
    # the pip watch sees a pip start (so "no pip.log" in the suite tests means no pip ran)
    assert not (tmp_path / "pip.log").exists()
    r = subprocess.run([sys.executable, "-m", "pip", "--version"], env=blocker_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pip.log").read_text() == "--version\n"


# ---------------------------------------------------------------- a checkout without an install

def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    user = site.getusersitepackages()
    return dirs + ([user] if isinstance(user, str) and os.path.isdir(user) else [])


def _copy_tree(dst: Path, kernels_inside: bool = False, with_kernels: bool = True) -> Path:
    """fastmae/ and kernels/ copied as a checkout has them, or (kernels_inside) laid out as
    an install does, kernels/ at fastmae/kernels/."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "fastmae", dst / "fastmae", ignore=ignore)
    if with_kernels:
        shutil.copytree(ROOT / "kernels", dst / ("fastmae/kernels" if kernels_inside else "kernels"),
                        ignore=ignore)
    return dst


def _isolated_python(tree: Path, code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """python -S: no site-packages .pth files, so no editable-install hook; torch and triton
    come from the site-packages folders given as plain PYTHONPATH entries."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([str(tree)] + _site_dirs()), TRITON_INTERPRET="1",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(code)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=180)


ISOLATION_CHECKS = """
    import importlib.machinery, sys
    assert sys.flags.no_site == 1
    assert not any("Editable" in repr(f) for f in sys.meta_path), sys.meta_path
    # a plain path search cannot find fastmae.kernels here: only fastmae/__init__ can
    import fastmae
    assert importlib.machinery.PathFinder.find_spec("kernels", fastmae.__path__) is None
"""


def test_checkout_imports_kernels_without_an_install(tmp_path):
    tree = _copy_tree(tmp_path / "checkout")
    r = _isolated_python(tree, ISOLATION_CHECKS + """
    import torch
    import fastmae.kernels, fastmae.kernels.gather
    from fastmae import ops
    from fastmae.ops import dispatch
    print(fastmae.__file__)
    print(fastmae.kernels.__file__)
    print(fastmae.kernels.gather.__file__)
    imgs = torch.randn(2, 3, 8, 8)
    ids = torch.argsort(torch.rand(2, 4), dim=1)[:, :2]
    got = ops.gather_visible_patches(imgs, ids, 4, kernels="triton")
    want = ops.gather_visible_patches(imgs, ids, 4, kernels="torch")
    assert dispatch.calls["gather_visible_patches:triton"] == 1, dispatch.calls
    assert torch.equal(got, want)
    print("kernel ok")
    """, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.split()
    assert lines[:3] == [str(tree / "fastmae" / "__init__.py"), str(tree / "kernels" / "__init__.py"),
                         str(tree / "kernels" / "gather.py")]
    assert lines[3:] == ["kernel", "ok"]


@pytest.mark.slow
def test_isolation_is_real_and_installed_layout_wins(tmp_path):
    # Control: without kernels/ beside it the same isolated import fails, so nothing else
    # (an editable install of /work's checkout) supplies fastmae.kernels.
    bare = _copy_tree(tmp_path / "no-kernels", with_kernels=False)
    r = _isolated_python(bare, "import fastmae\nimport fastmae.kernels\n", tmp_path)
    assert r.returncode != 0 and "No module named 'fastmae.kernels'" in r.stderr, r.stderr
    # An installed layout (fastmae/kernels/ inside the package) is imported as it is.
    inst = _copy_tree(tmp_path / "installed", kernels_inside=True)
    r = _isolated_python(inst, """
    import sys, fastmae, fastmae.kernels
    assert fastmae._CheckoutKernels not in sys.meta_path
    print(fastmae.kernels.__file__)
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(inst / "fastmae" / "kernels" / "__init__.py")


# ---------------------------------------------------------------- matplotlib optional

def test_pictures_are_skipped_without_matplotlib(monkeypatch, tmp_path):
    from fastmae import pictures
    from fastmae.bench import report
    from fastmae.models import create_model
    from fastmae.settings import BackendUnavailable

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    assert pictures.matplotlib_missing() == "matplotlib is not installed"
    model = create_model("mae_vit_tiny_patch16", img_size=32)
    calls = [
        lambda p: pictures.save_curves({"loss": ([0, 1], [2.0, 1.0])}, p),
        lambda p: pictures.save_confusion_matrix(torch.eye(3, dtype=torch.long), ["a", "b", "c"], p),
        lambda p: pictures.save_reconstructions(model, torch.randn(2, 3, 32, 32), p),
        lambda p: report.plot({"results": []}, str(p)),
    ]
    for i, draw in enumerate(calls):
        path = tmp_path / f"picture{i}.png"
        with pytest.warns(pictures.PictureSkipped, match=rf"picture .*picture{i}.png skipped: matplotlib"):
            assert draw(path) is None
        assert not path.exists()
    # bad arguments are still errors, not skips
    with pytest.raises(ValueError, match="at least one series"):
        pictures.save_curves({}, tmp_path / "x.png")
    with pytest.raises(BackendUnavailable, match="fastmae visualize draws with matplotlib"):
        pictures.require_matplotlib("fastmae visualize")


def test_pictures_draw_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    from fastmae import pictures

    with warnings.catch_warnings():
        warnings.simplefilter("error", pictures.PictureSkipped)
        out = pictures.save_curves({"loss": ([0, 1, 2], [3.0, 2.0, 1.5])}, tmp_path / "c.png")
    assert out == tmp_path / "c.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_library_cli_and_tests_import_on_the_gpu_machine_set(tmp_path):
    # What the GPU machine lacks: every command's parser builds, and `pytest -m gpu` collects.
    env = blocker_env(tmp_path, block=("matplotlib", "nvidia.dali", "flash_attn"))
    r = subprocess.run([sys.executable, "-c", "import fastmae, fastmae.pictures, fastmae.cli as c; "
                        "c.build_parser(); print('ok')"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                        "-p", "no:cacheprovider", "tests"], env=env, capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# ---------------------------------------------------------------- --max-batch near the limit

class _FakeContender:
    """Runs batches up to `fits`; above it fails like out-of-memory, or from `fail_at` on
    with another CUDA error."""

    def __init__(self, fits: int, fail_at: int | None, error: str):
        self.fits, self.fail_at, self.error, self.ran = fits, fail_at, error, []
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    def step(self, imgs):
        b = imgs.shape[0]
        if self.fail_at is not None and b >= self.fail_at:
            raise RuntimeError(self.error)
        if b > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.ran.append(b)


def _search(monkeypatch, contender):
    from fastmae.bench import harness

    monkeypatch.setattr(harness.cont, "build", lambda name, setup, base: contender)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(harness.gc, "collect", lambda: 0)  # nothing to free here; keeps the test fast

    class Setup:
        img_size, device = 4, torch.device("cpu")
    logs = []
    return harness.search_max_batch("fastmae", Setup, None, 16, logs.append), logs


def test_max_batch_out_of_memory_bisects(monkeypatch):
    res, _ = _search(monkeypatch, _FakeContender(fits=100, fail_at=None, error=""))
    assert res["max_batch"] == 100 and res["max_batch_first_oom"] == 101
    assert "max_batch_ended_by" not in res


@pytest.mark.parametrize("error", [
    "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED",
    "CUDA error: an illegal memory access was encountered",
    "CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
])
def test_max_batch_ends_at_a_cuda_failure_near_the_limit(monkeypatch, error):
    c = _FakeContender(fits=1000, fail_at=64, error=error)
    res, logs = _search(monkeypatch, c)
    # 16 and 32 ran, 64 failed: the search stops there and keeps the last size that ran
    assert res["max_batch"] == 32 and max(c.ran) == 32
    assert res["max_batch_first_oom"] == 64
    assert res["max_batch_ended_by"] == {"batch": 64, "error": f"RuntimeError: {error}"}
    assert res["max_batch_tries"] == 3 and "search ends at 32" in logs[-1]


def test_max_batch_still_raises_bugs(monkeypatch):
    c = _FakeContender(fits=1000, fail_at=64, error="mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _search(monkeypatch, c)


# ---------------------------------------------------------------- the suite, end to end

def _site_state() -> dict:
    """Names in every site-packages folder, with the mtime of what pip writes on install."""
    state = {}
    for d in _site_dirs():
        for name in os.listdir(d):
            p = os.path.join(d, name)
            install_record = name.endswith((".dist-info", ".egg-info", ".egg-link", ".pth"))
            state[p] = os.stat(p).st_mtime_ns if install_record else None
    return state


def _run_suite(tmp_path: Path, env: dict) -> tuple[subprocess.CompletedProcess, Path, dict]:
    out = tmp_path / "out"
    env = {**env, "OUT": str(out), "FASTMAE_SUITE_SMOKE": "1", "FASTMAE_SUITE_SITE": str(tmp_path / "site")}
    env.setdefault("FASTMAE_SUITE_WHEELS", str(tmp_path / "no-wheels"))
    r = subprocess.run(["bash", str(SUITE)], env=env, capture_output=True, text=True, timeout=600)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    return r, out, summary


def _check_skips_name_reasons(out: Path, summary: dict) -> None:
    skipped = [s for s in summary["steps"] if s["status"] == "SKIPPED"]
    assert skipped and all(s["reason"] and len(s["reason"]) > 8 for s in skipped), skipped
    log = (out / "log.txt").read_text()
    for s in skipped:
        assert f"-- {s['name']} SKIPPED ({s['reason']})" in log


@pytest.mark.slow
def test_suite_on_a_bare_machine(tmp_path):
    before = _site_state()
    r, out, summary = _run_suite(tmp_path, blocker_env(tmp_path))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert summary is not None, "summary.json not written"
    assert _site_state() == before, "site-packages changed"
    assert not (tmp_path / "pip.log").exists(), (tmp_path / "pip.log").read_text()
    assert not (tmp_path / "site").exists()

    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status["doctor"] == "ok" and summary["failed"] == []
    _check_skips_name_reasons(out, summary)
    skipped = summary["skipped"]
    assert "no carried wheels" in skipped["wheels"]
    assert "transformers is not importable" in skipped["hf-contender"]
    doctor = json.loads((out / "doctor.json").read_text())
    for label in ("matplotlib", "nvidia-dali", "flash-attn", "transformers", "timm"):
        assert doctor["imports"][label]["ok"] is False and "disables" in doctor["missing"][label]
        assert summary["versions"][label] is None
    if not torch.cuda.is_available():
        assert status["bench-cpu"] == "ok"
        assert "matplotlib is not importable" in skipped["bench-cpu-plot"]
        for s in ("bench-b16", "bench-b16-compiled", "gpu-tests", "ops-bench", "bench-l16", "max-batch",
                  "data-bench"):
            assert skipped[s] == "no CUDA GPU visible"
        bench = json.loads((out / "bench-cpu.json").read_text())
        assert [x["name"] for x in bench["results"]] == ["fastmae", "reference"]
        ips = {x["name"]: x["img_per_s"] for x in bench["results"]}
        h = summary["headline"]
        assert h["from"] == "bench-cpu.json" and h["fastmae_vs_hf"] is None
        assert h["fastmae_vs_reference"] == round(ips["fastmae"] / ips["reference"], 3)
    assert sorted(os.listdir(out)) == summary["files"] and len(summary["files"]) <= 8


def _tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel of one module, enough for pip's offline --target install."""
    folder.mkdir()
    path = folder / "fastmae_suite_probe-1.0-py3-none-any.whl"
    info = "fastmae_suite_probe-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fastmae_suite_probe.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fastmae-suite-probe\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"fastmae_suite_probe.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


@pytest.mark.slow
def test_suite_with_everything_and_a_carried_wheel(tmp_path):
    before = _site_state()
    env = blocker_env(tmp_path, block=())
    _tiny_wheel(tmp_path / "wheels")
    r, out, summary = _run_suite(tmp_path, {**env, "FASTMAE_SUITE_WHEELS": str(tmp_path / "wheels")})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert summary is not None and summary["failed"] == []
    assert _site_state() == before, "site-packages changed"
    # pip ran once, offline, into the suite's own folder
    pip_runs = (tmp_path / "pip.log").read_text().splitlines()
    assert len(pip_runs) == 1 and "--no-index" in pip_runs[0] and f"--target {tmp_path / 'site'}" in pip_runs[0]
    assert (tmp_path / "site" / "fastmae_suite_probe.py").read_text() == "VALUE = 42\n"
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status["wheels"] == "ok" and status["doctor"] == "ok"
    assert "hf-contender" not in status
    _check_skips_name_reasons(out, summary)
    if not torch.cuda.is_available():
        bench = json.loads((out / "bench-cpu.json").read_text())
        assert [x["name"] for x in bench["results"]] == ["fastmae", "reference", "hf"]
        assert (out / "bench-cpu.png").read_bytes()[:4] == b"\x89PNG"
        assert summary["headline"]["fastmae_vs_hf"] is not None
    assert summary["versions"]["transformers"] is not None


def test_summary_records_failures_and_missing_headline(tmp_path):
    steps = tmp_path / "steps.tsv"
    steps.write_text("doctor\tok\t3\t70\t\tpython3 -m fastmae doctor --json\n"
                     "bench-b16\tFAILED\t100\t100\ttimed out at the 100s limit; last output: step 3\tpython3 -m fastmae bench\n"
                     "gpu-tests\tSKIPPED\t\t\tno time left in the 420s budget\t\n"
                     "garbage line\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").write_text("")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_summary.py"), "write", "--steps",
                        str(steps), "--out", str(out), "--budget", "420"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert [x["name"] for x in s["steps"]] == ["doctor", "bench-b16", "gpu-tests"]
    assert s["failed"] == ["bench-b16"] and s["skipped"] == {"gpu-tests": "no time left in the 420s budget"}
    assert s["headline"] == {"from": None, "why": "bench-b16 FAILED: timed out at the 100s limit; last output: step 3"}
    assert s["doctor"].startswith("doctor.json missing") and s["device"] == "CPU"
    assert "headline: none" in r.stdout


# ---------------------------------------------------------------- the GPU branch's flow

FAKE_PYTHON = r'''#!/usr/bin/env bash
# Stands in for python3 on a pretend GPU machine: logs each call, answers the doctor with
# a canned report, writes canned bench JSON, fails the ViT-L/16 bench like a CUDA error.
echo "$*" >> "$FAKE_DIR/calls.log"
args=("$@")
json_out() { for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--json" ] && echo "${args[$((i + 1))]}"; done; }
case "$*" in
    *suite_summary.py*) exec "$REAL_PYTHON" "$@" ;;
    "-m fastmae doctor --json") cat "$FAKE_DIR/doctor.json" ;;
    *"--model mae_vit_large_patch16"*) echo "RuntimeError: CUDA error: boom" >&2; exit 1 ;;
    *"--max-batch"*) cp "$FAKE_DIR/max-batch.json" "$(json_out)" ;;
    "-m fastmae bench "*) cp "$FAKE_DIR/bench.json" "$(json_out)" ;;
    "-m pytest "*) echo "3 passed"; exit 0 ;;
    "-c "*) echo "$FAKE_DIR/data" ;;
    *bench_data.py*) echo '{}' > "$(json_out)" ;;
    *) echo "unexpected call: $*" >&2; exit 3 ;;
esac
'''


def _fake_bench(ips: dict, max_batch: dict | None = None) -> dict:
    rows = [{"name": n, "img_per_s": v, "peak_mem_mb": 1000.0, "mfu": 0.1, "attn_backend": "sdpa",
             "kernels": "triton", **({"max_batch": max_batch[n], "max_batch_first_oom": max_batch[n] + 1}
                                     if max_batch else {})} for n, v in ips.items()]
    return {"device": "Fake GPU", "config": {"model": "mae_vit_base_patch16", "img_size": 224,
                                             "batch_size": 256, "precision": "bf16"},
            "command": "fastmae bench ...", "results": rows}


def test_gpu_branch_runs_headline_first_and_records_each_step(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "python").write_text(FAKE_PYTHON)
    (fake / "python").chmod(0o755)
    ok = {"ok": True, "version": "1", "error": None}
    (fake / "doctor.json").write_text(json.dumps({
        "gpu": {"available": True, "devices": [{"index": 0, "name": "Fake GPU", "memory_gib": 140.0}]},
        "imports": {"transformers": ok, "nvidia-dali": ok,
                    "matplotlib": {"ok": False, "version": None, "error": "not installed"}},
        "versions": {"torch": "2.11"}, "missing": {"matplotlib": "not installed: disables pictures"}}))
    (fake / "bench.json").write_text(json.dumps(_fake_bench({"fastmae": 300.0, "reference": 100.0, "hf": 150.0})))
    (fake / "max-batch.json").write_text(json.dumps(_fake_bench(
        {"fastmae": 300.0, "reference": 100.0, "hf": 150.0}, {"fastmae": 2048, "reference": 1024, "hf": 1100})))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTMAE_SUITE_")}
    env.update(OUT=str(out), PYTHON=str(fake / "python"), FAKE_DIR=str(fake), REAL_PYTHON=sys.executable,
               FASTMAE_SUITE_WHEELS=str(tmp_path / "no-wheels"), PATH=f"{fake}:{env['PATH']}")
    r = subprocess.run(["bash", str(SUITE)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # bench-l16 failed
    calls = (fake / "calls.log").read_text().splitlines()
    assert calls[0] == "-m fastmae doctor --json" and "suite_summary.py facts" in calls[1]
    benches = [c for c in calls if c.startswith("-m fastmae bench")]
    head = benches[0]
    assert "--model mae_vit_base_patch16 --img-size 224 --batch-size 256" in head
    assert "--contenders fastmae,reference,hf --precision bf16" in head and "--max-batch" not in head
    assert f"--plot {out}/bench-b16.png" in head and "compiled" not in head
    compiled = benches[1]
    assert "--contenders fastmae-compiled,fastmae-compiled-blocks,fastmae,reference" in compiled
    assert any(c.startswith("-m pytest -m gpu") for c in calls)
    assert any("--max-batch" in c for c in benches) and any("bench_data.py" in c for c in calls)

    s = json.loads((out / "summary.json").read_text())
    status = {x["name"]: x["status"] for x in s["steps"]}
    smi = "ok" if shutil.which("nvidia-smi") else "SKIPPED"
    assert status == {"wheels": "SKIPPED", "doctor": "ok", "nvidia-smi": smi, "bench-b16": "ok",
                      "bench-b16-plot": "SKIPPED", "bench-b16-compiled": "ok", "gpu-tests": "ok", "ops-bench": "ok",
                      "bench-l16": "FAILED", "max-batch": "ok", "data-bench": "ok"}
    l16 = next(x for x in s["steps"] if x["name"] == "bench-l16")
    assert l16["reason"].startswith("exit 1 after") and l16["reason"].endswith("RuntimeError: CUDA error: boom")
    assert s["failed"] == ["bench-l16"] and s["device"] == "Fake GPU"
    assert "matplotlib is not importable" in s["skipped"]["bench-b16-plot"]
    h = s["headline"]
    assert (h["from"], h["fastmae_vs_reference"], h["fastmae_vs_hf"]) == ("bench-b16.json", 3.0, 2.0)
    assert s["benches"]["max-batch"]["max_batch"] == {"fastmae": 2048, "reference": 1024, "hf": 1100}
    # every limit together fits the budget, so no step is cut short by an earlier one
    limits = [x["limit_s"] for x in s["steps"] if x["limit_s"] is not None]
    assert sum(limits) + 25 + 10 <= s["budget_s"] == 420  # + wheels and nvidia-smi when they run
    assert len(os.listdir(out)) <= 8
