"""The `memwatch` command line: one subcommand per module in `memwatch.commands`."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# name -> module in memwatch.commands defining HELP, add_arguments(parser) and run(args) -> int
COMMANDS = ["demo", "eval", "analyze", "watchlist", "bench", "audit"]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit code 2.

    Subparsers inherit the class, so every subcommand reports the same way.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="memwatch", description="Watch a language model memorize its training data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = import_module(f"memwatch.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
