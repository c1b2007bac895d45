"""`fastmae bench`: pretraining-step throughput of fastmae vs the reference vs Hugging Face."""
import os
import shlex
import sys

import torch

from ..bench import report
from ..bench.contenders import NAMES, default_names, hf_available
from ..bench.harness import BenchConfig, run as run_bench
from ..models.registry import CONFIGS
from ..settings import ATTENTION, KERNELS, LOADERS, PRECISIONS, ConfigError, resolve_device
from .flags import DEVICE_HELP

HELP = ("Time the MAE pretraining step (forward + backward + AdamW) of fastmae, the plain "
        "PyTorch reference and Hugging Face ViTMAE, interleaved in one process.")

PLOT_FORMATS = (".png", ".svg", ".pdf")


def add_arguments(p):
    p.add_argument("--model", default="mae_vit_base_patch16", choices=list(CONFIGS), metavar="NAME",
                   help=f"model size: {', '.join(CONFIGS)} (default mae_vit_base_patch16)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--img-size", "--input_size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--mask-ratio", "--mask_ratio", type=float, default=0.75, help="default 0.75")
    p.add_argument("--norm-pix-loss", "--norm_pix_loss", action="store_true",
                   help="per-patch normalised pixel targets")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU; fp16 needs CUDA)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per contender per round (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds over the contenders (default 3)")
    p.add_argument("--contenders", default=None,
                   help=f"comma-separated, from {','.join(NAMES)} (default: all; the compiled ones on "
                        "CUDA only, hf only when transformers is installed)")
    p.add_argument("--kernels", default="auto", choices=KERNELS, help="fastmae ops: Triton or torch")
    p.add_argument("--attn", default="auto", choices=ATTENTION, help="fastmae attention backend")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); on a busy CPU 1 avoids "
                        "threads spinning against each other")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s for MFU (default: the GPU's datasheet bf16/fp16 figure; none on CPU)")
    p.add_argument("--max-batch", action="store_true",
                   help="also binary-search the largest batch each contender fits in GPU memory")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="time end to end from image files (folder or file list) instead of random tensors")
    p.add_argument("--loader", default="auto", choices=LOADERS,
                   help="loader for fastmae with --data (the baselines use the torchvision loader)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write a bar chart of img/s")


def _check_output(path: str | None, flag: str, suffixes=None) -> None:
    if path is None:
        return
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
        raise ConfigError(f"{flag} {path}: use a file name ending in {', '.join(suffixes)}")


def command_line(args) -> str:
    """The full command that reproduces this run, every setting spelled out."""
    parts = ["fastmae", "bench", "--model", args.model, "--batch-size", str(args.batch_size),
             "--img-size", str(args.img_size), "--mask-ratio", str(args.mask_ratio),
             "--precision", args.precision, "--steps", str(args.steps), "--warmup", str(args.warmup),
             "--rounds", str(args.rounds), "--contenders", args.contenders, "--kernels", args.kernels,
             "--attn", args.attn, "--device", args.device, "--seed", str(args.seed)]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    for flag, on in (("--norm-pix-loss", args.norm_pix_loss), ("--max-batch", args.max_batch)):
        if on:
            parts.append(flag)
    for flag, value in (("--peak-tflops", args.peak_tflops), ("--data", args.data),
                        ("--json", args.json), ("--plot", args.plot)):
        if value is not None:
            parts += [flag, str(value)]
    if args.data is not None:
        parts += ["--loader", args.loader]
    return shlex.join(parts)


def run(args) -> int:
    _check_output(args.json, "--json")
    _check_output(args.plot, "--plot", PLOT_FORMATS)
    if args.contenders is None:
        names = default_names(resolve_device(args.device))
        if not hf_available():
            print("fastmae bench: leaving out contender hf: transformers is not installed", file=sys.stderr)
        args.contenders = ",".join(names)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    cfg = BenchConfig(model=args.model, batch_size=args.batch_size, img_size=args.img_size,
                      mask_ratio=args.mask_ratio, precision=args.precision, steps=args.steps,
                      warmup=args.warmup, rounds=args.rounds, contenders=tuple(names),
                      kernels=args.kernels, attn=args.attn, device=args.device,
                      norm_pix_loss=args.norm_pix_loss, max_batch=args.max_batch, data=args.data,
                      loader=args.loader, peak_tflops=args.peak_tflops, seed=args.seed)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        res = run_bench(cfg)
    finally:
        torch.set_num_threads(threads)
    res["command"] = command_line(args)
    print(report.table(res))
    if args.json:
        report.write_json(res, args.json)
        print(f"wrote {args.json}")
    if args.plot and report.plot(res, args.plot):
        print(f"wrote {args.plot}")
    return 0
