"""Measure `fastmae data check --report` on the shared 1000 ImageNet JPEGs plus planted
duplicates: files per second, the near-duplicate index's time, and precision / recall of
the planted copies. Also times the index alone on random hashes (its scaling).

    python benchmarks/data_report_measure.py [--exact 100] [--near 300] [--json FILE]"""
import argparse
import datetime
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import PIL  # noqa: E402
import numpy  # noqa: E402

import fastmae  # noqa: E402
from fastmae.data import phash as ph  # noqa: E402
from fastmae.data.report import ReportSettings, analyse, write_report  # noqa: E402
from tests.planted import IMAGENET_SAMPLE, plant, sample_photos, score  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exact", type=int, default=100)
    ap.add_argument("--near", type=int, default=300)
    ap.add_argument("--radius", type=int, default=ReportSettings.radius)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--index-sizes", default="10000,100000", help="random-hash counts for the index timing")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    photos = sample_photos()
    with tempfile.TemporaryDirectory() as tmp:
        truth = plant(photos, Path(tmp) / "photos", exact=args.exact, near=args.near, seed=0)
        load = os.getloadavg()
        t0 = time.perf_counter()
        a = analyse(str(Path(tmp) / "photos"), ReportSettings(radius=args.radius), args.workers)
        t_analyse = time.perf_counter() - t0
        write_report(a.content, Path(tmp) / "report")
        t_total = time.perf_counter() - t0
        s = score(a.content, truth)
    index = {}
    rng = random.Random(0)
    for n in (int(x) for x in args.index_sizes.split(",") if x):
        hs = [rng.getrandbits(64) for _ in range(n)]
        t = time.perf_counter()
        ph.near_pairs(hs, args.radius)
        index[str(n)] = round(time.perf_counter() - t, 2)
    c = a.content
    result = {
        "benchmark": "fastmae data check --report: speed, and precision/recall of planted duplicates",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "OMP_NUM_THREADS=1 python " + " ".join([sys.argv[0]] + sys.argv[1:]),
        "device": {"cpu": platform.processor() or platform.machine(), "cpu_cores_usable": os.cpu_count(),
                   "load_average_at_start": list(load), "gpu": None,
                   "note": "CPU numbers; the machine was shared with other jobs"},
        "versions": {"python": platform.python_version(), "pillow": PIL.__version__,
                     "numpy": numpy.__version__, "fastmae": fastmae.__version__},
        "data": {"source": str(IMAGENET_SAMPLE), "photos": len(photos), "planted_exact": args.exact,
                 "planted_near": args.near, "near_kinds": "resized x0.4-0.8 (q90) / re-encoded q30-70 / "
                 "cropped 0-5% per side (q90), in turn", "files": c["files"]},
        "settings": c["settings"],
        "results": {"files_per_second": round(c["files"] / t_analyse, 1),
                    "seconds_analyse": round(t_analyse, 2), "seconds_with_html": round(t_total, 2),
                    "seconds_near_duplicate_index": c["seconds"]["near_duplicate_index"],
                    **s, "exact_groups": len(c["exact_duplicates"]), "near_groups": len(c["near_duplicates"]),
                    "near_uniform": len(c["near_uniform"]), "dedupe_drop": c["dedupe"]["drop"]},
        "index_seconds_random_hashes": index,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
