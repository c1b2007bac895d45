"""Data-loading throughput: fastmae's DALI pipeline vs the torchvision loader MAE's
main_pretrain.py uses (ImageFolder + RandomResizedCrop(0.2-1, bicubic) + flip + ToTensor +
Normalize in DataLoader workers), at equal worker/thread counts, in one run, rounds
alternating between contenders.

    python benchmarks/bench_data.py --data ROOT --batch-size 64 --workers 2 --img-size 224 \\
        --batches 100 --rounds 3 --json benchmarks/results/data-cpu-DATE.json

ROOT is an ImageFolder root (a folder of class folders: for a flat folder of photos make
ROOT/all -> that folder). Contenders:
  torchvision      the baseline above
  fastmae-cpu      fastmae.data.pretrain_loader(backend="dali", device="cpu")
  fastmae-gpu      the same with device="cuda" (mixed decode), when CUDA is available
  dali-plain-cpu   a textbook DALI CPU pipeline (readers.file, decoders.image_random_crop,
                   resize cubic, crop_mirror_normalize): what "DALI on CPU" gives untuned
  dali-plain-es-cpu  dali-plain-cpu fed by fn.external_source from Python (the reader
                   fastmae uses) instead of fn.readers.file: what owning the file order costs
  fastmae-torch    fastmae.data.pretrain_loader(backend="torch") (per-sample seeded torchvision)
Each round builds a fresh iterator per contender, drops --warmup batches, then times
--batches batches (CUDA synchronised). Reported: images/s per round, the median, and the
median of the per-round ratios to torchvision."""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from fastmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRETRAIN_SCALE  # noqa: E402

DEFAULT = ["torchvision", "fastmae-cpu", "dali-plain-cpu", "fastmae-gpu"]
ALL = DEFAULT + ["fastmae-torch", "dali-plain-es-cpu"]


def torchvision_factory(args):
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(args.img_size, scale=PRETRAIN_SCALE,
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(args.data, transform=tf)

    def batches():
        dl = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True,
                                         persistent_workers=args.workers > 0)
        for _ in itertools.count():
            for x, _ in dl:
                yield x
    return batches


def fastmae_factory(args, backend, device):
    from fastmae.data import pretrain_loader

    loader = pretrain_loader(args.data, img_size=args.img_size, batch_size=args.batch_size, backend=backend,
                             device=device, num_workers=args.workers, seed=0)

    def batches():
        for epoch in itertools.count():
            yield from loader.iter_from(epoch)
    return batches


def dali_plain_factory(args, reader):
    """reader="file": fn.readers.file reads in DALI's threads; reader="external": Python
    reads each batch's bytes into fn.external_source (how fastmae feeds DALI)."""
    import numpy as np
    from nvidia.dali import Pipeline, fn, types
    from nvidia.dali.plugin.pytorch import feed_ndarray

    from fastmae.data import scan

    files = scan(args.data).paths

    def feed(i):
        order = np.random.default_rng(i // max(1, len(files) // args.batch_size)).permutation(len(files))
        start = (i * args.batch_size) % len(files)
        return [np.fromfile(files[order[(start + k) % len(files)]], dtype=np.uint8) for k in range(args.batch_size)]

    def batches():
        pipe = Pipeline(batch_size=args.batch_size, num_threads=args.workers, device_id=None, seed=0)
        with pipe:
            if reader == "file":
                jpegs, _ = fn.readers.file(files=files, random_shuffle=True, name="reader")
            else:
                jpegs = fn.external_source(source=feed, batch=True, dtype=types.UINT8, ndim=1)
            imgs = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                                 random_area=list(PRETRAIN_SCALE), random_aspect_ratio=[3 / 4, 4 / 3])
            imgs = fn.resize(imgs, resize_x=args.img_size, resize_y=args.img_size, interp_type=types.INTERP_CUBIC)
            imgs = fn.crop_mirror_normalize(imgs, dtype=types.FLOAT, output_layout="CHW",
                                            mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
                                            mirror=fn.random.coin_flip(probability=0.5))
            pipe.set_outputs(imgs)
        pipe.build()
        while True:
            (out,) = pipe.run()
            x = torch.empty((len(out), 3, args.img_size, args.img_size))
            feed_ndarray(out.as_tensor(), x)
            yield x
    return batches


def make(name, args):
    if name == "torchvision":
        return torchvision_factory(args)
    if name == "fastmae-cpu":
        return fastmae_factory(args, "dali", "cpu")
    if name == "fastmae-gpu":
        return fastmae_factory(args, "dali", "cuda")
    if name == "fastmae-torch":
        return fastmae_factory(args, "torch", "cpu")
    if name == "dali-plain-cpu":
        return dali_plain_factory(args, "file")
    if name == "dali-plain-es-cpu":
        return dali_plain_factory(args, "external")
    raise SystemExit(f"unknown contender {name!r}; choose from {', '.join(ALL)}")


def time_round(batches, args) -> float:
    it = batches()
    try:
        for _ in range(args.warmup):
            next(it)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        n = 0
        t0 = time.perf_counter()
        for _ in range(args.batches):
            n += len(next(it))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)
    finally:
        it.close()


def versions() -> dict:
    import PIL
    import torchvision

    v = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
         "pillow": PIL.__version__}
    try:
        import nvidia.dali
        v["nvidia-dali"] = nvidia.dali.__version__
    except ImportError:
        v["nvidia-dali"] = None
    try:
        import fastmae
        v["fastmae"] = fastmae.__version__
    except ImportError:
        pass
    return v


def device_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores_usable": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg())}
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="ImageFolder root (root/<class>/<image>)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=64)
    p.add_argument("--workers", "--num_workers", type=int, default=2,
                   help="DataLoader worker processes = DALI threads")
    p.add_argument("--img-size", "--input_size", type=int, default=224)
    p.add_argument("--batches", type=int, default=50, help="timed batches per contender per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches at the start of each round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--contenders", default=",".join(DEFAULT), help=f"comma-separated, from {', '.join(ALL)}")
    p.add_argument("--json", metavar="FILE", help="write the results here")
    args = p.parse_args(argv)

    names = [n for n in args.contenders.split(",") if n]
    if "fastmae-gpu" in names and not torch.cuda.is_available():
        names.remove("fastmae-gpu")
        print("fastmae-gpu: skipped, CUDA is not available", file=sys.stderr)
    if any(n.startswith(("fastmae-cpu", "fastmae-gpu", "dali")) for n in names):
        from fastmae.data import dali_available
        if not dali_available():
            names = [n for n in names if not n.startswith(("fastmae-cpu", "fastmae-gpu", "dali"))]
            print("DALI contenders skipped: nvidia-dali is not installed", file=sys.stderr)
    from fastmae.data import scan
    source_images = len(scan(args.data))
    factories = {n: make(n, args) for n in names}
    rates = {n: [] for n in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            rates[n].append(time_round(factories[n], args))
            print(f"round {r + 1}/{args.rounds} {n:15s} {rates[n][-1]:8.1f} img/s", flush=True)

    results = {n: {"img_per_s_rounds": [round(x, 2) for x in v], "img_per_s_median": round(statistics.median(v), 2)}
               for n, v in rates.items()}
    ratios = {}
    if "torchvision" in rates:
        for n in names:
            if n != "torchvision":
                per_round = [a / b for a, b in zip(rates[n], rates["torchvision"])]
                ratios[f"{n} / torchvision"] = round(statistics.median(per_round), 3)
    print()
    for n in names:
        print(f"{n:15s} median {results[n]['img_per_s_median']:8.1f} img/s")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    if args.json:
        out = {"benchmark": "data loading, images/s", "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
               "device": device_info(), "versions": versions(),
               "config": {k: v for k, v in vars(args).items() if k != "json"} | {"contenders": names,
                                                                                  "source_images": source_images,
                                                                                  "transform": "RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3, bicubic) + horizontal flip + ImageNet normalise, float32 NCHW"},
               "results": results, "ratios_median_per_round": ratios}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
