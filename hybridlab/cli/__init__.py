"""The `hybridlab` command. Each command group lives in its own module with a
`register(subparsers)` function; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import traceback

from hybridlab.core.errors import UserError, debug_enabled, is_user_error, one_line

# Modules under hybridlab.cli that each add their subcommands.
COMMAND_MODULES = [
    "evaluate",  # eval, bench
    "engine",  # importance, prune, plan
    "jobs",  # jobs list|show|cancel|submit, worker
    "data",  # data build, train
    "distill",  # distill, cache-logits
    "search",  # search
    "latency",  # latency-calibrate
    "study",  # study (the paper's ablations -> docs/results.md)
    "store",  # store check
]

DEBUG_HELP = "show the traceback of an error caused by bad input too (also: HYBRIDLAB_DEBUG=1)"

__all__ = ["UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridlab",
        description="Compress hybrid Mamba/attention language models (Minitron-SSM recipe).",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"hybridlab.cli.{name}").register(sub)
    _add_debug_everywhere(parser)
    return parser


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--debug` after the command works too (`hybridlab prune ... --debug`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if "--debug" not in child._option_string_actions:
                    child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                _add_debug_everywhere(child)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (hybridlab.core.errors.is_user_error) is one line on stderr and
    exit status 2, its traceback only with --debug or HYBRIDLAB_DEBUG=1; other exceptions are
    bugs and propagate with their traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _stop_on_sigterm()
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"hybridlab {args.command}: cancelled", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err):
            raise
        if args.debug or debug_enabled():
            traceback.print_exc()
        print(f"hybridlab {args.command}: error: {one_line(err) or type(err).__name__}", file=sys.stderr)
        return 2
    return int(result or 0)


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler's timeout) stops a command as Ctrl-C does: training saves its checkpoint and
    atomic writes leave nothing half-written. Ctrl-C cannot do it for a command started in the background
    by a script, which inherits an ignored SIGINT. The worker installs its own handler over this one."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(main())
