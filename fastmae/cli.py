"""`fastmae <command>`: the front door. Each command lives in fastmae/commands/<name>.py
and provides HELP, add_arguments(parser) and run(args) -> exit code.

Errors a user can cause (FastMAEError) print one line on stderr and exit 2; anything
else is a bug and keeps its traceback."""
import argparse
import importlib
import sys

from .errors import FastMAEError

# command name -> module under fastmae.commands (imported only when that command runs)
COMMANDS = {
    "data": "data",
    "bench": "bench",
    "train": "train",
    "finetune": "finetune",
    "linprobe": "linprobe",
    "knn": "knn",
    "embed": "embed",
    "visualize": "visualize",
    "export": "export",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"fastmae: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastmae", description="Fast Masked Autoencoder pretraining for ViTs.")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"fastmae.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except FastMAEError as e:
        print(f"fastmae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
