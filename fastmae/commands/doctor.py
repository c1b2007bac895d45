"""`fastmae doctor`: what this machine can run, checked by trying it. Always exits 0: the
report is the result, including what is missing and what that disables."""
HELP = ("Check this machine: versions, GPU, whether Triton compiles and launches, which "
        "attention backends run, DALI's GPU decoder, and what `auto` chooses.")


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    import json

    from ..doctor import format_report, report

    rep = report()
    print(json.dumps(rep, indent=2, default=str) if args.json else format_report(rep), flush=True)
    return 0
