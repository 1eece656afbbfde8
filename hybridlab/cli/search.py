"""`hybridlab search`: candidate architectures at a parameter budget, ranked and distilled.

Runs as a recorded `search` job (hybridlab.cli.recorded) whose run folder is --out, so the
ranked candidates appear in the store (and the dashboard's Pareto view) as well as in --out.
"""

from __future__ import annotations

import json
from pathlib import Path

from hybridlab.cli.options import add_options, job_spec_from_args, settings_from_args
from hybridlab.cli.recorded import add_workspace_option, run_recorded
from hybridlab.core.outputs import check_new_folder
from hybridlab.jobs.kinds.common import JobOptions, ModelInput
from hybridlab.jobs.kinds.search import SearchInputs
from hybridlab.search.run import SearchSettings


def register(sub) -> None:
    p = sub.add_parser("search", help="search architectures at a parameter budget; saves the chosen model")
    add_options(p, ModelInput)
    add_options(p, SearchInputs)
    add_options(p, SearchSettings)
    add_options(p, JobOptions, skip=("device",))
    add_workspace_option(p)
    p.set_defaults(func=run_search)


def run_search(args) -> int:
    import pandas as pd

    from hybridlab.model.loading import resolve_model_dir

    settings_from_args(SearchSettings, args).validate()
    if Path(args.run_dir, "best").exists():
        raise ValueError(f"{args.run_dir} already holds a search result; choose another --out")
    check_new_folder(args.run_dir, "--out", may_exist=True)
    demo = args.model == "demo"
    for option, value in (("--data", args.train_tokens), ("--val", args.val_tokens)):
        if value is None and not demo:
            raise ValueError(f"{option} is required for models other than the demo")
    resolve_model_dir(args.model)
    if args.importance is None and args.calib is None and not demo:
        raise ValueError("give --scores, or --calib to compute importance")
    spec = job_spec_from_args(args, ModelInput, SearchInputs, SearchSettings, JobOptions)
    run_recorded("search", spec, args)  # an unreachable budget is refused before any weights load
    print(format_table(pd.read_csv(Path(args.run_dir, "candidates.csv"))))
    best = json.loads(Path(args.run_dir, "search.json").read_text())["best"]
    print(f"chose {best['name']}: {best['params']:,} parameters; model saved to {best['model_dir']}")
    return 0


def format_table(frame) -> str:
    columns = [
        c
        for c in (
            "zero_shot_rank",
            "name",
            "strategy",
            "params",
            "zero_shot_loss",
            "distilled_loss",
            "estimated_latency_ms",
            "latency_ms",
            "accuracy",
            "chosen",
        )
        if c in frame
    ]
    table = frame[columns].copy()
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
