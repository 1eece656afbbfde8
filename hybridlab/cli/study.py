"""`hybridlab study`: the paper's ablations on one teacher, written up as docs/results.md."""

from __future__ import annotations

import json
from pathlib import Path

from hybridlab.core.paths import DEMO_TRAIN, DEMO_VAL, demo_dir

# Options echoed into the regeneration command (always, or when they differ from the default).
ALWAYS = ("model", "compression", "tokens", "scratch_tokens", "out", "docs")
DEFAULTS = {
    "comparisons": None,
    "ssm_sweep": "25,50",
    "tolerance": 0.03,
    "max_width_prune": 0.5,
    "max_candidates": 8,
    "seq_len": 256,
    "batch_size": 8,
    "lr": 1e-3,
    "eval_tokens": 8_192,
    "teacher_top_k": 0,
    "latency_repeats": 5,
    "calib_samples": 32,
    "seed": 0,
    "threads": None,
    "no_bf16": False,
    "data": None,
    "val": None,
    "calib": None,
    "trust_remote_code": False,
}


def register(sub) -> None:
    p = sub.add_parser(
        "study", help="run the paper's ablations (width vs depth, heads vs channels, ...) and write results.md"
    )
    p.add_argument("--model", default="demo", help="'demo' (default) or a model directory")
    p.add_argument(
        "--compression", default="0.5", help="fraction of the parameters to remove: 0.5 or 50%% (half the size)"
    )
    p.add_argument("--tokens", default="200k", help="distillation tokens per arm, e.g. 200k")
    p.add_argument(
        "--scratch-tokens", default=None, help="from-scratch baseline budget (default 5x --tokens; 0 skips it)"
    )
    p.add_argument(
        "--out",
        required=True,
        help="study folder: results.csv, results_curves.csv, results.md, runs/ (rerun to resume)",
    )
    p.add_argument("--docs", default=None, help="also copy results.md and its CSVs into this folder (e.g. docs)")
    p.add_argument("--comparisons", default=None, help="comma list of comparisons (default: all)")
    p.add_argument("--ssm-sweep", default="25,50", help="percent of the SSM width cut by heads or by channels")
    p.add_argument("--tolerance", type=float, default=0.03, help="relative distance to the parameter target")
    p.add_argument("--max-width-prune", type=float, default=0.5)
    p.add_argument("--max-candidates", type=int, default=8, help="width-only candidates ranked zero-shot")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="distillation learning rate")
    p.add_argument("--eval-tokens", type=int, default=8_192, help="validation tokens for every loss")
    p.add_argument(
        "--teacher-top-k",
        type=int,
        default=0,
        help="distil from cached top-k teacher logits, shared by all arms (faster; starves the student's tail); "
        "0 = the live teacher's full logits (default)",
    )
    p.add_argument("--latency-repeats", type=int, default=5)
    p.add_argument("--calib-samples", type=int, default=32, help="calibration windows for importance")
    p.add_argument("--data", default=None, help="training tokens .npy (default: the demo's training sample)")
    p.add_argument("--val", default=None, help="validation tokens .npy (default: the demo's)")
    p.add_argument("--calib", default=None, help="calibration tokens (default: the demo's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 (bf16 autocast is the default)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=run_study_command)


def parse_compression(text: str) -> float:
    value = str(text).strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ValueError(f"cannot read a compression from {text!r}; write e.g. 0.5 or 50%") from None
    if not 0 < number < 1:
        raise ValueError(
            f"--compression {text} must be between 0 and 1 (or 0% and 100%): the fraction of parameters removed"
        )
    return number


def settings_from_args(args):
    from hybridlab.study.arms import COMPARISONS
    from hybridlab.study.run import StudySettings
    from hybridlab.training.distill import parse_token_count

    try:
        sweep = tuple(float(x) / 100 for x in args.ssm_sweep.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--ssm-sweep {args.ssm_sweep!r} must be comma-separated percentages, e.g. 25,50") from None
    comparisons = (
        tuple(c.strip() for c in args.comparisons.split(",") if c.strip()) if args.comparisons else COMPARISONS
    )
    settings = StudySettings(
        compression=parse_compression(args.compression),
        tokens=parse_token_count(args.tokens),
        scratch_tokens=None if args.scratch_tokens is None else parse_token_count(args.scratch_tokens),
        ssm_sweep=sweep,
        comparisons=comparisons,
        tolerance=args.tolerance,
        max_width_prune=args.max_width_prune,
        max_candidates=args.max_candidates,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_tokens=args.eval_tokens,
        teacher_top_k=args.teacher_top_k or None,
        latency_repeats=args.latency_repeats,
        calib_samples=args.calib_samples,
        bf16_autocast=not args.no_bf16,
        seed=args.seed,
    )
    settings.validate()
    return settings


def command_line(args) -> str:
    """The `hybridlab study` command that reproduces this run (defaults left out)."""
    words = ["hybridlab", "study"]
    for name, value in vars(args).items():
        if name in ("func", "command") or value is None or (name not in ALWAYS and DEFAULTS.get(name, value) == value):
            continue
        option = "--" + name.replace("_", "-")
        words += [option] if value is True else [option, str(value)]
    return " ".join(words)


def run_study_command(args) -> int:
    import torch

    from hybridlab.data.calibration import batched, load_calibration, load_token_array
    from hybridlab.model.loading import load_model, resolve_model_dir
    from hybridlab.study.run import publish, run_study

    settings = settings_from_args(args)
    model_dir = resolve_model_dir(args.model)  # an unknown model fails here, before any work
    demo = args.model == "demo"
    for option, value in (("--data", args.data), ("--val", args.val), ("--calib", args.calib)):
        if value is None and not demo:
            raise ValueError(f"{option} is required for models other than the demo")
    if args.threads:
        torch.set_num_threads(args.threads)
    train_tokens = load_token_array(args.data or demo_dir() / DEMO_TRAIN).reshape(-1)
    val_tokens = load_token_array(args.val or demo_dir() / DEMO_VAL).reshape(-1)
    model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
    calib = batched(load_calibration(args.calib or "demo", tokenizer, settings.calib_samples, settings.seq_len), 8)
    result = run_study(
        model,
        tokenizer,
        train_tokens,
        val_tokens,
        calib,
        settings,
        args.out,
        teacher_pretraining_tokens=pretraining_tokens(model_dir),
        command=command_line(args),
        model_name=str(args.model),
    )
    columns = ["comparison", "arm", "params", "zero_shot_loss", "distilled_loss", "scratch_loss", "latency_ms"]
    print(result.results[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
    print(f"study written to {Path(args.out) / 'results.md'}")
    if args.docs:
        for path in publish(args.out, args.docs):
            print(f"published {path}")
    return 0


def pretraining_tokens(model_dir: Path) -> int | None:
    """Tokens the teacher was trained on, where its training summary sits beside it (demo: train_summary.json)."""
    for path in (
        model_dir.parent / "train_summary.json",
        model_dir.parent / "summary.json",
        model_dir / "train_summary.json",
    ):
        if path.exists():
            value = json.loads(path.read_text()).get("tokens_seen")
            if isinstance(value, int):
                return value
    return None
