"""`hybridlab distill` and `hybridlab cache-logits`.

A single-process `hybridlab distill` runs as a recorded `distill` job (hybridlab.cli.recorded)
whose run folder is --out; under torchrun (WORLD_SIZE > 1) every rank calls the library
directly, as a job is one process and only one rank may record it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hybridlab.cli.recorded import add_workspace_option, run_recorded
from hybridlab.core.paths import DEMO_TRAIN, DEMO_VAL, demo_dir


def register(sub) -> None:
    p = sub.add_parser(
        "distill", help="distil a pruned student from its teacher (logit KD); torchrun for data parallel"
    )
    p.add_argument("--student", required=True, help="the pruned model directory")
    p.add_argument("--teacher", default=None, help="'demo' or a model directory (optional with --logits-cache)")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoint/, model/")
    _data_options(p)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="distil from the teacher's top-k logits only")
    p.add_argument("--lm-loss-weight", type=float, default=0.0, help="mix in next-token cross entropy (0 = pure KD)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--eval-tokens", type=int, default=32_768)
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoint")
    p.add_argument("--logits-cache", default=None, help="a folder from `hybridlab cache-logits`")
    p.add_argument("--trust-remote-code", action="store_true")
    add_workspace_option(p)
    p.set_defaults(func=run_distill)

    p = sub.add_parser("cache-logits", help="precompute a teacher's top-k logits for a distillation run")
    p.add_argument("--teacher", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cache-top-k", type=int, default=32)
    _data_options(p)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=run_cache_logits)


def _data_options(p) -> None:
    p.add_argument("--tokens", required=True, help="token budget, e.g. 2M or 500k")
    p.add_argument("--data", default=None, help="training tokens: .npy or text (default: the demo's training sample)")
    p.add_argument("--val", default=None, help="validation tokens .npy (default: the demo's)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="global batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 (bf16 autocast is the default)")


def _settings(args):
    from hybridlab.training.distill import DistillSettings, parse_token_count

    settings = DistillSettings(
        tokens=parse_token_count(args.tokens),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        bf16_autocast=not args.no_bf16,
        **{
            k: getattr(args, k)
            for k in (
                "lr",
                "temperature",
                "top_k",
                "lm_loss_weight",
                "log_every",
                "eval_every",
                "checkpoint_every",
                "eval_tokens",
            )
            if hasattr(args, k)
        },
    )
    settings.validate()
    return settings


def _tokens(args, tokenizer, uses_demo: bool):
    from hybridlab.data.calibration import load_token_array

    data = args.data or (demo_dir() / DEMO_TRAIN if uses_demo else None)
    if data is None:
        raise ValueError("--data is required unless the teacher is the demo (a .npy token array or text files)")
    val = args.val or (demo_dir() / DEMO_VAL if uses_demo else None)
    train_tokens = load_token_array(data, tokenizer).reshape(-1)
    val_tokens = load_token_array(val, tokenizer).reshape(-1) if val else None
    return train_tokens, val_tokens


def _check(args):
    """The command's own checks, named by its options, before any job is recorded; its settings."""
    from hybridlab.model.loading import resolve_model_dir

    settings = _settings(args)
    if args.teacher is None and args.logits_cache is None:
        raise ValueError("give --teacher, or --logits-cache built from the teacher")
    if not args.resume and Path(args.out, "checkpoint").exists():
        raise ValueError(f"{args.out} already holds a run; pass --resume to continue it or choose another --out")
    resolve_model_dir(args.student)
    if args.teacher is not None:
        resolve_model_dir(args.teacher)
    if args.data is None and args.teacher != "demo":
        raise ValueError("--data is required unless the teacher is the demo (a .npy token array or text files)")
    return settings


def run_distill(args) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_ranks(args)
    settings = _check(args)
    spec = {
        "student": args.student,
        "teacher": args.teacher,
        "logits_cache": args.logits_cache,
        "tokens": settings.tokens,
        "seq_len": settings.seq_len,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "bf16": settings.bf16_autocast,
        "lr": settings.lr,
        "temperature": settings.temperature,
        "top_k": settings.top_k,
        "lm_loss_weight": settings.lm_loss_weight,
        "log_every": settings.log_every,
        "eval_every": settings.eval_every,
        "checkpoint_every": settings.checkpoint_every,
        "eval_tokens": settings.eval_tokens,
        "train_tokens": args.data,
        "val_tokens": args.val,
        "run_dir": args.out,
        "resume": args.resume,
        "trust_remote_code": args.trust_remote_code,
    }
    result = run_recorded("distill", spec, args)
    result["model_dir"] = str(Path(args.out) / "model")  # the run folder's copy, as before; the store has its own
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("step", "tokens", "loss", "val_loss", "teacher_val_loss", "model_dir")
                if k in result
            },
            indent=2,
        )
    )
    return 0


def _run_ranks(args) -> int:
    """One rank of a torchrun launch: the library directly, nothing recorded in the store."""
    from hybridlab.model.loading import load_model
    from hybridlab.training.distill import distill
    from hybridlab.training.logits_cache import LogitsCache

    settings = _check(args)
    cache = LogitsCache(args.logits_cache) if args.logits_cache else None
    student, student_tok = load_model(args.student, trust_remote_code=args.trust_remote_code)
    teacher, teacher_tok = (None, None)
    if args.teacher is not None:
        teacher, teacher_tok = load_model(args.teacher, trust_remote_code=args.trust_remote_code)
    train_tokens, val_tokens = _tokens(args, student_tok or teacher_tok, args.teacher == "demo")
    result = distill(
        student,
        teacher,
        train_tokens,
        val_tokens,
        settings,
        args.out,
        resume=args.resume,
        logits_cache=cache,
        student_tokenizer=student_tok,
        teacher_tokenizer=teacher_tok,
    )
    if result.get("model_dir"):
        print(
            json.dumps(
                {
                    k: result[k]
                    for k in ("step", "tokens", "loss", "val_loss", "teacher_val_loss", "model_dir")
                    if k in result
                },
                indent=2,
            )
        )
    return 0


def run_cache_logits(args) -> int:
    from hybridlab.model.loading import load_model
    from hybridlab.training.logits_cache import build_logits_cache

    settings = _settings(args)
    teacher, tokenizer = load_model(args.teacher, trust_remote_code=args.trust_remote_code)
    train_tokens, _ = _tokens(args, tokenizer, args.teacher == "demo")
    out = build_logits_cache(teacher, train_tokens, settings, args.out, top_k=args.cache_top_k)
    print(f"teacher top-{args.cache_top_k} logits for {settings.total_steps} steps written to {out}")
    return 0
