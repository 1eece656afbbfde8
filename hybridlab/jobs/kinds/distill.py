"""`distill` jobs: logit distillation of a pruned student from its teacher (hybridlab.distill).

The run folder handed to `distill` is the job's `ctx.checkpoint_dir`, the same for
every attempt, so a job re-queued after a worker crash resumes from its last
checkpoint (model, optimizer, scheduler, RNG and data position) on the same loss
curve. The distilled model then moves to artifacts/distilled/<name>.
"""
from __future__ import annotations

import os
import shutil

from hybridlab.jobs.kinds.common import (
    BATCH_SIZE, DEVICE, SEQ_LEN, TOKENS_FILE, TRUST_REMOTE_CODE, demo_tokens_or, load, name_field,
    run_name,
)
from hybridlab.jobs.registry import Field, JobKind, register_kind
from hybridlab.jobs.specs import model_ref, non_negative, positive

SETTINGS_KEYS = ("tokens", "seq_len", "batch_size", "lr", "temperature", "top_k", "lm_loss_weight",
                 "eval_every", "checkpoint_every", "seed")
DEMO_TRAIN, DEMO_VAL = "train_sample.npy", "val.npy"


def settings_of(spec: dict):
    from hybridlab.distill import DistillSettings

    return DistillSettings(**{k: spec[k] for k in SETTINGS_KEYS})


def _check(spec: dict, store) -> None:
    if (spec["student"] is None) == (spec["candidate"] is None):
        raise ValueError("give exactly one of 'student' (a model folder) and 'candidate' (a candidate run id)")
    if spec["candidate"] is not None and store is not None:
        rows = store.query("SELECT artifact FROM candidates WHERE id = ?", (spec["candidate"],))
        if not rows or rows[0]["artifact"] is None:
            raise ValueError(f"candidate {spec['candidate']} does not exist or has no model yet; see list_candidates()")
        spec["student"] = model_ref(str(store.workspace / rows[0]["artifact"]))
    if spec["train_tokens"] is None and spec["teacher"] != "demo":
        raise ValueError("'train_tokens' is required unless the teacher is 'demo': a .npy token file")
    settings_of(spec).validate()  # a zero or too small budget fails here, before queueing


def run(spec: dict, ctx) -> dict:
    from hybridlab.data.tokens import load_tokens
    from hybridlab.distill import distill

    name = run_name(spec, ctx, "distill")
    run_id = ctx.start_run("distillations", name, spec["student"], spec)
    ctx.progress(0.0, "loading student and teacher")
    student, student_tokenizer = load(spec["student"], spec)
    teacher, teacher_tokenizer = load(spec["teacher"], spec)
    train = load_tokens(demo_tokens_or(spec["train_tokens"], spec["teacher"], DEMO_TRAIN))
    val_path = demo_tokens_or(spec["val_tokens"], spec["teacher"], DEMO_VAL)
    settings = settings_of(spec)
    run_dir = ctx.checkpoint_dir
    result = distill(
        student, teacher, train, load_tokens(val_path) if val_path else None, settings, run_dir,
        resume=(run_dir / "checkpoint" / "state.pt").exists(), progress=_with_step(ctx.progress, settings.total_steps),
        student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
    )
    final = ctx.artifact_path("distilled", name)
    if final.exists():  # an earlier attempt moved it but died before recording the run
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run_dir / "model", final)  # same filesystem: one atomic rename
    ctx.register_model(str(final), student.config)
    result = {**result, "model_dir": str(final), "model_path": str(final),  # model_path: like prune's result
              "candidate": spec["candidate"], "teacher": spec["teacher"]}
    ctx.finish_run("distillations", run_id, final, result)
    return {"run_id": run_id, "artifact": ctx.relative(final), **result}


def _with_step(progress, total_steps: int):
    """The trainer reports fraction = step / total_steps; the store keys metric points by step,
    so a resumed run overwrites the points it replays. Recover the step from the fraction."""
    def report(fraction: float, message: str, metrics: dict | None = None) -> None:
        if metrics and "step" not in metrics:
            metrics = {"step": round(fraction * total_steps), **metrics}
        progress(fraction, message, metrics)
    return report


register_kind(JobKind(
    name="distill",
    doc="logit distillation of a student from a teacher, resumable from checkpoints",
    fields={
        "student": Field(str, default=None, nullable=True, check=model_ref, doc="the student's model folder"),
        "candidate": Field(int, default=None, nullable=True, doc="or: a candidate run id whose model is the student"),
        "teacher": Field(str, check=model_ref, doc="'demo' or a local Hugging Face folder"),
        "tokens": Field(int, check=positive, doc="token budget, e.g. 2000000"),
        "lr": Field(float, default=1e-3, check=positive),
        "seq_len": SEQ_LEN,
        "batch_size": BATCH_SIZE,
        "temperature": Field(float, default=1.0, check=positive),
        "top_k": Field(int, default=None, nullable=True, check=positive, doc="distil from the teacher's top-k logits"),
        "lm_loss_weight": Field(float, default=0.0, check=non_negative),
        "eval_every": Field(int, default=50, check=positive),
        "checkpoint_every": Field(int, default=50, check=positive),
        "train_tokens": TOKENS_FILE,
        "val_tokens": TOKENS_FILE,
        "seed": Field(int, default=0),
        "device": DEVICE,
        "name": name_field(),
        "trust_remote_code": TRUST_REMOTE_CODE,
    },
    handler=run,
    check=_check,
    requires=("hybridlab.distill",),
))
