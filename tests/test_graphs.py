"""--cuda-graphs: what can be checked on the CPU (the refusals, the lr tensor the graph reads,
the capturable optimizer keeping the settings recipe), and the real capture on a GPU. That
the captured step has no host sync and no branch on the data is tested in
test_train_nosync.py."""
import pytest
import torch

from fastmae.models import create_model
from fastmae.settings import ConfigError, build_optimizer
from fastmae.train import TrainConfig, distributed, graphs, pretrain
from fastmae.train.step import StepState
from tests.train_fixtures import make_image_folder, run_cli

ONE = distributed.DistInfo()


@pytest.mark.parametrize("device, dist, precision, accum, message", [
    ("cpu", ONE, "fp32", 1, "needs a CUDA device"),
    ("cuda", distributed.DistInfo(rank=0, world_size=2), "bf16", 1, "torchrun/DDP"),
    ("cuda", ONE, "bf16", 2, "--accum-iter 2"),
    ("cuda", ONE, "fp16", 1, "GradScaler"),
])
def test_unsupported_settings_are_refused(device, dist, precision, accum, message):
    with pytest.raises(ConfigError, match=message):
        graphs.check_supported(torch.device(device), dist, precision, accum)
    graphs.check_supported(torch.device("cuda"), ONE, "bf16", 1)  # the supported case passes


def test_cli_refuses_cuda_graphs_on_the_cpu(tmp_path):
    data = make_image_folder(tmp_path / "data", n=8)
    code, _, stderr = run_cli(["train", "--data", str(data), "--output-dir", str(tmp_path / "run"),
                               "--model", "mae_vit_micro_patch4", "--img-size", "32", "--batch-size", "4",
                               "--epochs", "1", "--loader", "torch", "--num-workers", "0",
                               "--device", "cpu", "--cuda-graphs"])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--cuda-graphs needs a CUDA device" in lines[0], stderr


def test_capturable_optimizer_keeps_the_recipe_and_reads_lr_from_a_tensor():
    model = create_model("mae_vit_micro_patch4", img_size=16, depth=1, decoder_depth=1)
    plain = build_optimizer(model, 1e-3, 0.05, torch.device("cpu"))
    opt = graphs.build_optimizer(model, 1e-3, 0.05, torch.device("cpu"))
    assert opt.defaults["capturable"] and opt.defaults["fused"] and opt.defaults["betas"] == plain.defaults["betas"]
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == \
        [[id(p) for p in g["params"]] for g in plain.param_groups]
    assert [g["weight_decay"] for g in opt.param_groups] == [g["weight_decay"] for g in plain.param_groups]
    lr = [g["lr"] for g in opt.param_groups]
    graphs.set_lr(opt, 3e-4)
    assert all(g["lr"] is t and torch.is_tensor(t) for g, t in zip(opt.param_groups, lr))  # same tensors
    assert all(float(t) == pytest.approx(3e-4) for t in lr)


@pytest.mark.gpu
def test_captured_steps_equal_eager_steps_on_cuda():
    """Five replays of the captured step against five eager steps of the same loop code, from
    the same weights and inputs; then a non-finite batch is skipped inside the graph."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    base = create_model("mae_vit_micro_patch4", img_size=32).to(device)
    imgs = [torch.randn(8, 3, 32, 32, device=device) for _ in range(5)]
    noise = [torch.rand(8, base.num_patches, device=device) for _ in range(5)]
    results = []
    for captured in (False, True):
        model = create_model("mae_vit_micro_patch4", img_size=32).to(device)
        model.load_state_dict(base.state_dict())
        opt = graphs.build_optimizer(model, 1e-3, 0.05, device)
        state = StepState.new(device)
        g = graphs.GraphedStep(model, model, opt, state, "bf16", 1.0, 0.75, ONE)
        for x, n in zip(imgs, noise):
            graphs.set_lr(opt, 1e-3)
            if captured:
                g.step(x, n)
            else:
                g.imgs, g.noise, g.poison = x, n, torch.zeros((), device=device)
                g._body()
        torch.cuda.synchronize()
        results.append(({k: v.clone() for k, v in model.state_dict().items()}, state.read()))
        if captured:
            bad = imgs[0].clone()
            bad[0, 0, 0, 0] = float("nan")
            before = {k: v.clone() for k, v in model.state_dict().items()}
            g.step(bad, noise[0])
            skipped, in_row, _ = state.read()
            assert skipped and in_row == 1
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    (eager, eager_flags), (graph, graph_flags) = results
    assert eager_flags[:2] == graph_flags[:2] == (False, 0)
    assert eager_flags[2] == pytest.approx(graph_flags[2], rel=1e-3)
    for k in eager:
        torch.testing.assert_close(graph[k], eager[k], rtol=2e-2, atol=2e-3, msg=k)


@pytest.mark.gpu
def test_pretrain_with_cuda_graphs_runs_and_learns(tmp_path):
    data = make_image_folder(tmp_path / "data", n=32)
    res = pretrain(TrainConfig(data=str(data), model="mae_vit_micro_patch4", img_size=32, batch_size=8,
                               epochs=4, warmup_epochs=1, blr=2e-3, loader="torch", num_workers=0,
                               cuda_graphs=True, compile="off", log_every=1,
                               output_dir=str(tmp_path / "run")), log=lambda m: None)
    losses = [r["loss"] for r in res.history]
    assert res.steps == 16 and all(l == l for l in losses)
    assert sum(losses[-4:]) < sum(losses[:4])
