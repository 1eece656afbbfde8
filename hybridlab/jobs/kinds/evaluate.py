"""`eval` jobs: validation loss / perplexity and lm-eval tasks (hybridlab.measure.evaluate)."""

from __future__ import annotations

from dataclasses import dataclass

from hybridlab.core.paths import DEMO_VAL
from hybridlab.core.settings import (
    batch_count,
    comma_list,
    parse_token_count,
    positive,
    sequence_length,
    setting,
    token_budget,
)
from hybridlab.jobs.kinds.common import (
    JobOptions,
    ModelInput,
    check_model_input,
    check_seq_len,
    check_token_input,
    demo_tokens_or,
    load,
    run_name,
)
from hybridlab.jobs.registry import JobKind, spec_fields
from hybridlab.jobs.specs import existing_dir, existing_file


@dataclass
class EvalSettings:
    tasks: list[str] = setting(
        default_factory=lambda: ["val_loss"],
        parse=comma_list,
        cli_default="val_loss,continuation_mc",
        help="comma-separated: val_loss, continuation_mc, YAML tasks under --include-path, or standard lm-eval "
        "names (those need the network); the command's default: val_loss,continuation_mc, a job's: val_loss",
    )
    val_tokens: str | None = setting(
        None,
        check=existing_file,
        help="1-D uint16 .npy of held-out tokens (default: the demo's for the demo model)",
    )
    seq_len: int = setting(256, check=sequence_length, help="window length for val_loss")
    batch_size: int = setting(8, check=batch_count)
    max_tokens: int | None = setting(
        None, check=token_budget, parse=parse_token_count, help="cap on tokens scored by val_loss, e.g. 2e5"
    )
    limit: float | None = setting(None, check=positive, help="items per lm-eval task (a fraction if < 1)")
    include_path: str | None = setting(None, check=existing_dir, help="folder of extra lm-eval task YAML files")


def _check(spec: dict, store) -> None:
    if not spec["tasks"] or not all(isinstance(t, str) and t.strip() for t in spec["tasks"]):
        raise ValueError("'tasks' must be a non-empty list of task names, e.g. ['val_loss', 'continuation_mc']")
    from hybridlab.measure.lmeval.harness import GENERATED_TASKS  # tasks built from validation tokens

    needs_tokens = sorted({"val_loss", *GENERATED_TASKS} & set(spec["tasks"]))
    if needs_tokens and spec["val_tokens"] is None and spec["model"] != "demo":
        raise ValueError(
            f"'val_tokens' is required for {', '.join(needs_tokens)} on models other than 'demo': a .npy token file"
        )
    if spec["max_tokens"] is not None and spec["max_tokens"] < spec["seq_len"]:
        raise ValueError(
            f"'max_tokens' {spec['max_tokens']:,} is less than one window of 'seq_len' {spec['seq_len']:,}; "
            "raise max_tokens or lower seq_len"
        )
    description = check_model_input(spec)
    check_seq_len(description, spec["seq_len"])
    if needs_tokens:
        val = spec["val_tokens"] or ("demo" if spec["model"] == "demo" else None)
        window = spec["seq_len"] + 1 if "val_loss" in spec["tasks"] else 0
        check_token_input(val, description, demo_file=DEMO_VAL, label="'val_tokens'", min_tokens=window)


def run(spec: dict, ctx) -> dict:
    from hybridlab.data.calibration import load_token_array
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
        val_tokens=load_token_array(val_path, vocab_size=model.config.vocab_size).reshape(-1) if val_path else None,
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


KIND = JobKind(
    name="eval",
    doc="validation loss / perplexity and lm-eval tasks",
    fields=spec_fields(ModelInput, EvalSettings, JobOptions),
    handler=run,
    check=_check,
    requires=("hybridlab.measure.evaluate",),
)
