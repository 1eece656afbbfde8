"""`hybridlab search`: candidate architectures at a parameter budget, ranked and distilled."""
from __future__ import annotations

from pathlib import Path

from hybridlab.cli.distill import DEMO_TRAIN, DEMO_VAL


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
    p.add_argument("--rank-by", choices=["loss", "kl"], default="loss", help="zero-shot validation loss or KL to the teacher")
    p.add_argument("--top-k", type=int, default=2, help="candidates distilled")
    p.add_argument("--distill-tokens", default="200k", help="distillation budget per finalist (0 = rank zero-shot only)")
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
    p.set_defaults(func=run_search)


def settings_from_args(args):
    from hybridlab.candidates import SearchSpace
    from hybridlab.distill import parse_token_count
    from hybridlab.search import SearchSettings

    space = SearchSpace(
        max_width_prune=args.max_width_prune, max_depth_prune=args.max_depth_prune, hidden_divisor=args.hidden_divisor,
        ffn_divisor=args.ffn_divisor, head_dim_divisor=args.head_dim_divisor, layer_divisor=args.layer_divisor,
        prune_attention=args.prune_attention, contiguous_depth=args.contiguous_depth, layer_metric=args.layer_metric,
    )
    settings = SearchSettings(
        target_params=args.target_params, tolerance=args.tolerance, space=space, max_candidates=args.max_candidates,
        rank_by=args.rank_by, top_k=args.top_k, distill_tokens=parse_token_count(args.distill_tokens),
        seq_len=args.seq_len, eval_tokens=args.eval_tokens, measure_latency=not args.no_latency,
        accuracy_task=args.accuracy_task, seed=args.seed,
    )
    settings.validate()
    return settings


def run_search(args) -> int:
    from hybridlab.calibration import batched, load_calibration, load_token_array
    from hybridlab.candidates import enumerate_candidates, parse_target
    from hybridlab.importance import ImportanceScores
    from hybridlab.loading import load_model
    from hybridlab.search import search

    settings = settings_from_args(args)
    if Path(args.out, "best").exists():
        raise ValueError(f"{args.out} already holds a search result; choose another --out")
    demo = args.model == "demo"
    for option, value in (("--data", args.data), ("--val", args.val)):
        if value is None and not demo:
            raise ValueError(f"{option} is required for models other than the demo")
    from transformers import AutoConfig

    from hybridlab.candidates import check_reachable
    from hybridlab.loading import resolve_model_dir
    from hybridlab.sizes import estimate_sizes

    config = AutoConfig.from_pretrained(resolve_model_dir(args.model), trust_remote_code=args.trust_remote_code)
    target = parse_target(settings.target_params, estimate_sizes(config).params)
    check_reachable(config, target, settings.tolerance, settings.space)  # before loading any weights
    model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
    scores = ImportanceScores.load(args.scores) if args.scores else None
    calib = None
    if scores is None:
        source = args.calib or ("demo" if demo else None)
        if source is None:
            raise ValueError("give --scores, or --calib to compute importance")
        calib = batched(load_calibration(source, tokenizer, 64, args.seq_len), 8)
    train_tokens = load_token_array(args.data or DEMO_TRAIN, tokenizer).reshape(-1)
    val_tokens = load_token_array(args.val or DEMO_VAL, tokenizer).reshape(-1)
    if scores is not None:  # fail fast on an impossible budget before any model work
        enumerate_candidates(model.config, scores, target, settings.tolerance, settings.space)
    result = search(model, tokenizer, train_tokens, val_tokens, settings, scores=scores, calib_batches=calib, out_dir=args.out)
    print(format_table(result.candidates))
    print(f"chose {result.best['name']}: {result.best['params']:,} parameters; model saved to {result.best['model_dir']}")
    return 0


def format_table(frame) -> str:
    columns = [c for c in ("zero_shot_rank", "name", "strategy", "params", "zero_shot_loss", "distilled_loss",
                           "estimated_latency_ms", "latency_ms", "accuracy", "chosen") if c in frame]
    table = frame[columns].copy()
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
