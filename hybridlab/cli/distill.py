"""`hybridlab distill` and `hybridlab cache-logits`.

A single-process `hybridlab distill` runs as a recorded `distill` job (hybridlab.cli.recorded)
whose run folder is --out; under torchrun (WORLD_SIZE > 1) every rank calls the library
directly, as a job is one process and only one rank may record it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hybridlab.cli.options import add_options, job_spec_from_args, settings_from_args
from hybridlab.cli.recorded import add_workspace_option, refuse_existing, run_recorded
from hybridlab.core.outputs import check_new_folder
from hybridlab.core.paths import DEMO_TRAIN, DEMO_VAL, demo_dir
from hybridlab.core.settings import declared
from hybridlab.jobs.kinds.common import JobOptions
from hybridlab.jobs.kinds.distill import DistillInputs
from hybridlab.training.distill import DistillSettings, check_resume

# What a logits cache shares with the distillation that reads it: the same batches, in the same order.
CACHE_SETTINGS = ("tokens", "seq_len", "batch_size", "seed", "bf16_autocast")


def register(sub) -> None:
    p = sub.add_parser(
        "distill", help="distil a pruned student from its teacher (logit KD); torchrun for data parallel"
    )
    add_options(p, DistillInputs)
    add_options(p, DistillSettings)
    add_options(p, JobOptions, skip=("device",))
    add_workspace_option(p)
    p.set_defaults(func=run_distill)

    p = sub.add_parser("cache-logits", help="precompute a teacher's top-k logits for a distillation run")
    add_options(p, DistillInputs, only=("teacher", "train_tokens", "val_tokens"), required=("teacher",))
    p.add_argument("--out", required=True, help="folder for the cache")
    p.add_argument("--cache-top-k", type=int, default=32, help="teacher logits kept per token")
    add_options(p, DistillSettings, only=CACHE_SETTINGS)
    add_options(p, JobOptions, only=("trust_remote_code", "allow_pickle_weights"))
    p.set_defaults(func=run_cache_logits)


def _settings(args) -> DistillSettings:
    settings = settings_from_args(DistillSettings, args)
    settings.validate()
    return settings


def _tokens(args, tokenizer, uses_demo: bool, vocab_size: int | None = None):
    from hybridlab.data.calibration import load_token_array

    data = args.train_tokens or (demo_dir() / DEMO_TRAIN if uses_demo else None)
    if data is None:
        raise ValueError("--data is required unless the teacher is the demo (a .npy token array or text files)")
    val = args.val_tokens or (demo_dir() / DEMO_VAL if uses_demo else None)
    train_tokens = load_token_array(data, tokenizer, vocab_size).reshape(-1)
    val_tokens = load_token_array(val, tokenizer, vocab_size).reshape(-1) if val else None
    return train_tokens, val_tokens


def _flag(name: str) -> str:
    """A DistillSettings field as this command's option."""
    flags = {item.name: item.flag for item in declared(DistillSettings)}
    return flags.get(name, name)


def _check(args) -> DistillSettings:
    """The command's own checks, named by its options, before any job is recorded; its settings."""
    from hybridlab.model.loading import resolve_model_dir

    settings = _settings(args)
    if args.teacher is None and args.logits_cache is None:
        raise ValueError("give --teacher, or --logits-cache built from the teacher")
    if args.resume:  # the run folder must exist, hold a checkpoint, and have been started with these settings
        check_resume(args.run_dir, settings, label=_flag)
    elif Path(args.run_dir, "checkpoint").exists():
        raise ValueError(f"{args.run_dir} already holds a run; pass --resume to continue it or choose another --out")
    else:
        check_new_folder(args.run_dir, "--out", may_exist=True)
    resolve_model_dir(args.student)
    if args.teacher is not None:
        resolve_model_dir(args.teacher)
    if args.train_tokens is None and args.teacher != "demo":
        raise ValueError("--data is required unless the teacher is the demo (a .npy token array or text files)")
    return settings


def run_distill(args) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_ranks(args)
    _check(args)
    spec = job_spec_from_args(args, DistillInputs, DistillSettings, JobOptions)
    result = run_recorded("distill", spec, args)
    result["model_dir"] = str(Path(args.run_dir) / "model")  # the run folder's copy, as before; the store has its own
    _print_summary(result)
    return 0


def _print_summary(result: dict) -> None:
    keys = ("step", "tokens", "loss", "val_loss", "teacher_val_loss", "model_dir")
    print(json.dumps({k: result[k] for k in keys if k in result}, indent=2))


def _run_ranks(args) -> int:
    """One rank of a torchrun launch: the library directly, nothing recorded in the store."""
    from hybridlab.model.loading import load_model
    from hybridlab.training.distill import distill
    from hybridlab.training.logits_cache import LogitsCache

    settings = _check(args)
    cache = LogitsCache(args.logits_cache) if args.logits_cache else None
    options = {"trust_remote_code": args.trust_remote_code, "allow_pickle_weights": args.allow_pickle_weights}
    student, student_tok = load_model(args.student, **options)
    teacher, teacher_tok = (None, None)
    if args.teacher is not None:
        teacher, teacher_tok = load_model(args.teacher, **options)
    vocab = int(student.config.vocab_size)
    train_tokens, val_tokens = _tokens(args, student_tok or teacher_tok, args.teacher == "demo", vocab)
    result = distill(
        student,
        teacher,
        train_tokens,
        val_tokens,
        settings,
        args.run_dir,
        resume=args.resume,
        logits_cache=cache,
        student_tokenizer=student_tok,
        teacher_tokenizer=teacher_tok,
    )
    if result.get("model_dir"):  # rank 0 only
        _print_summary(result)
    return 0


def run_cache_logits(args) -> int:
    from hybridlab.model.loading import load_model
    from hybridlab.training.logits_cache import build_logits_cache

    settings = _settings(args)
    if not 1 <= args.cache_top_k <= 1_000_000:
        raise ValueError(f"--cache-top-k must be between 1 and the vocabulary size, got {args.cache_top_k}")
    refuse_existing(args.out)
    from hybridlab.model.checks import check_model

    check_model(args.teacher, args.trust_remote_code, args.allow_pickle_weights)  # before loading anything
    teacher, tokenizer = load_model(
        args.teacher, trust_remote_code=args.trust_remote_code, allow_pickle_weights=args.allow_pickle_weights
    )
    train_tokens, _ = _tokens(args, tokenizer, args.teacher == "demo", int(teacher.config.vocab_size))
    out = build_logits_cache(teacher, train_tokens, settings, args.out, top_k=args.cache_top_k)
    print(f"teacher top-{args.cache_top_k} logits for {settings.total_steps} steps written to {out}")
    return 0
