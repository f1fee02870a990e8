"""The ``t5kit`` command: one entry point, a subcommand per job.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed args and returning an exit code).
The commands are thin: they parse arguments and call the Python API.

Exit codes: 0 success, 2 usage error (argparse), 1 runtime error (printed as one line; the
traceback with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from t5kit.errors import T5kitError

# Order is the order shown in --help.
COMMAND_MODULES = [
    "t5kit.cli.demo",
    "t5kit.cli.generate",
    "t5kit.cli.score",
    "t5kit.cli.model",
    "t5kit.cli.adapter",
    "t5kit.cli.data",
    "t5kit.cli.tokenizer",
    "t5kit.cli.serve",
    "t5kit.cli.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t5kit",
        description="T5, the Text-to-Text Transfer Transformer: generate, train, evaluate and serve.",
        epilog="Run 't5kit COMMAND --help' for the options and an example of each command.",
    )
    parser.add_argument("--debug", action="store_true", help="print full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("t5kit: interrupted", file=sys.stderr)
        return 130
    except (T5kitError, FileNotFoundError, PermissionError, IsADirectoryError, OSError) as err:
        if args.debug:
            raise
        print(f"t5kit {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
