"""`eval` jobs: validation loss / perplexity and lm-eval tasks (hybridlab.measure.evaluate)."""

from __future__ import annotations

from hybridlab.core.paths import DEMO_VAL
from hybridlab.jobs.kinds.common import (
    BATCH_SIZE,
    DEVICE,
    SEQ_LEN,
    TOKENS_FILE,
    TRUST_REMOTE_CODE,
    demo_tokens_or,
    load,
    model_field,
    name_field,
    run_name,
)
from hybridlab.jobs.registry import Field, JobKind, register_kind
from hybridlab.jobs.specs import existing_dir, positive


def _check(spec: dict, store) -> None:
    if not spec["tasks"] or not all(isinstance(t, str) and t.strip() for t in spec["tasks"]):
        raise ValueError("'tasks' must be a non-empty list of task names, e.g. ['val_loss', 'continuation_mc']")
    from hybridlab.measure.lmeval.harness import GENERATED_TASKS  # tasks built from validation tokens

    needs_tokens = sorted({"val_loss", *GENERATED_TASKS} & set(spec["tasks"]))
    if needs_tokens and spec["val_tokens"] is None and spec["model"] != "demo":
        raise ValueError(
            f"'val_tokens' is required for {', '.join(needs_tokens)} on models other than 'demo': a .npy token file"
        )


def run(spec: dict, ctx) -> dict:
    from hybridlab.data.tokens import load_tokens
    from hybridlab.measure.evaluate import evaluate

    name = run_name(spec, ctx, "eval")
    run_id = ctx.start_run("evaluations", name, spec["model"], spec)
    ctx.progress(0.0, "loading model")
    model, tokenizer = load(spec["model"], spec)
    ctx.register_model(spec["model"], model.config)
    val_path = demo_tokens_or(spec["val_tokens"], spec["model"], DEMO_VAL)
    report = evaluate(
        model,
        tokenizer,
        spec["tasks"],
        val_tokens=load_tokens(val_path) if val_path else None,
        seq_len=spec["seq_len"],
        batch_size=spec["batch_size"],
        max_tokens=spec["max_tokens"],
        limit=_limit(spec["limit"]),
        include_path=spec["include_path"],
        progress=ctx.sub_progress(0.05, 1.0),
    )
    result = {"tasks": report, "params": sum(p.numel() for p in model.parameters())}
    if "val_loss" in report:  # the number every comparison view plots
        result.update(val_loss=report["val_loss"]["loss"], perplexity=report["val_loss"]["perplexity"])
    ctx.finish_run("evaluations", run_id, None, result)
    return {"run_id": run_id, **result}


def _limit(value: float | None) -> float | int | None:
    """lm-eval reads a limit below 1 as a fraction of each task, else as a count of items."""
    return value if value is None or value < 1 else int(value)


register_kind(
    JobKind(
        name="eval",
        doc="validation loss / perplexity and lm-eval tasks",
        fields={
            "model": model_field(),
            "tasks": Field(list, default=["val_loss"], doc="task names: val_loss, continuation_mc, lm-eval names"),
            "val_tokens": TOKENS_FILE,
            "seq_len": SEQ_LEN,
            "batch_size": BATCH_SIZE,
            "max_tokens": Field(
                int, default=None, nullable=True, check=positive, doc="cap on tokens scored by val_loss"
            ),
            "limit": Field(
                float, default=None, nullable=True, check=positive, doc="items per lm-eval task (a fraction if < 1)"
            ),
            "include_path": Field(str, default=None, nullable=True, check=existing_dir, doc="extra lm-eval task YAMLs"),
            "device": DEVICE,
            "name": name_field(),
            "trust_remote_code": TRUST_REMOTE_CODE,
        },
        handler=run,
        check=_check,
        requires=("hybridlab.measure.evaluate",),
    )
)
