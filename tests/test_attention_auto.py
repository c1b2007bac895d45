"""attn auto picks by measurement: the choice logic with an injected timer on the CPU, the
pinned SDPA kernel honoured inside torch.compile, honest per-module labels, and the real
timing on a GPU."""
import pytest
import torch
from torch.nn.attention import SDPBackend

from fastmae.bench import contenders as cont
from fastmae.models import attention as A


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(A, "_AUTO", {})


def test_choose_takes_the_fastest_and_drops_the_ones_that_fail():
    def fails():
        raise RuntimeError("No available kernel. Aborting execution.")

    runs = {"a": lambda: None, "b": lambda: None, "c": fails}
    times = {runs["a"]: 2.0, runs["b"]: 0.5}

    def timer(fn):
        fn()
        return times[fn]

    best, timings = A.choose(runs, timer)
    assert best == "b" and timings["a"] == 2.0 and timings["b"] == 0.5
    assert timings["c"].startswith("RuntimeError: No available kernel")
    times[runs["a"]] = 0.1
    assert A.choose(runs, timer)[0] == "a"  # the measurement decides, not an order
    assert A.choose({"c": fails}, timer)[0] is None


def test_measure_auto_times_once_per_shape_and_caches(monkeypatch):
    # On the CPU the pinned SDPA kernels cannot run: they fail inside the timer and drop out;
    # "math" and "sdpa" run for real, with made-up timings.
    monkeypatch.setattr(A, "candidates", lambda x, h: ["sdpa-cudnn", "math", "sdpa"])
    fake = {"math": 1.0, "sdpa": 3.0}
    timed = []

    def timer(fn):
        fn()  # forward + backward of the real kernel
        timed.append(fn.backend)
        return fake[fn.backend]

    x = torch.randn(1, 1, 3 * 32)
    assert A.measure_auto(x, 4, seq_len=10, batch=2, timer=timer) == "math"
    assert timed == ["math", "sdpa"]  # sdpa-cudnn raised before its time was taken
    fake["sdpa"] = 0.1
    assert A.measure_auto(x, 4, seq_len=10, timer=timer) == "math"  # cached for this shape
    assert A.measure_auto(x, 4, seq_len=17, timer=timer) == "sdpa"  # a new shape is timed
    assert A.auto_key(x, 4, 17) in A._AUTO and len(timed) == 4


def test_auto_is_sdpa_on_the_cpu_and_untimed():
    x = torch.randn(2, 5, 3 * 64)
    assert A.resolve("auto", x, 4) == "sdpa" and A._AUTO == {}


def test_pinned_sdpa_kernel_is_honoured_inside_torch_compile(monkeypatch):
    """attention() pins a kernel with sdpa_kernel; the compiled graph must run that kernel.
    On the CPU only MATH can be pinned: it must replace the CPU flash kernel in the graph."""
    monkeypatch.setitem(A.SDPA_PINNED, "sdpa-math", SDPBackend.MATH)
    graphs = []

    def backend(gm, example_inputs):
        from torch._functorch.aot_autograd import aot_module_simplified
        from functorch.compile import make_boxed_func

        def keep(g, _):
            graphs.append({str(n.target) for n in g.graph.nodes if n.op == "call_function"})
            return make_boxed_func(g.forward)
        return aot_module_simplified(gm, example_inputs, fw_compiler=keep, bw_compiler=keep)

    qkv = torch.randn(2, 6, 3 * 32, requires_grad=True)
    outs = {}
    for name in ("sdpa", "sdpa-math"):
        torch._dynamo.reset()
        graphs.clear()
        fn = torch.compile(lambda t, name=name: A.attention(t, 4, name), backend=backend, fullgraph=True)
        outs[name] = fn(qkv)
        outs[name].sum().backward()
        ops = set().union(*graphs)
        flash_cpu = any("flash_attention_for_cpu" in op for op in ops)
        assert flash_cpu == (name == "sdpa"), (name, sorted(ops))
    torch.testing.assert_close(outs["sdpa-math"], outs["sdpa"], rtol=1e-5, atol=1e-6)


def test_bench_labels_each_module_with_what_it_runs(monkeypatch):
    """An encoder whose head size flash supports and a decoder whose head size it does not:
    the bench row says flash for the encoder and sdpa for the decoder, not one label."""
    monkeypatch.setattr(A, "_flash_unfit", lambda x, head_dim: None if head_dim == 64 else "head size")
    setup = cont.Setup("mae_vit_tiny_patch16", 32, 0.75, "fp32", torch.device("cpu"))  # hd 64 / 32
    c = cont.build("fastmae", setup)
    assert c.attn == {"encoder": "flash", "decoder": "sdpa"} and c.attn_backend == "flash/sdpa"
    ref = cont.build("reference", setup)
    assert ref.attn == {"encoder": "sdpa", "decoder": "sdpa"} and ref.attn_backend == "sdpa"


@pytest.mark.gpu
def test_auto_times_the_candidates_on_cuda():
    x = torch.randn(1, 1, 3 * 768, device="cuda", dtype=torch.bfloat16)
    cands = A.candidates(x, 12)
    choice = A.resolve("auto", x, 12, seq_len=50, batch=64)
    assert choice in cands and A._AUTO[A.auto_key(x, 12, 50)] == choice
    qkv = torch.randn(8, 50, 3 * 768, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(A.attention(qkv, 12, choice).float(), A.attention(qkv, 12, "math").float(),
                               rtol=2e-2, atol=2e-2)
