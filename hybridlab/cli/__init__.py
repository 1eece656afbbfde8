"""The `hybridlab` command. Each command group lives in its own module with a
`register(subparsers)` function; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules under hybridlab.cli that each add their subcommands.
COMMAND_MODULES = [
    "evaluate",  # eval, bench
    "engine",  # importance, prune, plan
    "jobs",  # jobs list|show|cancel|submit, worker
    "data",  # data build, train
    "distill",  # distill, cache-logits
    "search",  # search
    "study",  # study (the paper's ablations -> docs/results.md)
]


class UserError(Exception):
    """Bad input: printed as one clear line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridlab",
        description="Compress hybrid Mamba/attention language models (Minitron-SSM recipe).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"hybridlab.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"hybridlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hybridlab {args.command}: cancelled", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
