"""Estimate where a GPU spends a pretraining step, without a GPU: bytes and FLOPs of every
kernel of one step of fastmae and of the plain reference, rolled up into a roofline time
on an H100 SXM and an H200 (fastmae/perf/traffic.py says how). The result is an
estimate from byte and FLOP counts, never a measurement.

    python benchmarks/step_traffic.py --json benchmarks/results/traffic-b16.json \
        --plot benchmarks/results/traffic-b16.png

fastmae's ops run as the Triton kernels they are on a GPU (in Triton's interpreter here),
so each fused op counts as one kernel that reads its inputs and writes its outputs."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import torch  # noqa: E402

import fastmae  # noqa: E402
from fastmae.perf import traffic  # noqa: E402
from fastmae.perf.flops import named_config, train_flops_per_image  # noqa: E402
from fastmae.reference import create_reference  # noqa: E402
from fastmae.settings import PRECISIONS  # noqa: E402

NOTE = "estimated from byte and FLOP counts, not measured on a GPU"


def build(name: str, args):
    torch.manual_seed(0)
    if name == "fastmae":
        return fastmae.create_model(args.model, img_size=args.img_size, kernels=args.kernels,
                                    norm_pix_loss=args.norm_pix_loss)
    return create_reference(args.model, img_size=args.img_size, norm_pix_loss=args.norm_pix_loss)


def contender(name: str, args) -> tuple[dict, dict]:
    model = build(name, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    b_small, b_large = args.measure_batches

    def loss_fn(m, imgs):
        return m(imgs, args.mask_ratio)[0]

    runs = []
    for b in (b_small, b_large):
        imgs = torch.randn(b, 3, args.img_size, args.img_size)
        runs.append(traffic.record_step(model, optimizer, imgs, loss_fn, args.precision))
    ops = traffic.extrapolate(runs[0], runs[1], b_small, b_large, args.batch)
    return traffic.summarize(ops, args.batch, train_flops_per_image(named_config(args.model, args.img_size), args.mask_ratio)), \
        dict(fastmae.ops.dispatch.calls)


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart drawn", file=sys.stderr)
        return
    names = list(result["contenders"])
    gpus = list(traffic.GPUS)
    kinds = sorted({k for c in result["contenders"].values()
                    for g in c["gpus"].values() for k in g["ms_by_kind"]})
    fig, axes = plt.subplots(1, len(gpus), figsize=(5 * len(gpus), 4), sharey=True)
    for ax, gpu in zip(axes, gpus):
        bottom = [0.0] * len(names)
        for kind in kinds:
            ms = [result["contenders"][n]["gpus"][gpu]["ms_by_kind"].get(kind, 0.0) for n in names]
            ax.bar(names, ms, bottom=bottom, label=kind)
            bottom = [b + m for b, m in zip(bottom, ms)]
        for i, n in enumerate(names):
            rate = result["contenders"][n]["gpus"][gpu]["img_per_s"]
            ax.text(i, bottom[i], f"{rate:,.0f} img/s", ha="center", va="bottom", fontsize=9)
        ax.set_title(traffic.GPUS[gpu].name)
        ax.set_ylabel("estimated step time (ms)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(kinds), fontsize=8)
    fig.suptitle(f"{result['model']} {result['img_size']}px, batch {result['batch']}, "
                 f"{result['precision']}: {NOTE}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mae_vit_base_patch16")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256, help="the batch the estimate is for")
    p.add_argument("--measure-batches", type=int, nargs=2, default=(2, 3),
                   help="two small batches actually run; every cost is linear in the batch")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--precision", default="bf16", choices=[v for v in PRECISIONS if v != "auto"])
    p.add_argument("--norm-pix-loss", action="store_true")
    p.add_argument("--kernels", default="triton", help="fastmae ops (triton: the GPU's kernels)")
    p.add_argument("--contenders", default="fastmae,reference")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--plot", help="write a bar chart here (PNG)")
    args = p.parse_args(argv)
    if args.measure_batches[0] < 2 or args.measure_batches[1] <= args.measure_batches[0]:
        p.error("--measure-batches needs two increasing sizes of at least 2 (batch 1 elides "
                "broadcast reductions)")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    result = {"kind": "estimate", "note": NOTE, "model": args.model, "img_size": args.img_size,
              "batch": args.batch, "mask_ratio": args.mask_ratio,
              "precision": f"{args.precision} (CUDA autocast policy emulated)",
              "roofline": "sum over kernels of max(flops / peak, bytes / bandwidth) + "
                          f"{traffic.LAUNCH_S * 1e6:.0f} us per launch",
              "gpus": {k: {"name": g.name, "peak_tflops": g.peak_flops / 1e12,
                           "bandwidth_tb_s": g.bandwidth / 1e12} for k, g in traffic.GPUS.items()},
              "contenders": {}, "kernel_calls": {}}
    for name in args.contenders.split(","):
        fastmae.ops.dispatch.calls.clear()
        summary, calls = contender(name, args)
        triton_calls = sum(n for op, n in calls.items() if op.endswith(":triton"))
        if triton_calls and "fused" not in summary["per_image_by_kind"]:
            raise SystemExit(f"{name} ran {triton_calls} Triton launches that no dispatch mode saw: "
                             "its ops are not registered as torch custom ops, so their bytes "
                             "would be missing from the estimate")
        result["contenders"][name] = summary
        result["kernel_calls"][name] = calls
        gpu = summary["gpus"]["h100-sxm"]
        print(f"{name:10s} {summary['mbytes_per_image']:8.1f} MB/img "
              f"(non-GEMM {summary['non_gemm_mbytes_per_image']:7.1f}), "
              f"{summary['launches']} launches, H100 est. {gpu['img_per_s']:8.0f} img/s "
              f"(MFU {gpu.get('mfu', 0):.1%})")
    if "reference" in result["contenders"] and len(result["contenders"]) > 1:
        result["vs_reference"] = traffic.compare(result["contenders"])
        print(json.dumps(result["vs_reference"], indent=1))
    result.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  versions={"python": platform.python_version(), "torch": torch.__version__,
                            "fastmae": fastmae.__version__},
                  host=platform.processor() or platform.machine(),
                  command="python " + " ".join(shlex.quote(a) for a in
                                               ["benchmarks/step_traffic.py", *(argv or sys.argv[1:])]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
