"""`hybridlab search`: candidate architectures at a parameter budget, ranked and distilled.

Runs as a recorded `search` job (hybridlab.cli.recorded) whose run folder is --out, so the
ranked candidates appear in the store (and the dashboard's Pareto view) as well as in --out.
"""

from __future__ import annotations

import json
from pathlib import Path

from hybridlab.cli.recorded import add_workspace_option, run_recorded


def register(sub) -> None:
    p = sub.add_parser("search", help="search architectures at a parameter budget; saves the chosen model")
    p.add_argument("--model", required=True, help="'demo' or a model directory")
    p.add_argument("--target-params", required=True, help="'50%%' of the model or an absolute count (4.5e9, 4.5B)")
    p.add_argument("--tolerance", type=float, default=0.03, help="relative distance to the target a candidate may have")
    p.add_argument("--out", required=True, help="folder: candidates.csv, search.json, best/ (the chosen model), runs/")
    p.add_argument("--scores", default=None, help="importance scores folder (computed from --calib if omitted)")
    p.add_argument("--calib", default=None, help="calibration tokens (default: the demo's)")
    p.add_argument("--data", default=None, help="distillation tokens (default: the demo's training sample)")
    p.add_argument("--val", default=None, help="validation tokens (default: the demo's)")
    p.add_argument("--max-candidates", type=int, default=16, help="candidates ranked zero-shot")
    p.add_argument(
        "--rank-by", choices=["loss", "kl"], default="loss", help="zero-shot validation loss or KL to the teacher"
    )
    p.add_argument("--top-k", type=int, default=2, help="candidates distilled")
    p.add_argument(
        "--distill-tokens", default="200k", help="distillation budget per finalist (0 = rank zero-shot only)"
    )
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-width-prune", type=float, default=0.5)
    p.add_argument("--max-depth-prune", type=float, default=0.5)
    p.add_argument("--hidden-divisor", type=int, default=None)
    p.add_argument("--ffn-divisor", type=int, default=None)
    p.add_argument("--head-dim-divisor", type=int, default=8)
    p.add_argument("--layer-divisor", type=int, default=1)
    p.add_argument("--prune-attention", action="store_true", help="also search attention head counts")
    p.add_argument("--contiguous-depth", action="store_true", help="drop a contiguous block of layers")
    p.add_argument("--layer-metric", choices=["kl", "loss", "cosine"], default="kl")
    p.add_argument("--accuracy-task", default=None, help="an eval task for the finalists, e.g. continuation_mc")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurements")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")
    add_workspace_option(p)
    p.set_defaults(func=run_search)


def settings_from_args(args):
    from hybridlab.search.run import SearchSettings
    from hybridlab.search.space import SearchSpace
    from hybridlab.training.distill import parse_token_count

    space = SearchSpace(
        max_width_prune=args.max_width_prune,
        max_depth_prune=args.max_depth_prune,
        hidden_divisor=args.hidden_divisor,
        ffn_divisor=args.ffn_divisor,
        head_dim_divisor=args.head_dim_divisor,
        layer_divisor=args.layer_divisor,
        prune_attention=args.prune_attention,
        contiguous_depth=args.contiguous_depth,
        layer_metric=args.layer_metric,
    )
    settings = SearchSettings(
        target_params=args.target_params,
        tolerance=args.tolerance,
        space=space,
        max_candidates=args.max_candidates,
        rank_by=args.rank_by,
        top_k=args.top_k,
        distill_tokens=parse_token_count(args.distill_tokens),
        seq_len=args.seq_len,
        eval_tokens=args.eval_tokens,
        measure_latency=not args.no_latency,
        accuracy_task=args.accuracy_task,
        seed=args.seed,
    )
    settings.validate()
    return settings


def run_search(args) -> int:
    import pandas as pd

    from hybridlab.model.loading import resolve_model_dir

    settings = settings_from_args(args)
    if Path(args.out, "best").exists():
        raise ValueError(f"{args.out} already holds a search result; choose another --out")
    demo = args.model == "demo"
    for option, value in (("--data", args.data), ("--val", args.val)):
        if value is None and not demo:
            raise ValueError(f"{option} is required for models other than the demo")
    resolve_model_dir(args.model)
    if args.scores is None and args.calib is None and not demo:
        raise ValueError("give --scores, or --calib to compute importance")
    space = settings.space
    spec = {
        "model": args.model,
        "target_params": settings.target_params,
        "tolerance": settings.tolerance,
        "importance": args.scores,
        "calib": args.calib,
        "train_tokens": args.data,
        "val_tokens": args.val,
        "max_candidates": settings.max_candidates,
        "rank_by": settings.rank_by,
        "top_k": settings.top_k,
        "tokens": settings.distill_tokens,
        "seq_len": settings.seq_len,
        "eval_tokens": settings.eval_tokens,
        "max_width_prune": space.max_width_prune,
        "max_depth_prune": space.max_depth_prune,
        "hidden_divisor": space.hidden_divisor,
        "ffn_divisor": space.ffn_divisor,
        "head_dim_divisor": space.head_dim_divisor,
        "layer_divisor": space.layer_divisor,
        "prune_attention": space.prune_attention,
        "contiguous_depth": space.contiguous_depth,
        "layer_metric": space.layer_metric,
        "accuracy_task": settings.accuracy_task,
        "measure_latency": settings.measure_latency,
        "seed": settings.seed,
        "run_dir": args.out,
        "trust_remote_code": args.trust_remote_code,
    }
    run_recorded("search", spec, args)  # an unreachable budget is refused before any weights load
    print(format_table(pd.read_csv(Path(args.out, "candidates.csv"))))
    best = json.loads(Path(args.out, "search.json").read_text())["best"]
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
