"""The benchmark's contenders: compiled whole-model and per-block variants of the same
fastmae model, the compile switch of `fastmae train`, and the default contender lists."""
import pytest
import torch

from fastmae.bench import contenders as cont
from fastmae.commands.train import config_from_args
from fastmae.models.compiled import compile_enabled, compile_model
from fastmae.settings import ConfigError
from fastmae.train.config import TrainConfig, resolve


def _setup():
    return cont.Setup("mae_vit_micro_patch4", 16, 0.75, "fp32", torch.device("cpu"), kernels="torch")


def test_compiled_contenders_compile_the_model_or_each_block():
    whole = cont.build("fastmae-compiled", _setup())
    blocks = cont.build("fastmae-compiled-blocks", _setup())
    eager = cont.build("fastmae", _setup())
    assert (whole.compile, blocks.compile, eager.compile) == ("model", "blocks", "off")
    # per block: run_blocks calls forward_split, so that is what is compiled, on every block
    for blk in list(blocks.model.blocks) + list(blocks.model.decoder_blocks):
        assert "forward_split" in vars(blk) and hasattr(blk.forward_split, "_torchdynamo_orig_callable")
    assert not any("forward_split" in vars(b) for b in whole.model.blocks)
    assert all("forward_split" not in vars(b) for b in eager.model.blocks)


def test_default_contenders_add_the_compiled_ones_on_cuda_only(monkeypatch):
    monkeypatch.setattr(cont, "hf_available", lambda: True)
    assert cont.default_names(torch.device("cpu")) == ["fastmae", "reference", "hf"]
    assert cont.default_names(torch.device("cuda", 0)) == list(cont.NAMES)


def test_compile_setting_resolves_per_device():
    assert compile_enabled("auto", torch.device("cuda", 0)) and not compile_enabled("auto", torch.device("cpu"))
    assert compile_enabled("on", torch.device("cpu")) and not compile_enabled("off", torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="compile setting"):
        compile_enabled("yes", torch.device("cpu"))
    with pytest.raises(ConfigError, match="compile mode"):
        compile_model(torch.nn.Linear(2, 2), "layers")
    with pytest.raises(ConfigError, match="no transformer blocks"):
        compile_model(torch.nn.Linear(2, 2), "blocks")


def test_train_compile_flags():
    import argparse
    from fastmae.commands import train
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    assert config_from_args(p.parse_args(["--compile"])).compile == "on"
    cfg = config_from_args(p.parse_args(["--compile", "off", "--compile-mode", "blocks", "--cuda-graphs"]))
    assert (cfg.compile, cfg.compile_mode, cfg.cuda_graphs) == ("off", "blocks", True)
    assert config_from_args(p.parse_args([])).compile == "auto"
    assert resolve(TrainConfig(compile=True)).compile == "on"  # an older run's YAML
    with pytest.raises(ConfigError, match="--compile-mode"):
        resolve(TrainConfig(compile_mode="layers"))
    with pytest.raises(ConfigError, match="--compile"):
        resolve(TrainConfig(compile="maybe"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fastmae-compiled", "fastmae-compiled-blocks"])
def test_compiled_step_equals_eager_on_cpu(name, monkeypatch):
    # The masking noise is drawn inside the step: inductor must draw it as eager torch does.
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    torch.manual_seed(0)
    base = cont.base_model(_setup())
    eager, compiled = cont.build("fastmae", _setup(), base), cont.build(name, _setup(), base)
    imgs = torch.randn(2, 3, 16, 16)
    losses = []
    for c in (eager, compiled):
        torch.manual_seed(1)  # the same masking noise
        losses.append(c.loss_fn(imgs))
        losses[-1].backward()
    # Gradients, not weights after AdamW: its first step is ~lr * sign(grad), which turns the
    # rounding noise of a zero gradient (the key bias's) into a full-size difference.
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (n, a), b in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_a_compiled_contender_that_fails_is_left_out_and_said(monkeypatch):
    from fastmae.bench import harness, report

    class Fake:
        def __init__(self, name):
            self.name, self.attn_backend, self.kernels = name, "sdpa", "torch"
            self.attn, self.compile = {"encoder": "sdpa", "decoder": "sdpa"}, cont.COMPILED.get(name, "off")
            self.model, self.last_loss = torch.nn.Linear(2, 3), torch.tensor(0.5)

        def resident_bytes(self):
            return 0

    def fake_time_steps(c, batches, n, device, bar=None):
        if c.name == "fastmae-compiled":
            raise RuntimeError("BackendCompilerFailed: inductor ran out of patience\nmore")
        return [10.0] * n

    monkeypatch.setattr(cont, "build", lambda name, setup, base=None: Fake(name))
    monkeypatch.setattr(cont, "base_model", lambda setup: None)
    monkeypatch.setattr(harness, "make_batches", lambda cfg, name, device: type("B", (), {"kind": "synthetic"})())
    monkeypatch.setattr(harness, "time_steps", fake_time_steps)
    logged = []
    cfg = harness.BenchConfig(model="mae_vit_tiny_patch16", img_size=32, batch_size=8, steps=2, warmup=1,
                              rounds=2, device="cpu", contenders=("fastmae", "fastmae-compiled", "reference"))
    res = harness.run(cfg, log=logged.append)
    assert [r["name"] for r in res["results"]] == ["fastmae", "reference"]
    assert res["left_out"] == {"fastmae-compiled": "RuntimeError: BackendCompilerFailed: inductor ran out of patience"}
    assert any("fastmae-compiled failed in warm-up" in m for m in logged)
    assert "left out: fastmae-compiled (RuntimeError" in report.table(res)

    def eager_fails(c, batches, n, device, bar=None):  # a failure outside compile still raises
        raise RuntimeError("shapes cannot be multiplied")

    monkeypatch.setattr(harness, "time_steps", eager_fails)
    with pytest.raises(RuntimeError, match="shapes"):
        harness.run(cfg, log=logged.append)
