"""pytest-benchmark suite of `fastmae score`'s work per batch of images: complementary-mask
reconstruction error, encoder features and kNN novelty (Scorer.score), on the CPU with a
micro model at 64 px, and on CUDA with ViT-B/16 at 224 px in bf16, eager and compiled, when
there is a GPU.

    pytest benchmarks/test_bench_monitor.py --benchmark-only [--benchmark-json FILE]

Images/s = batch / median seconds, in extra_info. Random weights: the speed of scoring does
not depend on what the model learned."""
import pytest
import torch

from fastmae.models.registry import create_model
from fastmae.monitor import Scorer

CUDA = torch.cuda.is_available()
if CUDA:
    SIZE = dict(model="mae_vit_base_patch16", img_size=224, batch=64, reference=64, precision="bf16")
else:
    SIZE = dict(model="mae_vit_micro_patch4", img_size=64, batch=8, reference=24, precision="fp32")


COMPONENTS = {"all": ("recon", "patch_novelty", "novelty"), "features-only": ("patch_novelty", "novelty")}
COMPILE = ("off", "on") if CUDA else ("off",)  # on the CPU inductor's compile outlasts the run


@pytest.fixture(scope="module", params=[(c, k) for c in COMPONENTS for k in COMPILE],
                ids=lambda p: f"{p[0]}-compile-{p[1]}")
def scorer(request):
    components, compile_setting = request.param
    torch.manual_seed(0)
    model = create_model(SIZE["model"], img_size=SIZE["img_size"])
    s = Scorer(model, device="cuda" if CUDA else "cpu", precision=SIZE["precision"], rounds=2,
               batch_size=SIZE["batch"], components=COMPONENTS[components], compile=compile_setting)
    s.fit(torch.randn(SIZE["reference"], 3, SIZE["img_size"], SIZE["img_size"]), fpr=0.05)
    return s


def test_score_images(benchmark, scorer):
    imgs = torch.randn(SIZE["batch"], 3, SIZE["img_size"], SIZE["img_size"])

    def run():
        out = scorer.score(imgs)
        if CUDA:
            torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(run, rounds=5 if CUDA else 3, warmup_rounds=1)
    assert torch.isfinite(out.score).all() and out.heatmap.shape[0] == SIZE["batch"]
    benchmark.extra_info.update(
        model=SIZE["model"], img_size=SIZE["img_size"], batch=SIZE["batch"], rounds=scorer.rounds,
        passes=scorer.masks.passes, components=scorer.components, precision=scorer.precision,
        compiled=scorer.compiled,
        device=torch.cuda.get_device_name() if CUDA else "cpu")
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = SIZE["batch"] / benchmark.stats.stats.median
