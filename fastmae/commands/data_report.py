"""`fastmae data check --report [DIR] [--out FILE --dedupe]`: the check plus the dataset
report (fastmae.data.report). Same exit status as the check: 0 all usable, 1 some not."""
import sys
import time
from pathlib import Path


def run_report(args, samples, t0: float) -> int:
    from ..data.check import write_list
    from ..data.report import ReportSettings, analyse, write_report
    from ..files import check_new
    from ..progress import Progress, is_terminal
    from ..settings import ConfigError

    if args.dedupe and not args.out:
        raise ConfigError("--dedupe needs --out FILE (the de-duplicated file list); your files are never touched")
    if args.report is not None:
        for name in ("data_report.html", "data_report.json"):
            check_new(Path(args.report) / name, args.force, "report")
    n = len(samples)
    step = max(1, n // 10)
    with Progress(n, "checking", unit="img", stream=sys.stderr) as bar:
        def progress(k):
            bar.update(k)
            if not is_terminal(bar.stream) and (bar.n % step == 0 or bar.n == n):
                bar.report()
        a = analyse(samples, ReportSettings(radius=args.radius), args.workers, progress, root=args.path)
    c, rep = a.content, a.check
    c["source"] = str(args.path)
    for path, reason in rep.bad:
        print(f"bad: {path}: {reason}")
    nbad = len(rep.bad)
    k = len(samples.classes or [])
    labels = f"{k} class{'' if k == 1 else 'es'}" if k else "unlabelled"
    print(f"checked {n} image files ({labels}) in {args.path} in {time.perf_counter() - t0:.1f} s: "
          f"{n - nbad} good, {nbad} bad")
    ratio = c["counts"]["imbalance_ratio"]
    print(f"{len(c['exact_duplicates'])} exact-duplicate groups, {len(c['near_duplicates'])} near-duplicate "
          f"groups (radius {args.radius}), {len(c['near_uniform'])} near-uniform pictures"
          + (f", imbalance ratio {ratio:.2f}" if ratio else ""))
    if args.report is not None:
        j, h = write_report(c, args.report, args.workers)
        print(f"wrote {h} and {j}")
    if args.out:
        clean = a.deduped() if args.dedupe else rep.clean
        write_list(clean, args.out)
        extra = (f" (dropped {c['dedupe']['drop']} duplicates: {c['dedupe']['exact_copies']} exact copies, "
                 f"{c['dedupe']['near_copies']} near copies; one file kept per group)") if args.dedupe else ""
        print(f"wrote {len(clean)} good files to {args.out}{extra}")
    return 1 if nbad else 0
