"""`fastmae train` end to end on tiny data: learning, exact resume after kill -9,
corrupt-checkpoint fallback, outputs, and one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from fastmae.settings import ConfigError
from fastmae.train import checkpoint
from tests.train_fixtures import make_image_folder, run_cli

TINY = ["--model", "mae_vit_micro_patch4", "--img-size", "32", "--batch-size", "8", "--loader", "torch",
        "--num-workers", "0", "--warmup-epochs", "1", "--blr", "2e-3", "--log-every", "1"]


@pytest.fixture(autouse=True)
def _torch_ops(monkeypatch):
    # The Triton kernels have their own tests; here they would run in the (slow) interpreter.
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n=32)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_writes_outputs(images, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["train", "--data", str(images), "--output-dir", str(out), "--epochs", "6",
                               *TINY])
    assert code == 0, stdout
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert all({"step", "epoch", "loss", "lr", "img_per_s"} <= r.keys() for r in rows)
    first = sum(r["loss"] for r in rows[:4]) / 4
    last = sum(r["loss"] for r in rows[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    for name in ("reconstructions.png", "loss_curve.png", "config.yaml", "checkpoint-last.pth"):
        assert (out / name).stat().st_size > 0
    assert (out / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= state.keys()  # official format
    assert state["epoch"] == 5 and state["step"] == 24
    assert "outputs:" in stdout


KILL_AFTER_SAVES = """
import os, signal, sys
import fastmae.train.checkpoint as c
saves, original = [0], c.save
def save_then_die(*a, **k):
    path = original(*a, **k)
    saves[0] += 1
    if saves[0] == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
c.save = save_then_die
from fastmae.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(args, kill_after=None):
    code = KILL_AFTER_SAVES.format(n=kill_after) if kill_after else \
        "import sys; from fastmae.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "0"}, timeout=300)


def test_kill9_then_resume_auto_matches_uninterrupted_run(images, tmp_path):
    args = ["train", "--data", str(images), "--epochs", "3", "--save-every-steps", "3", *TINY]
    whole = _run([*args, "--output-dir", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    # killed by SIGKILL right after its third checkpoint (steps 3, 4 = end of epoch 0, 6)
    killed = _run([*args, "--output-dir", str(tmp_path / "killed")], kill_after=3)
    assert killed.returncode == -9
    assert checkpoint.load(tmp_path / "killed" / checkpoint.LAST)["step"] == 6
    resumed = _run([*args, "--output-dir", str(tmp_path / "killed"), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "killed")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bit-exact on the CPU
    wa = torch.load(tmp_path / "whole" / checkpoint.LAST, weights_only=True)["model"]
    wb = torch.load(tmp_path / "killed" / checkpoint.LAST, weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_corrupt_latest_checkpoint_falls_back_to_previous(images, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--data", str(images), "--output-dir", str(out), *TINY]
    assert run_cli([*base, "--epochs", "2"])[0] == 0
    newest = checkpoint.numbered(out)[-1]
    assert newest.name == "checkpoint-0000008.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated write
    code, stdout, stderr = run_cli([*base, "--epochs", "3"])
    assert code == 0
    assert "skipping unusable checkpoint" in stderr and "checkpoint-0000008.pth" in stderr
    assert "resumed from" in stdout and "at step 4" in stdout
    assert checkpoint.load(out / checkpoint.LAST)["step"] == 12


def test_finished_run_resumes_to_nothing_and_keeps_outputs(images, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(images), "--output-dir", str(out), "--epochs", "1", *TINY]
    assert run_cli(args)[0] == 0
    before = (out / "checkpoint-last.pth").read_bytes()
    code, stdout, _ = run_cli(args)
    assert code == 0 and "resumed from" in stdout and "0 steps" not in stdout
    assert (out / "checkpoint-last.pth").read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--data", "{missing}"], "does not exist"),
    (["--data", "{empty}"], "no image"),
    (["--batch-size", "64"], "larger than"),
    (["--img-size", "30"], "not a positive multiple of the patch size"),
    (["--model", "mae_vit_colossal"], "unknown model"),
    (["--output-dir", "{file}/sub"], "cannot write to output dir"),
    (["--mask-ratio", "1.5"], "--mask-ratio"),
    (["--min-crop-scale", "0"], "--min-crop-scale"),
    (["--epochs", "ten"], "invalid int value"),
    (["--kernels", "cuda"], "--kernels"),
    (["--attn", "flash"], "flash"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--precision", "fp8"], "--"),
    (["--config", "{missing}"], "does not exist"),
])
def test_user_errors_exit_2_with_one_line(images, tmp_path, extra, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    subs = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "file": tmp_path / "afile"}
    extra = [e.format(**subs) for e in extra]
    args = ["train", "--data", str(images), "--output-dir", str(out), "--epochs", "1", *TINY, *extra]
    code, _, stderr = run_cli(args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmae: error:") and message in lines[0], stderr
    assert (out / "notes.txt").read_text() == "user data"
    assert (tmp_path / "afile").read_text() == "keep me"


def test_sigterm_saves_and_exits_cleanly(images, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(images), "--output-dir", str(out), "--epochs", "200", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "fastmae", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    try:
        deadline = time.time() + 240
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted; checkpoint saved" in stdout
    state = checkpoint.load(out / checkpoint.LAST)
    assert state["step"] == metrics(out)[-1]["step"] < 800


def test_non_finite_losses_stop_the_run_with_the_last_good_state(images, tmp_path, monkeypatch):
    import fastmae.models.mae as mae
    calls, real = [0], mae.ops.masked_pixel_loss

    def loss_goes_nan(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss if calls[0] <= 2 else loss * float("nan")

    monkeypatch.setattr(mae.ops, "masked_pixel_loss", loss_goes_nan)
    out = tmp_path / "run"
    code, _, stderr = run_cli(["train", "--data", str(images), "--output-dir", str(out), "--epochs", "5",
                               "--max-bad-steps", "3", *TINY])
    assert code == 2 and "not finite for 3 steps in a row" in stderr
    state = checkpoint.load(out / checkpoint.LAST)
    assert state["step"] == 5  # 2 good steps, then 3 skipped
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    rows = metrics(out)
    assert [r["skipped_step"] for r in rows] == [False, False, True, True, True]


def test_yaml_config_then_flags_override_and_resolved_config_is_saved(images, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 1\nbatch-size: 4\nmask_ratio: 0.5\nmax_steps: 2\n")
    out = tmp_path / "run"
    code, _, _ = run_cli(["train", "--config", str(cfg), "--data", str(images), "--output-dir", str(out),
                          *TINY])  # TINY sets --batch-size 8, which wins over the file
    assert code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["batch_size"] == 8 and saved["mask_ratio"] == 0.5 and saved["epochs"] == 1
    assert saved["data"] == str(images) and saved["model"] == "mae_vit_micro_patch4"
    assert checkpoint.load(out / checkpoint.LAST)["step"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nlearning_rate: 3\n")
    code, _, stderr = run_cli(["train", "--config", str(bad)])
    assert code == 2 and "unknown setting 'learning_rate'" in stderr


# ---------------------------------------------------------------- defaults that scale to the run

def test_default_warmup_scales_to_a_short_run():
    from fastmae.train.config import TrainConfig, resolve
    assert resolve(TrainConfig()).warmup_epochs == 2                     # built-in preset, 20 epochs
    assert resolve(TrainConfig(data="x")).warmup_epochs == 40            # the paper's, 400 epochs
    assert resolve(TrainConfig(epochs=1)).warmup_epochs == pytest.approx(0.1)
    assert resolve(TrainConfig(data="x", epochs=100)).warmup_epochs == pytest.approx(10.0)
    assert resolve(TrainConfig(epochs=1, warmup_epochs=0.5)).warmup_epochs == 0.5  # the user's, kept
    with pytest.raises(ConfigError, match=r"--warmup-epochs must be between 0 and --epochs \(1\), got 2"):
        resolve(TrainConfig(epochs=1, warmup_epochs=2))                  # set by the user: an error


def _no_warmup_flag(flags):
    i = flags.index("--warmup-epochs")
    return flags[:i] + flags[i + 2:]


def _lrs_follow_the_schedule(out, warmup, epochs):
    from fastmae.train.schedule import lr_at
    state = checkpoint.load(out / checkpoint.LAST)
    sched = state["scheduler"]
    for row in metrics(out):  # the lr logged at step s was set before the step, at s - 1
        want = lr_at((row["step"] - 1) / sched["steps_per_epoch"], lr=sched["base_lr"], min_lr=0.0,
                     warmup_epochs=warmup, epochs=epochs)
        assert row["lr"] == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_epochs_1_with_data_runs_with_the_default_warmup(images, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["train", "--data", str(images), "--epochs", "1", "--output-dir", str(out),
                                    *_no_warmup_flag(TINY)])
    assert code == 0, stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["warmup_epochs"] == pytest.approx(0.1) and saved["epochs"] == 1
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    _lrs_follow_the_schedule(out, 0.1, 1)
    # not a terminal: one plain line per logged step, no carriage-return bar
    assert "\r" not in stdout + stderr
    lines = [ln for ln in stdout.splitlines() if ln.startswith("train: step ")]
    assert [ln.split(",")[0] for ln in lines] == [f"train: step {s}/4" for s in range(1, 5)]
    assert all("loss" in ln and "lr" in ln for ln in lines)


@pytest.mark.slow  # ~15 s, plus ~25 s to generate the built-in dataset when no test has yet
def test_epochs_1_on_the_builtin_default_runs(tmp_path):
    # The built-in preset (20 epochs, 2 warm-up) asked for 1 epoch; a short --max-steps and a
    # smaller batch keep it quick, the schedule is still the 1-epoch one.
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["train", "--epochs", "1", "--output-dir", str(out), "--max-steps", "2",
                                    "--batch-size", "16", "--loader", "torch", "--num-workers", "0",
                                    "--log-every", "1"])
    assert code == 0, stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["warmup_epochs"] == pytest.approx(0.1) and saved["model"] == "mae_vit_micro_patch4"
    _lrs_follow_the_schedule(out, 0.1, 1)
    assert "done: 2 steps" in stdout


def test_device_accepts_cuda_index_like_the_resolver(monkeypatch):
    from fastmae.train.config import TrainConfig, resolve
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve(TrainConfig(device="cuda:1")).device == "cuda:1"
    with pytest.raises(ConfigError, match="--device cuda:5: only 2 GPU"):
        resolve(TrainConfig(device="cuda:5"))
    with pytest.raises(ConfigError, match="--device: unknown device 'gpu'"):
        resolve(TrainConfig(device="gpu"))
    with pytest.raises(ConfigError, match="--kernels: unknown kernels 'cuda'"):
        resolve(TrainConfig(kernels="cuda"))


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_min_crop_scale_one_trains_on_whole_images(tmp_path, backend):
    """--min-crop-scale 1: every crop is the whole picture (a fixed camera's framing)."""
    from PIL import Image

    from fastmae.data import pretrain_loader
    from fastmae.data.transforms import mean_std
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in mean_std(3))
    want = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    for scale, whole in (((1.0, 1.0), True), ((0.2, 1.0), False)):
        seen = []
        for seed in range(6):
            loader = pretrain_loader(tmp_path, img_size=16, batch_size=1, backend=backend, device="cpu",
                                     num_workers=0, seed=seed, scale=scale)
            x = next(iter(loader))[0]
            seen.append(min(float((x - want).abs().max()), float((x - want.flip(-1)).abs().max())))
        assert (max(seen) < 0.05) if whole else (max(seen) > 0.5), (scale, seen)
