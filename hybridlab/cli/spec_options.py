"""Command-line options named like PruneSpec keys, shared by prune, plan and jobs."""

from __future__ import annotations

import argparse

from hybridlab.model.spec import WIDTH_KEYS, PruneSpec

SIZE_OPTIONS = (*WIDTH_KEYS, "num_layers")  # one flag per PruneSpec size key


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("target architecture (omit an option to keep that size)")
    for key in SIZE_OPTIONS:
        group.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, metavar="N")
    group.add_argument("--drop-layers", default=None, metavar="I,J,...", help="explicit layer indices to remove")


def spec_from_args(args: argparse.Namespace) -> PruneSpec:
    values = {key: getattr(args, key) for key in SIZE_OPTIONS}
    if args.drop_layers:
        try:
            values["drop_layers"] = [int(i) for i in args.drop_layers.split(",") if i.strip()]
        except ValueError:
            raise ValueError(f"--drop-layers takes comma-separated layer numbers, got {args.drop_layers!r}") from None
    return PruneSpec.from_dict(values)
