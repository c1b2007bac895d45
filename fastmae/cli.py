"""`fastmae <command>`: the front door. Each command lives in fastmae/commands/<name>.py
and provides HELP, add_arguments(parser) and run(args) -> exit code.

Errors a user can cause (FastMAEError) print one line on stderr and exit 2; anything
else is a bug and keeps its traceback."""
import argparse
import importlib
import sys

from .settings import FastMAEError

# Each name is a module under fastmae.commands, in the order `fastmae --help` lists them.
COMMANDS = ("train", "finetune", "linprobe", "knn", "embed", "visualize", "export", "predict",
            "demo", "data", "bench", "label-curve", "doctor", "score", "drift")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"fastmae: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or for `only` one (each command module imports what it
    needs, so building one subparser instead of all keeps start-up short)."""
    parser = _Parser(prog="fastmae", description="Fast Masked Autoencoder pretraining for ViTs.")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    sub.required = True
    for name in (only,) if only else COMMANDS:
        module = importlib.import_module(f"fastmae.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
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
