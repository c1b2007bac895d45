"""`fastmae data prepare SRC --out PREPARED`: the reduced-resolution copy of a source for long
runs (fastmae/data/prepare.py). Exit 0 when done, bad files listed and skipped."""
from __future__ import annotations

import sys
import time
import warnings


def add_parser(sub) -> None:
    c = sub.add_parser("prepare", help="write a reduced-resolution JPEG copy of a dataset for fast loading",
                       description="Write every image of a folder or file list with its shorter side at "
                       "most --max-size (never upscaled) as a JPEG, in the same layout (labels kept), with "
                       "a manifest pointing back to the sources. Resumable: a re-run only redoes new or "
                       "changed files. The source is only read. Train with --data PREPARED.")
    c.add_argument("path", help="image folder or file list (the source)")
    c.add_argument("--out", required=True, metavar="PREPARED", help="folder of the copy (new, or an earlier copy)")
    c.add_argument("--max-size", "--max_size", type=int, default=512, metavar="PX",
                   help="largest shorter side of the copies (default 512)")
    c.add_argument("--quality", type=int, default=95, help="JPEG quality of the copies (default 95)")
    c.add_argument("--workers", "--num_workers", type=int, default=None, metavar="N",
                   help="threads (default: one per CPU core)")


def run(args) -> int:
    from ..data.prepare import prepare
    from ..data.sources import scan
    from ..progress import Progress

    warnings.simplefilter("ignore")  # Pillow's EXIF/size warnings: bad files are reported below
    total = len(scan(args.path))
    t0 = time.perf_counter()
    every = max(1, total // 20)
    with Progress(total, "preparing", unit="img", stream=sys.stdout) as bar:
        def tick(n):
            bar.update(n)
            if bar.bar is not None or bar.n % every == 0:
                bar.report(img_per_s=f"{bar.n / max(1e-9, time.perf_counter() - t0):.1f}")
        report = prepare(args.path, args.out, max_size=args.max_size, quality=args.quality,
                         workers=args.workers, progress=tick)
    for path, reason in report.bad:
        print(f"bad: {path}: {reason}")
    rate = f", {report.done / report.seconds:.1f} img/s" if report.done and report.seconds > 0 else ""
    print(f"prepared {args.path} -> {args.out} (shorter side <= {args.max_size}, quality {args.quality}) "
          f"in {report.seconds:.1f} s{rate}: {report.written} written, {report.copied} copied as they were, "
          f"{report.unchanged} unchanged, {report.removed} removed, {len(report.bad)} bad (skipped)")
    if not report.processed and not report.removed:
        print("nothing to do: the copy is up to date")
    return 0
