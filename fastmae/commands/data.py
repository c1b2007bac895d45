"""`fastmae data check PATH`: decode every image of a folder or file list, list the bad
ones with the reason, optionally write the clean file list. Exit 0 when all are good, 1
when some are bad."""
from __future__ import annotations

import sys
import time
import warnings

from . import data_prepare

HELP = "Check a dataset: decode every image, report bad files, write a clean file list."


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="action")
    sub.required = True
    c = sub.add_parser("check", help="decode every image of a folder or file list and report bad files",
                       description="Decode every image of a folder (recursive; ImageFolder layout keeps "
                       "labels) or a file list and report the files training would skip. "
                       "Exit status 0 when all are good, 1 when some are bad. Files are only read.")
    c.add_argument("path", help="image folder or file list (one path per line, optional label)")
    c.add_argument("--out", metavar="FILE", help="write the good files as a file list usable as a data source")
    c.add_argument("--workers", "--num_workers", type=int, default=None, metavar="N",
                   help="decoding threads (default: 2 per CPU core, at most 32)")
    c.add_argument("--report", nargs="?", const=".", default=None, metavar="DIR",
                   help="also write data_report.html and data_report.json into DIR (default .): counts "
                        "per class, sizes, formats, exact and near duplicates, near-blank pictures")
    c.add_argument("--dedupe", action="store_true",
                   help="with --out: keep one file per exact / near-duplicate group")
    c.add_argument("--radius", type=int, default=8,
                   help="near-duplicate Hamming radius of the 64-bit perceptual hash (default 8)")
    c.add_argument("--force", action="store_true", help="replace an existing report")
    data_prepare.add_parser(sub)


def run(args) -> int:
    if args.data_command == "prepare":
        return data_prepare.run(args)
    from tqdm import tqdm

    from ..settings import ConfigError
    from ..data.check import check, write_list

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    from ..data.sources import scan

    # Pillow's own warnings (odd EXIF, large images) would interleave with the report,
    # which already names every file that cannot be used.
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()

    samples = scan(args.path)
    if args.report is not None or args.dedupe:
        from .data_report import run_report
        return run_report(args, samples, t0)
    with tqdm(total=len(samples), unit="img", desc="checking", disable=None, file=sys.stderr) as bar:
        report = check(samples, args.workers, progress=bar.update)
    dt = time.perf_counter() - t0
    for path, reason in report.bad:
        print(f"bad: {path}: {reason}")
    n, nbad = len(samples), len(report.bad)
    k = len(samples.classes or [])
    labels = f"{k} class{'' if k == 1 else 'es'}" if k else "unlabelled"
    print(f"checked {n} image files ({labels}) in {args.path} in {dt:.1f} s: {n - nbad} good, {nbad} bad")
    if args.out:
        write_list(report.clean, args.out)
        print(f"wrote {n - nbad} good files to {args.out}")
    return 1 if nbad else 0
