"""`fastmae doctor`: every check is tried, a missing or broken optional package becomes a
line saying what it disables, and the command always exits 0. Packages are taken away the
way tests/test_device_suite.py's bare machine does it (None in sys.modules)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastmae import doctor
from fastmae.settings import CHOICES

from .test_device_suite import BARE, ROOT, blocker_env

LABELS = {"matplotlib": "matplotlib", "nvidia.dali": "nvidia-dali", "flash_attn": "flash-attn",
          "transformers": "transformers", "timm": "timm"}


@pytest.fixture
def bare(monkeypatch):
    for name in BARE:
        monkeypatch.setitem(sys.modules, name, None)


def test_versions_say_what_is_missing_and_what_it_disables(bare):
    vers = doctor.versions()
    for label in LABELS.values():
        assert vers[label] == {"ok": False, "version": None, "error": "not installed"}
    assert vers["flash-attn-4"]["ok"] is False
    assert vers["torch"]["version"] == torch.__version__ and vers["numpy"]["ok"]
    miss = doctor.missing(vers)
    assert set(miss) == set(LABELS.values())
    assert miss["matplotlib"].startswith("not installed: disables pictures")
    assert "DALI loader" in miss["nvidia-dali"] and "SDPA" in miss["flash-attn"]


def test_package_tells_a_broken_install_from_an_absent_one(tmp_path, monkeypatch):
    (tmp_path / "doctor_broken_pkg.py").write_text("raise OSError('libfoo.so: cannot open shared object file')\n")
    (tmp_path / "doctor_needs_dep.py").write_text("import doctor_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert doctor.package("doctor_broken_pkg") == {
        "ok": False, "version": None, "error": "OSError: libfoo.so: cannot open shared object file"}
    assert doctor.package("doctor_needs_dep")["error"] == (
        "ModuleNotFoundError: No module named 'doctor_no_such_dependency'")
    assert doctor.package("doctor_not_there_at_all")["error"] == "not installed"


def test_attention_backends_are_run_and_compared(bare):
    rep = doctor.attention_checks(torch.device("cpu"), doctor.versions())
    rows = rep["backends"]
    assert list(rows) == ["flash-attn", "flash-attn-4", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math"]
    assert rows["flash-attn"] == {"status": "missing", "detail": "not installed"}
    assert rows["sdpa-math"]["status"] == "ok" and rows["sdpa-math"]["max_abs_err"] < 1e-4
    assert all(r["status"] in ("ok", "failed", "missing", "skipped") for r in rows.values())
    assert rep["dtype"] == "float32" and rep["shape_bhnd"] == list(doctor.ATTN_SHAPE)


def test_attention_probe_catches_wrong_and_failing_backends():
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    assert doctor._attention_probe(lambda q, k, v: v, q, k, v, 1e-4)["status"] == "wrong"
    assert doctor._attention_probe(lambda q, k, v: v * float("nan"), q, k, v, 1e-4)["status"] == "wrong"

    def boom(q, k, v):
        raise RuntimeError("No available kernel. Aborting execution.")
    assert doctor._attention_probe(boom, q, k, v, 1e-4) == {
        "status": "failed", "detail": "RuntimeError: No available kernel. Aborting execution."}


def test_dali_decoder_probe_runs_on_the_cpu_decoder():
    pytest.importorskip("nvidia.dali")
    res = doctor.dali_decode("cpu")  # the same pipeline the GPU check runs with device="mixed"
    assert res["status"] == "ok", res


def test_dali_mixed_decoder_needs_a_gpu_and_dali(bare):
    no_gpu = {"available": False, "reason": "none", "devices": []}
    missing = doctor.dali_checks(no_gpu, doctor.versions())["mixed_decoder"]
    assert missing == {"status": "missing", "detail": "nvidia-dali not installed"}
    vers = {"nvidia-dali": {"ok": True, "version": "2.4.0", "error": None}}
    assert doctor.dali_checks(no_gpu, vers)["mixed_decoder"]["status"] == "skipped"


def test_auto_uses_fastmae_resolvers(bare, monkeypatch):
    from fastmae.models import attention
    from fastmae.ops import dispatch

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    auto = doctor.auto_choices()
    assert auto["allowed"] == {k: list(v) for k, v in CHOICES.items()}
    x = torch.zeros(1, 50, 3 * 768)
    assert (auto["device"], auto["precision"]) == ("cpu", "fp32")
    assert auto["kernels"] == dispatch.resolve("auto", x) == "torch"
    assert auto["attn"] == attention.resolve("auto", x, num_heads=12) == "sdpa"
    assert auto["loader"] == "torch"  # nvidia.dali is blocked
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    auto = doctor.auto_choices()
    assert auto["kernels"] == "triton" and "interpreter" in auto["kernels_note"]


def test_triton_interpreter_probe_runs_a_kernel():
    res = doctor.triton_checks(gpu_ok=False, installed=True)
    assert res["interpreter"]["status"] == "ok", res["interpreter"]
    assert res["compiled"]["status"] == "skipped" and "no CUDA GPU" in res["compiled"]["detail"]
    assert res["c_compiler"] is None or os.path.isfile(res["c_compiler"])
    assert res["python_headers"] is None or res["python_headers"].endswith("Python.h")


def test_triton_probe_that_dies_is_reported_with_hints(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    monkeypatch.setattr(doctor, "c_compiler", lambda: None)
    res = doctor.triton_checks(gpu_ok=True, installed=True)
    for probe in ("interpreter", "compiled"):
        assert res[probe]["status"] == "failed"
        assert res[probe]["detail"] == "the probe process died before answering: exit code 1"
    assert any("no C compiler" in h for h in res["compiled"]["hints"])
    assert doctor.triton_checks(gpu_ok=True, installed=False)["compiled"]["detail"] == "triton is not installed"


def test_report_survives_checks_that_raise(bare, monkeypatch):
    def boom(*args):
        raise RuntimeError("boom")
    for name in ("triton_checks", "attention_checks", "dali_checks"):
        monkeypatch.setattr(doctor, name, boom)
    rep = doctor.report()
    assert rep["triton"] == rep["attention"] == rep["dali"] == {"error": "RuntimeError: boom"}
    json.loads(json.dumps(rep))
    text = doctor.format_report(rep)
    assert "check failed: RuntimeError: boom" in text
    assert "  matplotlib: not installed: disables pictures" in text


def _doctor_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "fastmae", "doctor", *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_doctor_cli_without_optional_packages(tmp_path):
    r = _doctor_cli(blocker_env(tmp_path, TRITON_INTERPRET="0"), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for label in LABELS.values():
        assert rep["versions"][label] is None and "disables" in rep["missing"][label]
    assert rep["triton"]["interpreter"]["status"] == "ok"
    assert rep["attention"]["backends"]["sdpa-math"]["status"] == "ok"
    assert rep["dali"]["mixed_decoder"]["status"] == "missing"
    if not torch.cuda.is_available():
        assert rep["gpu"]["available"] is False
        assert (rep["auto"]["kernels"], rep["auto"]["attn"], rep["auto"]["loader"]) == ("torch", "sdpa", "torch")


@pytest.mark.slow
def test_doctor_cli_with_everything(tmp_path):
    transformers = pytest.importorskip("transformers")
    r = _doctor_cli(blocker_env(tmp_path, block=(), TRITON_INTERPRET="0"))
    assert r.returncode == 0, r.stderr
    for section in ("versions", "GPU", "Triton", "attention (", "DALI", "auto chooses"):
        assert f"\n{section}" in r.stdout
    assert f"  transformers   {transformers.__version__}\n" in r.stdout
    assert "  interpreter    ok" in r.stdout


def test_problems_flag_an_auto_choice_that_failed_its_check():
    ok = {"status": "ok"}
    rep = {"auto": {"device": "cuda:0", "kernels": "triton", "attn": "flash", "loader": "dali"},
           "gpu": {"available": True},
           "triton": {"compiled": ok}, "dali": {"mixed_decoder": ok},
           "attention": {"backends": {"flash-attn": ok, "sdpa-math": ok}}}
    assert doctor.problems(rep) == []
    rep["triton"]["compiled"] = {"status": "failed"}
    rep["attention"]["backends"]["flash-attn"] = {"status": "failed"}
    rep["dali"]["mixed_decoder"] = {"status": "wrong"}
    found = doctor.problems(rep)
    assert len(found) == 3
    assert "compiled probe is failed: use --kernels torch" in found[0]
    assert "use --attn sdpa" in found[1] and "GPU decoder is wrong" in found[2]
    # the fenced form of a section that raised is read, not tripped over
    assert doctor.problems({"auto": {"error": "x"}, "gpu": {}, "triton": {"error": "x"},
                            "attention": {"error": "x"}, "dali": {"error": "x"}}) == []
