"""`distill` jobs: logit distillation of a pruned student from its teacher (hybridlab.distill).

The checkpoint folder handed to the distillation is the job's `ctx.checkpoint_dir`,
the same for every attempt, so a job re-queued after a worker crash resumes from
the last checkpoint; the distilled model lands in artifacts/distilled/<name>.

NOTE for hybridlab.distill's owner: the call below is written against the contract
in the distillation issue; adjust the keyword names here if the function differs.
Metrics reported through `progress` should carry a "step" key so a resumed run
overwrites the points it replays instead of appending after them.
"""
from __future__ import annotations

from hybridlab.jobs.kinds.common import (
    BATCH_SIZE, DEVICE, SEQ_LEN, TOKENS_FILE, TRUST_REMOTE_CODE, demo_tokens_or, load, model_field, name_field,
    run_name,
)
from hybridlab.jobs.registry import Field, JobKind, register_kind
from hybridlab.jobs.specs import non_negative, positive


def _check(spec: dict, store) -> None:
    for key in ("train_tokens", "val_tokens"):
        if spec[key] is None and spec["teacher"] != "demo":
            raise ValueError(f"{key!r} is required unless the teacher is 'demo': a .npy token file")


def run(spec: dict, ctx) -> dict:
    from hybridlab.data.tokens import load_tokens
    from hybridlab.distill import distill
    from hybridlab.loading import save_model

    name = run_name(spec, ctx, "distill")
    run_id = ctx.start_run("distillations", name, spec["student"], spec)
    ctx.progress(0.0, "loading student and teacher")
    student, tokenizer = load(spec["student"], spec)
    teacher, _ = load(spec["teacher"], spec)
    train = load_tokens(demo_tokens_or(spec["train_tokens"], spec["teacher"], "train"))
    val = load_tokens(demo_tokens_or(spec["val_tokens"], spec["teacher"], "val"))
    result = distill(
        student, teacher, train_tokens=train, val_tokens=val, tokens=spec["tokens"], lr=spec["lr"],
        seq_len=spec["seq_len"], batch_size=spec["batch_size"], temperature=spec["temperature"],
        top_k=spec["top_k"], lm_loss_weight=spec["lm_loss_weight"], seed=spec["seed"],
        out_dir=ctx.checkpoint_dir, resume=True, progress=ctx.progress,
    )
    out = save_model(student, tokenizer, ctx.artifact_path("distilled", name), overwrite=True)
    ctx.register_model(str(out), student.config)
    result = {**(result or {}), "model_path": str(out), "teacher": spec["teacher"]}
    ctx.finish_run("distillations", run_id, out, result)
    return {"run_id": run_id, "artifact": ctx.relative(out), **result}


register_kind(JobKind(
    name="distill",
    doc="logit distillation of a student from a teacher, resumable from checkpoints",
    fields={
        "student": model_field("the pruned model to train: a local Hugging Face folder"),
        "teacher": model_field("the teacher: 'demo' or a local Hugging Face folder"),
        "tokens": Field(int, check=positive, doc="token budget, e.g. 2000000"),
        "lr": Field(float, default=1e-3, check=positive),
        "seq_len": SEQ_LEN,
        "batch_size": BATCH_SIZE,
        "temperature": Field(float, default=1.0, check=positive),
        "top_k": Field(int, default=None, nullable=True, check=positive, doc="distil from the teacher's top-k logits"),
        "lm_loss_weight": Field(float, default=0.0, check=non_negative),
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
