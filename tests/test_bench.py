"""fastmae bench: FLOP model, harness statistics, CLI output files, bad flags, device suite."""
import json
import math
import os
import subprocess
import types
from pathlib import Path

import pytest
import torch

from fastmae import cli
from fastmae.bench import contenders as cont
from fastmae.bench import harness
from fastmae.perf.flops import block_flops, forward_flops, named_config, train_flops_per_image
from fastmae.bench.memory import PeakMemory
from fastmae.perf.peaks import spec_peak_tflops
from fastmae.models import attention

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=4,
             decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3, mlp_ratio=2.0)


# ---------------------------------------------------------------- FLOP model

def test_flops_match_hand_count_small_config():
    # L = (32/8)^2 = 16 patches, K = int(16 * 0.25) = 4 visible, P = 8*8*3 = 192,
    # D = 32 (MLP 64), d = 24 (MLP 48).
    patch_embed = 2 * 4 * 192 * 32                      # 49_152
    enc_block = (2 * 5 * 32 * 96                        # qkv on 1+K = 5 tokens: 30_720
                 + 2 * 5 * 5 * 32 + 2 * 5 * 5 * 32      # QK^T, AV: 1_600 + 1_600
                 + 2 * 5 * 32 * 32                      # proj: 10_240
                 + 2 * 5 * 32 * 64 + 2 * 5 * 64 * 32)   # fc1, fc2: 20_480 + 20_480
    assert enc_block == 85_120
    decoder_embed = 2 * 5 * 32 * 24                     # 7_680
    dec_block = (2 * 17 * 24 * 72                       # qkv on 1+L = 17 tokens: 58_752
                 + 2 * 17 * 17 * 24 * 2                 # QK^T + AV: 27_744
                 + 2 * 17 * 24 * 24                     # proj: 19_584
                 + 2 * 17 * 24 * 48 * 2)                # fc1 + fc2: 78_336
    assert dec_block == 184_416
    decoder_pred = 2 * 17 * 24 * 192                    # 156_672
    forward = patch_embed + 2 * enc_block + decoder_embed + dec_block + decoder_pred
    assert forward == 568_160

    got = forward_flops(SMALL, 0.75)
    assert got == {"patch_embed": 49_152, "encoder": 170_240, "decoder_embed": 7_680,
                   "decoder": 184_416, "decoder_pred": 156_672, "forward": 568_160}
    assert train_flops_per_image(SMALL, 0.75) == 3 * 568_160
    assert block_flops(5, 32, 64) == 85_120


def test_flops_match_torch_flop_counter_on_the_model():
    """An independent count: torch's FlopCounterMode over the fast model's forward
    (patch embedding on visible patches, SDPA, all Linears) per image."""
    from torch.utils.flop_counter import FlopCounterMode
    import fastmae
    model = fastmae.MaskedAutoencoderViT(**SMALL, attn="math", kernels="torch")
    imgs = torch.randn(3, 3, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(imgs, mask_ratio=0.75)
    assert counter.get_total_flops() == 3 * forward_flops(SMALL, 0.75)["forward"]


def test_flops_vit_base_numbers():
    f = forward_flops(named_config("mae_vit_base_patch16", 224), 0.75)
    assert 8.5e9 < f["patch_embed"] + f["encoder"] < 8.7e9
    assert 10.5e9 < f["decoder"] < 10.6e9
    total = train_flops_per_image(named_config("mae_vit_base_patch16", 224), 0.75)
    assert 57.5e9 < total < 58.5e9
    # mask ratio 0 keeps all 196 patches: the encoder does ~4x the work
    f0 = forward_flops(named_config("mae_vit_base_patch16", 224), 0.0)
    assert f0["encoder"] > 3.9 * f["encoder"]


def test_flops_bad_mask_ratio():
    with pytest.raises(ValueError, match="mask_ratio"):
        forward_flops(SMALL, 1.0)


def test_spec_peaks():
    assert spec_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert spec_peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert spec_peak_tflops("NVIDIA H200", "fp16") == 989.4
    assert spec_peak_tflops("NVIDIA H100 80GB HBM3", "fp32") is None
    assert spec_peak_tflops("CPU: AMD EPYC (2 threads)", "fp32") is None


# ---------------------------------------------------------------- harness logic

def test_largest_fitting_is_exact_to_one_64th():
    for limit in (1, 7, 256, 300, 1000, 5000):
        calls = []

        def fits(b):
            calls.append(b)
            return b <= limit
        best, first_oom = harness.largest_fitting(fits, 256)
        assert best <= limit < first_oom
        assert first_oom - best <= max(1, first_oom // 64)
        assert len(calls) < 20
    assert harness.largest_fitting(lambda b: False, 8) == (0, 1)
    assert harness.largest_fitting(lambda b: True, 8, limit=100) == (64, None)


def test_max_batch_search_recovers_from_out_of_memory(monkeypatch):
    """The search's OOM handling, with a contender that runs out of memory above 100
    images (CUDA calls stubbed so the logic runs on CPU)."""
    steps = []

    class Fake:
        optimizer = types.SimpleNamespace(zero_grad=lambda set_to_none=True: None)

        def step(self, imgs):
            steps.append(imgs.shape[0])
            if imgs.shape[0] > 100:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cont, "build", lambda name, setup, base=None: Fake())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    setup = cont.Setup("mae_vit_tiny_patch16", 16, 0.75, "fp32", torch.device("cpu"))
    got = harness.search_max_batch("fastmae", setup, None, 32, log=lambda m: None)
    assert got["max_batch"] == 100 and got["max_batch_first_oom"] == 101
    assert steps[0] == 8 and steps[1:4] == [32, 64, 128]  # optimizer-state step, then doubling

    def broken(imgs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(Fake, "step", lambda self, imgs: broken(imgs) if imgs.shape[0] > 8 else None)
    with pytest.raises(RuntimeError, match="shapes"):  # a real bug is not taken for a full GPU
        harness.search_max_batch("fastmae", setup, None, 32, log=lambda m: None)


def test_rounds_interleave_and_statistics(monkeypatch):
    """Round-robin order rotates per round; medians, ratios and MFU come from the timings."""
    order = []
    ms = {"fastmae": 10.0, "reference": 20.0, "hf": 40.0}

    class Fake:
        def __init__(self, name):
            self.name, self.attn_backend, self.kernels = name, "sdpa", "torch"
            self.attn, self.compile = {"encoder": "sdpa", "decoder": "sdpa"}, "off"
            self.model = torch.nn.Linear(2, 3)
            self.last_loss = torch.tensor(0.5)

        def resident_bytes(self):
            return 0

    def fake_time_steps(c, batches, n, device, bar=None):
        order.append((c.name, n))
        return [ms[c.name]] * n

    monkeypatch.setattr(cont, "build", lambda name, setup, base=None: Fake(name))
    monkeypatch.setattr(cont, "base_model", lambda setup: None)
    monkeypatch.setattr(harness, "make_batches", lambda cfg, name, device: types.SimpleNamespace(kind="synthetic"))
    monkeypatch.setattr(harness, "time_steps", fake_time_steps)
    cfg = harness.BenchConfig(model="mae_vit_tiny_patch16", img_size=32, batch_size=8, steps=4,
                              warmup=2, rounds=3, device="cpu", peak_tflops=1.0,
                              contenders=("fastmae", "reference", "hf"))
    res = harness.run(cfg, log=lambda m: None)
    timed = [name for name, n in order if n == 4]
    assert timed == ["fastmae", "reference", "hf", "reference", "hf", "fastmae", "hf", "fastmae", "reference"]
    assert [n for name, n in order if n != 4] == [2, 2, 2]
    rows = {r["name"]: r for r in res["results"]}
    assert rows["fastmae"]["step_ms"] == 10.0 and rows["fastmae"]["steps_timed"] == 12
    assert rows["fastmae"]["img_per_s"] == pytest.approx(800.0)
    assert rows["fastmae"]["speedup_vs_reference"] == pytest.approx(2.0)
    assert rows["hf"]["speedup_vs_reference"] == pytest.approx(0.5)
    flops = train_flops_per_image(named_config("mae_vit_tiny_patch16", 32), 0.75)
    assert rows["reference"]["mfu"] == pytest.approx(flops * 400.0 / 1e12)
    assert res["config"]["peak_tflops_source"] == "user (--peak-tflops)"


def test_cpu_peak_memory_sees_an_allocation():
    mem = PeakMemory(torch.device("cpu"))
    if mem.kind is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    mem.start()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    x.add_(1.0)
    del x
    used = mem.stop(resident_bytes=0)
    assert 60 * 2**20 < used < 200 * 2**20


# ---------------------------------------------------------------- the CLI end to end

def test_cli_bench_cpu_writes_json_and_png(tmp_path, capsys):
    out, png = tmp_path / "res" / "bench.json", tmp_path / "bench.png"
    threads = torch.get_num_threads()
    rc = cli.main(["bench", "--model", "mae_vit_tiny_patch16", "--img-size", "32", "--batch-size", "2",
                   "--steps", "2", "--warmup", "1", "--rounds", "1", "--kernels", "torch", "--threads", "1",
                   "--device", "cpu", "--peak-tflops", "2.5", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    assert torch.get_num_threads() == threads  # --threads applies to the run only
    res = json.loads(out.read_text())
    assert res["config"]["torch_threads"] == 1 and "--threads 1" in res["command"]
    assert [r["name"] for r in res["results"]] == ["fastmae", "reference", "hf"]
    assert res["device"].startswith("CPU")
    assert res["versions"]["torch"] == torch.__version__
    assert res["command"].startswith("fastmae bench --model mae_vit_tiny_patch16")
    assert "--json" in res["command"] and res["date"]
    assert res["config"]["precision"] == "fp32" and res["config"]["batch_size"] == 2
    for r in res["results"]:
        assert r["step_ms"] > 0 and math.isclose(r["img_per_s"], 2 / (r["step_ms"] / 1e3))
        assert r["step_ms_spread"]["min"] <= r["step_ms"] <= r["step_ms_spread"]["max"]
        assert r["steps_timed"] == 2
        assert r["mfu"] == pytest.approx(r["model_tflops"] / 2.5)
        assert r["attn_backend"] == "sdpa" and r["final_loss"] > 0
        assert r["peak_mem_kind"] in ("cpu_rss_peak_delta", None)
    rows = {r["name"]: r for r in res["results"]}
    assert rows["fastmae"]["kernels"] == "torch"
    assert rows["fastmae"]["kernel_calls"]  # the fused ops really ran
    assert rows["reference"]["speedup_vs_reference"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "fastmae" in printed and "reference" in printed and "img/s" in printed


def _bad(capsys, *flags):
    rc = cli.main(["bench", "--model", "mae_vit_tiny_patch16", "--img-size", "32", *flags])
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("flags, message", [
    (["--device", "cpu", "--max-batch"], "--max-batch"),
    (["--contenders", "fastmae,timm"], "unknown contender 'timm'"),
    (["--contenders", "fastmae,fastmae"], "listed twice"),
    (["--device", "cpu", "--precision", "fp16"], "--precision fp16 needs a CUDA GPU"),
    (["--img-size", "40"], "not a multiple"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--mask-ratio", "1.0"], "--mask-ratio"),
    (["--loader", "torch"], "give --data PATH"),
    (["--plot", "chart.txt"], "ending in .png"),
    (["--device", "tpu"], "device"),
    (["--device", "cpu", "--threads", "0"], "--threads must be at least 1"),
    (["--device", "cpu", "--data", "/nonexistent/images"], "/nonexistent/images"),
])
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, flags, message):
    flags = [f.replace("chart.txt", str(tmp_path / "chart.txt")) for f in flags]
    rc, err = _bad(capsys, "--json", str(tmp_path / "r.json"), *flags)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("fastmae: error:") and message in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(attention.flash_available(), reason="flash-attn is installed here")
def test_attn_flash_without_flash_attn(capsys):
    rc, err = _bad(capsys, "--device", "cpu", "--attn", "flash")
    assert rc == 2 and err.count("\n") == 1 and "flash-attn" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_device_cuda_without_gpu(capsys):
    rc, err = _bad(capsys, "--device", "cuda")
    assert rc == 2 and err.count("\n") == 1 and "no CUDA GPU" in err


def test_hf_without_transformers(monkeypatch, capsys):
    from fastmae.commands import bench as bench_cmd
    monkeypatch.setattr(cont, "hf_available", lambda: False)
    monkeypatch.setattr(bench_cmd, "hf_available", lambda: False)
    rc, err = _bad(capsys, "--device", "cpu", "--contenders", "fastmae,hf")
    assert rc == 2 and err.count("\n") == 1 and "transformers" in err
    seen = []

    class Stop(Exception):
        pass

    def fake_run(cfg):  # stop right after the contenders are chosen
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(bench_cmd, "run_bench", fake_run)
    with pytest.raises(Stop):
        cli.main(["bench", "--device", "cpu"])
    assert seen[0].contenders == ("fastmae", "reference")
    assert "leaving out contender hf" in capsys.readouterr().err


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--model", "vit_giant"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_cli_bench_end_to_end_from_files(tmp_path, tmp_cache):
    from fastmae.data import builtin_dataset
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", "--model", "mae_vit_tiny_patch16", "--img-size", "32", "--batch-size", "4",
                   "--steps", "2", "--warmup", "1", "--rounds", "1", "--kernels", "torch", "--device", "cpu",
                   "--threads", "1", "--contenders", "fastmae,reference", "--data", str(builtin_dataset("train")),
                   "--loader", "torch", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["input"] for r in res["results"]] == ["torch loader", "torch loader"]
    assert "--data" in res["command"] and "--loader torch" in res["command"]


# ---------------------------------------------------------------- device suite

def test_device_suite_parses():
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "device_suite.sh")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_device_suite_smoke_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "FASTMAE_SUITE_SMOKE": "1"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_suite.sh")], capture_output=True,
                       text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / "log.txt").read_text()
    if not torch.cuda.is_available():
        assert "SKIPPED" in log and "bench-cpu ok" in log
        res = json.loads((tmp_path / "bench-cpu.json").read_text())
        assert [x["name"] for x in res["results"]] == ["fastmae", "reference", "hf"]
    assert len(list(tmp_path.iterdir())) <= 8
