"""The `supportloop` command line: one module per command group (`serving`, `store`, `rounds`,
`versions`). Heavy imports (torch, the server, the trainer) happen inside the commands; only
`bot.cli.rounds` reaches the trainer, lazily."""
from __future__ import annotations

import argparse
import sys

from bot.cli import rounds, serving, store, versions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supportloop", description="A customer-support chatbot that "
                                     "learns from feedback. Settings come from SUPPORTLOOP_* variables.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (serving, store, rounds, versions):
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bot.runtime.types import ModelNotAvailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModelNotAvailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
