"""pytest-benchmark suite of one MAE pretraining step (forward + backward + AdamW) per
contender: ViT-B/16 at 224 px, batch 128, bf16 on CUDA; a tiny model on CPU.

    pytest benchmarks/test_bench_step.py --benchmark-only [--benchmark-json FILE]

For the interleaved, many-round comparison with MFU and memory use `fastmae bench`;
this suite puts the same step beside the op benchmarks in pytest-benchmark's format."""
import pytest
import torch

from fastmae.bench import contenders as cont
from fastmae.perf.flops import named_config, train_flops_per_image

CUDA = torch.cuda.is_available()
if CUDA:
    SIZE = dict(model="mae_vit_base_patch16", img_size=224, batch=128, precision="bf16")
else:
    SIZE = dict(model="mae_vit_tiny_patch16", img_size=32, batch=4, precision="fp32")


@pytest.fixture(scope="module")
def setup():
    return cont.Setup(SIZE["model"], SIZE["img_size"], 0.75, SIZE["precision"],
                      torch.device("cuda" if CUDA else "cpu"))


@pytest.fixture(scope="module")
def base(setup):
    return cont.base_model(setup)


# The compiled contenders are timed by `fastmae bench` (their compile would dwarf this suite).
@pytest.mark.parametrize("name", [n for n in cont.NAMES if n not in cont.COMPILED])
def test_train_step(benchmark, setup, base, name):
    if name == "hf" and not cont.hf_available():
        pytest.skip("transformers is not installed")
    c = cont.build(name, setup, base)
    imgs = torch.randn(SIZE["batch"], 3, setup.img_size, setup.img_size, device=setup.device)

    def step():
        c.step(imgs)
        if CUDA:
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=10 if CUDA else 5, warmup_rounds=3 if CUDA else 1)
    assert torch.isfinite(c.last_loss)
    median_s = benchmark.stats.stats.median
    flops = train_flops_per_image(named_config(setup.model, setup.img_size), setup.mask_ratio)
    benchmark.extra_info.update(
        contender=name, model=setup.model, batch=SIZE["batch"], precision=setup.precision,
        device=torch.cuda.get_device_name() if CUDA else "cpu", attn_backend=c.attn_backend,
        img_per_s=SIZE["batch"] / median_s, model_tflops=flops * SIZE["batch"] / median_s / 1e12)
