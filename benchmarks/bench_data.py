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
  NAME-full        a fastmae contender with reduced-size JPEG decoding off (loader.reduced_decode
                   = False): every JPEG decoded at full size, as before it existed
  NAME-prepared    a contender reading the prepared copy made by --prepare instead of --data

Large photos (docs/data.md, "Factory-size photos"): --make-big SRC first writes --big-count
images of SRC, upscaled to --big-size, as JPEG q90 into ROOT/all; --prepare DIR times
`fastmae data prepare ROOT --out DIR` (twice: before and after the rounds, the second into a
scratch folder) and lets the -prepared contenders read DIR:

    python benchmarks/bench_data.py --make-big ../shared/data/imagenet-sample --data /tmp/big \
        --prepare /tmp/big-prepared --batch-size 16 --workers 2 --batches 20 --rounds 3 \
        --contenders torchvision,fastmae-cpu,fastmae-torch,fastmae-cpu-full,fastmae-torch-full,\
torchvision-prepared,fastmae-cpu-prepared,fastmae-torch-prepared \
        --json benchmarks/results/data-big-cpu-DATE.json --png benchmarks/results/data-big-cpu-DATE.png

Each round builds a fresh loader per contender (closed at the round's end), drops --warmup
batches, then times --batches batches (CUDA synchronised). Reported: images/s per round, the
median, and the median of the per-round ratios to torchvision; the same for images per
CPU-second of the process and its workers (from /proc), the steadier figure on a machine
other jobs share; and the 1-minute load average after each round."""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from fastmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRETRAIN_SCALE  # noqa: E402

DEFAULT = ["torchvision", "fastmae-cpu", "dali-plain-cpu", "fastmae-gpu"]
BASES = DEFAULT + ["fastmae-torch", "dali-plain-es-cpu"]
ALL = BASES + [f"{n}-full" for n in ("fastmae-cpu", "fastmae-gpu", "fastmae-torch")] + \
    [f"{n}-prepared" for n in ("torchvision", "fastmae-cpu", "fastmae-gpu", "fastmae-torch")]


def torchvision_factory(args, data):
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(args.img_size, scale=PRETRAIN_SCALE,
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(data, transform=tf)

    def batches():
        dl = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True,
                                         persistent_workers=args.workers > 0)
        for _ in itertools.count():
            for x, _ in dl:
                yield x
    return batches


def fastmae_factory(args, backend, device, data, reduced=True):
    from fastmae.data import pretrain_loader

    def batches():
        # A fresh loader each round, closed at its end, as the torchvision contender gets a
        # fresh DataLoader: persistent workers would go on decoding their queued batches while
        # the next contender is timed.
        with pretrain_loader(data, img_size=args.img_size, batch_size=args.batch_size, backend=backend,
                             device=device, num_workers=args.workers, seed=0) as loader:
            loader.reduced_decode = reduced  # before the first iteration (the torch backend's workers keep it)
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


def make_big(src: str, root: str, count: int, size: tuple[int, int], quality: int) -> int:
    """The large-photo set: the first `count` images under `src` (sorted), centre-cropped to
    the aspect of `size` and resized (up) to it, as JPEG at `quality`, in root/all/. Files
    already there are kept. Upscaled photos are smoother than camera photos of the same
    size, so they decode somewhat faster: a conservative stand-in for factory photos."""
    from PIL import Image

    from fastmae.data import scan

    out = os.path.join(root, "all")
    os.makedirs(out, exist_ok=True)
    paths = scan(src).paths[:count]
    w, h = size
    for p in paths:
        dst = os.path.join(out, os.path.splitext(os.path.basename(p))[0] + ".jpg")
        if os.path.exists(dst):
            continue
        with Image.open(p) as img:
            img = img.convert("RGB")
            sw, sh = img.size
            if sw * h > sh * w:  # too wide: crop the sides
                cw = sh * w // h
                img = img.crop(((sw - cw) // 2, 0, (sw - cw) // 2 + cw, sh))
            else:
                ch = sw * h // w
                img = img.crop((0, (sh - ch) // 2, sw, (sh - ch) // 2 + ch))
            img.resize((w, h), Image.BICUBIC).save(dst + ".tmp", "JPEG", quality=quality)
        os.replace(dst + ".tmp", dst)
    return len(paths)


def make(name, args):
    if name not in ALL:
        raise SystemExit(f"unknown contender {name!r}; choose from {', '.join(ALL)}")
    data = args.data
    if name.endswith("-prepared"):
        if not args.prepare:
            raise SystemExit(f"{name} reads the prepared copy: give --prepare DIR")
        data, name = args.prepare, name[:-len("-prepared")]
    reduced = not name.endswith("-full")
    name = name[:-len("-full")] if not reduced else name
    if name == "torchvision":
        return torchvision_factory(args, data)
    if name == "fastmae-cpu":
        return fastmae_factory(args, "dali", "cpu", data, reduced)
    if name == "fastmae-gpu":
        return fastmae_factory(args, "dali", "cuda", data, reduced)
    if name == "fastmae-torch":
        return fastmae_factory(args, "torch", "cpu", data, reduced)
    if name == "dali-plain-cpu":
        return dali_plain_factory(args, "file")
    if name == "dali-plain-es-cpu":
        return dali_plain_factory(args, "external")
    raise SystemExit(f"unknown contender {name!r}; choose from {', '.join(ALL)}")


def tree_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) used so far by this process and each live descendant
    (DataLoader workers), from /proc: {} where /proc is missing."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime+stime
    mine, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in mine:
            mine[pid] = stats[pid][1]
            todo += [c for c, (ppid, _) in stats.items() if ppid == pid]
    return mine


def time_round(batches, args) -> tuple[float, float | None]:
    """(images per second, images per CPU-second of this process and its workers). On a
    machine other jobs share, the second is the steadier figure: with the cores to itself a
    loader with as many workers as cores delivers about cores x that."""
    it = batches()
    try:
        for _ in range(args.warmup):
            next(it)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        n = 0
        cpu0 = tree_cpu_seconds()
        t0 = time.perf_counter()
        for _ in range(args.batches):
            n += len(next(it))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        cpu1 = tree_cpu_seconds()
        cpu = sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items())
        return n / dt, (n / cpu if cpu > 0 else None)
    finally:
        it.close()


def time_prepare(args, out: str) -> dict:
    """One fresh `fastmae data prepare` pass of --data into `out` (replaced if it is an
    earlier prepared copy; any other existing folder is refused by prepare itself)."""
    from fastmae.data.prepare import prepare
    from fastmae.data.sources import PREPARED_MANIFEST

    if os.path.isfile(os.path.join(out, PREPARED_MANIFEST)):
        shutil.rmtree(out)
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    report = prepare(args.data, out, max_size=args.prepare_max_size, quality=95, workers=args.workers)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    cores = min(args.workers, len(os.sched_getaffinity(0)))
    rate = report.done / report.seconds
    run = {"images": report.done, "bad": len(report.bad), "seconds": round(report.seconds, 2),
           "img_per_s": round(rate, 2), "threads": args.workers, "cores_used": cores,
           "img_per_s_per_core": round(rate / cores, 2), "cpu_seconds": round(cpu_s, 2),
           "img_per_cpu_s": round(report.done / cpu_s, 2), "max_size": args.prepare_max_size, "quality": 95,
           "load_average_1min_before": round(load, 2), "load_average_1min_after": round(os.getloadavg()[0], 2)}
    print(f"prepare -> {out}: {run['images']} images in {run['seconds']} s, {run['img_per_s']} img/s "
          f"({run['img_per_s_per_core']} per core; {run['img_per_cpu_s']} per CPU-second used)", flush=True)
    return run


def save_png(path, names, results, ratios, load_rounds, prepare_summary, args, cpu_ratios=None) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no PNG: matplotlib is not installed", file=sys.stderr)
        return
    meds = [results[n]["img_per_s_median"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.6))
    ax.barh(range(len(names)), meds, color=["#999999" if n.startswith("torchvision") else "#3b75af" for n in names])
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for i, n in enumerate(names):
        r = ratios.get(f"{n} / torchvision")
        c = (cpu_ratios or {}).get(f"{n} / torchvision")
        label = f" {meds[i]:.0f}" + (f"  ({r:.1f}x" + (f"; {c:.1f}x per CPU-s" if c else "") + ")" if r else "")
        ax.text(meds[i], i, label, va="center", fontsize=9)
    title = (f"CPU data loading, {args.img_size} px crops, batch {args.batch_size}, {args.workers} workers "
             f"(median of {args.rounds} rounds)\nload average during the rounds: {min(load_rounds):.1f}-"
             f"{max(load_rounds):.1f} on {len(os.sched_getaffinity(0))} cores")
    if prepare_summary:
        title += (f"\nprepare pass: {prepare_summary['img_per_s_per_core_median']:.0f} img/s per core (wall), "
                  f"{prepare_summary['img_per_cpu_s_median']:.0f} img per CPU-second")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("images/s (ratio to torchvision on the originals)")
    ax.set_xlim(0, max(meds) * 1.6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


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
    p.add_argument("--png", metavar="FILE", help="write a bar chart of the medians here")
    p.add_argument("--make-big", metavar="SRC", help="first write the large-photo set from SRC into --data")
    p.add_argument("--big-count", type=int, default=120)
    p.add_argument("--big-size", default="2048x1536", help="WxH of the large photos")
    p.add_argument("--big-quality", type=int, default=90)
    p.add_argument("--prepare", metavar="DIR", help="time `fastmae data prepare --data --out DIR` (DIR is "
                   "replaced if it is a prepared copy) and let the -prepared contenders read it")
    p.add_argument("--prepare-max-size", type=int, default=512)
    args = p.parse_args(argv)

    if args.make_big:
        w, h = (int(v) for v in args.big_size.lower().split("x"))
        n = make_big(args.make_big, args.data, args.big_count, (w, h), args.big_quality)
        print(f"large-photo set: {n} images of {w}x{h} in {args.data}/all")
    prepare_runs = []
    if args.prepare:
        prepare_runs.append(time_prepare(args, args.prepare))

    names = [n for n in args.contenders.split(",") if n]
    if any(n.startswith("fastmae-gpu") for n in names) and not torch.cuda.is_available():
        names = [n for n in names if not n.startswith("fastmae-gpu")]
        print("fastmae-gpu contenders: skipped, CUDA is not available", file=sys.stderr)
    if any(n.startswith(("fastmae-cpu", "fastmae-gpu", "dali")) for n in names):
        from fastmae.data import dali_available
        if not dali_available():
            names = [n for n in names if not n.startswith(("fastmae-cpu", "fastmae-gpu", "dali"))]
            print("DALI contenders skipped: nvidia-dali is not installed", file=sys.stderr)
    from fastmae.data import scan
    source_images = len(scan(args.data))
    factories = {n: make(n, args) for n in names}
    rates = {n: [] for n in names}
    cpu_rates = {n: [] for n in names}
    load_rounds = []
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            rate, cpu_rate = time_round(factories[n], args)
            rates[n].append(rate)
            cpu_rates[n].append(cpu_rate)
            per_cpu = f"{cpu_rate:8.1f} img per CPU-s" if cpu_rate else ""
            print(f"round {r + 1}/{args.rounds} {n:22s} {rate:8.1f} img/s {per_cpu}", flush=True)
        load_rounds.append(round(os.getloadavg()[0], 2))
    if args.prepare:
        scratch = args.prepare.rstrip("/") + "-scratch"
        prepare_runs.append(time_prepare(args, scratch))
        shutil.rmtree(scratch)

    results = {n: {"img_per_s_rounds": [round(x, 2) for x in v], "img_per_s_median": round(statistics.median(v), 2)}
               for n, v in rates.items()}
    cpu_ratios = {}
    if all(x for v in cpu_rates.values() for x in v):
        for n, v in cpu_rates.items():
            results[n]["img_per_cpu_s_rounds"] = [round(x, 2) for x in v]
            results[n]["img_per_cpu_s_median"] = round(statistics.median(v), 2)
        if "torchvision" in cpu_rates:
            for n in names:
                if n != "torchvision":
                    per_round = [a / b for a, b in zip(cpu_rates[n], cpu_rates["torchvision"])]
                    cpu_ratios[f"{n} / torchvision"] = round(statistics.median(per_round), 3)
    ratios = {}
    if "torchvision" in rates:
        for n in names:
            if n != "torchvision":
                per_round = [a / b for a, b in zip(rates[n], rates["torchvision"])]
                ratios[f"{n} / torchvision"] = round(statistics.median(per_round), 3)
    print()
    for n in names:
        print(f"{n:22s} median {results[n]['img_per_s_median']:8.1f} img/s")
    for k, v in ratios.items():
        extra = f"  (per CPU-second: {cpu_ratios[k]:.2f}x)" if k in cpu_ratios else ""
        print(f"{k}: {v:.2f}x{extra}")
    prepare_summary = None
    if prepare_runs:
        per_core = [r["img_per_s_per_core"] for r in prepare_runs]
        per_cpu_s = [r["img_per_cpu_s"] for r in prepare_runs]
        prepare_summary = {"runs": prepare_runs, "img_per_s_per_core_median": round(statistics.median(per_core), 2),
                           "img_per_cpu_s_median": round(statistics.median(per_cpu_s), 2)}
        print(f"prepare: {', '.join(str(r['img_per_s']) for r in prepare_runs)} img/s "
              f"({prepare_summary['img_per_s_per_core_median']} img/s per core wall-clock, "
              f"{prepare_summary['img_per_cpu_s_median']} img per CPU-second, medians)")
    print(f"load average (1 min) after each round: {load_rounds}")
    if args.png:
        save_png(args.png, names, results, ratios, load_rounds, prepare_summary, args, cpu_ratios)
    if args.json:
        out = {"benchmark": "data loading, images/s", "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
               "device": device_info(), "versions": versions(),
               "config": {k: v for k, v in vars(args).items() if k != "json"} | {"contenders": names,
                                                                                  "source_images": source_images,
                                                                                  "transform": "RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3, bicubic) + horizontal flip + ImageNet normalise, float32 NCHW"},
               "results": results, "ratios_median_per_round": ratios,
               "ratios_img_per_cpu_s_median_per_round": cpu_ratios,
               "load_average_1min_after_each_round": load_rounds, "load_average_at_end": list(os.getloadavg())}
        if prepare_summary:
            out["prepare"] = prepare_summary
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
