"""`distill` jobs: logit distillation of a pruned student from its teacher (hybridlab.training.distill).

The run folder handed to `distill` is the job's `ctx.checkpoint_dir`, the same for
every attempt, so a job re-queued after a worker crash resumes from its last
checkpoint (model, optimizer, scheduler, RNG and data position) on the same loss
curve. The distilled model then moves to artifacts/distilled/<name>.

`hybridlab distill` gives its --out folder as 'run_dir' instead: metrics, checkpoints
and the model stay there (so --resume works on it) and the model is copied to the
artifact. With a teacher 'logits_cache' the teacher model itself may be left out.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hybridlab.core.outputs import check_new_folder
from hybridlab.core.paths import DEMO_TRAIN, DEMO_VAL
from hybridlab.core.settings import declared, setting
from hybridlab.jobs.kinds.common import (
    JobOptions,
    absolute_path,
    check_model_input,
    check_seq_len,
    check_token_input,
    demo_tokens_or,
    existing_path,
    load,
    run_name,
)
from hybridlab.jobs.registry import Artifact, JobKind, settings_from_spec, spec_fields
from hybridlab.jobs.specs import existing_dir, existing_file, model_ref
from hybridlab.store.lookups import candidate_model_dir
from hybridlab.training.checkpoint import restore_checkpoint
from hybridlab.training.distill import DistillSettings, check_resume

ARTIFACT = Artifact(folder="distilled", prefix="distill")  # artifacts/distilled/<name>


@dataclass
class DistillInputs:
    """What a distillation reads and where it writes; how it trains is DistillSettings."""

    student: str | None = setting(None, check=model_ref, cli_required=True, help="the pruned student's model folder")
    candidate: int | None = setting(None, cli=False, help="or: a candidate run id whose model is the student")
    teacher: str | None = setting(
        None, check=model_ref, help="'demo' or a model folder (may be left out with a logits cache)"
    )
    logits_cache: str | None = setting(
        None, check=existing_dir, help="the teacher's top-k logits, a folder from `hybridlab cache-logits`"
    )
    train_tokens: str | None = setting(
        None,
        check=existing_path,
        flag="--data",
        help="training tokens: a .npy token array or text files (default: the demo's for the demo teacher)",
    )
    val_tokens: str | None = setting(
        None,
        check=existing_file,
        flag="--val",
        help="validation tokens .npy (default: the demo's for the demo teacher)",
    )
    run_dir: str | None = setting(
        None,
        check=absolute_path,
        flag="--out",
        cli_required=True,
        help="run folder: metrics.jsonl, checkpoint/, model/ (a job's default: its own)",
    )
    resume: bool = setting(False, help="continue the run in the run folder from its checkpoint")


def settings_of(spec: dict) -> DistillSettings:
    return settings_from_spec(DistillSettings, spec)


def _check(spec: dict, store) -> None:
    if (spec["student"] is None) == (spec["candidate"] is None):
        raise ValueError("give exactly one of 'student' (a model folder) and 'candidate' (a candidate run id)")
    if spec["candidate"] is not None and store is not None:
        spec["student"] = model_ref(str(candidate_model_dir(store, spec["candidate"])))
    if spec["teacher"] is None and spec["logits_cache"] is None:
        raise ValueError("give 'teacher' (a model) or 'logits_cache' (a folder from `hybridlab cache-logits`)")
    if spec["train_tokens"] is None and spec["teacher"] != "demo":
        raise ValueError("'train_tokens' is required unless the teacher is 'demo': a .npy token array or text files")
    settings = settings_of(spec)
    settings.validate()  # a zero or too small budget fails here, before queueing
    student = check_model_input(spec, "student")
    teacher = check_model_input(spec, "teacher")
    teacher_config = teacher.config if teacher is not None else None
    if spec["logits_cache"] is not None:
        from hybridlab.training.logits_cache import LogitsCache

        try:
            cache = LogitsCache(spec["logits_cache"])
            cache.check_compatible(settings)
            teacher_config = teacher_config or cache.teacher_config()
        except (FileNotFoundError, KeyError, TypeError) as err:
            raise ValueError(f"the logits cache {spec['logits_cache']} cannot be used: {err}") from None
    if student is not None and teacher_config is not None:
        from hybridlab.model.checks import check_vocabularies

        check_vocabularies(student.config, teacher_config)
    for description in (student, teacher):
        check_seq_len(description, settings.seq_len)
    uses_demo = spec["teacher"] == "demo"
    for key, demo_file in (("train_tokens", DEMO_TRAIN), ("val_tokens", DEMO_VAL)):
        source = spec[key] or ("demo" if uses_demo else None)
        check_token_input(source, student, demo_file=demo_file, label=repr(key), min_tokens=settings.seq_len + 1)
    _check_run_dir(spec)
    if student is not None:
        _check_disk(spec, student, store)


def _check_disk(spec: dict, student, store) -> None:
    """Room for the run: its checkpoint (fp32 weights and AdamW's two moments, 12 bytes a parameter)
    twice while a new one replaces the last (once more when resuming: the last is already there), and
    the distilled model (at most 4 bytes a parameter) in the run folder and in the workspace."""
    from hybridlab.core.outputs import check_free_space, same_disk
    from hybridlab.model.sizes import count_params

    params = sum(count_params(student.widths).values())
    model = 4 * params
    run_need = (1 if spec["resume"] else 2) * 12 * params + model
    run_dir = spec["run_dir"]
    if store is None:
        if run_dir is not None:
            check_free_space(run_dir, run_need, "'run_dir'", "the run's checkpoints and distilled model")
        return
    if run_dir is None:  # the job's own folder in the workspace; its model is moved, not copied, into place
        check_free_space(store.workspace, run_need, "workspace", "the run's checkpoints and distilled model")
    elif same_disk(run_dir, store.workspace):
        check_free_space(run_dir, run_need + model, "'run_dir'", "the run's checkpoints and its two model copies")
    else:
        check_free_space(run_dir, run_need, "'run_dir'", "the run's checkpoints and distilled model")
        check_free_space(store.workspace, model, "workspace", "the distilled model")


def _check_run_dir(spec: dict) -> None:
    if spec["run_dir"] is None:
        if spec["resume"]:
            raise ValueError(
                "'resume' continues the run in 'run_dir'; give 'run_dir' (a job resumes its own folder by itself)"
            )
        return
    run_dir = Path(spec["run_dir"])
    restore_checkpoint(run_dir / "checkpoint")  # one a crash stranded mid-rename counts as there
    if spec["resume"]:  # the folder, its checkpoint, and the settings it was started with
        check_resume(run_dir, settings_of(spec), label=_spec_key)
        return
    if (run_dir / "checkpoint").exists():
        raise ValueError(f"{run_dir} already holds a run; set 'resume' to continue it or choose another 'run_dir'")
    check_new_folder(run_dir, "'run_dir'", may_exist=True)


def _spec_key(name: str) -> str:
    """A DistillSettings field as a job spec names it."""
    keys = {item.name: item.key for item in declared(DistillSettings)}
    return repr(keys.get(name, name))


def run(spec: dict, ctx) -> dict:
    from hybridlab.data.calibration import load_token_array
    from hybridlab.training.distill import distill
    from hybridlab.training.logits_cache import LogitsCache

    name = run_name(spec, ctx, ARTIFACT.prefix)
    run_id = ctx.start_run("distillations", name, spec["student"], spec)
    ctx.progress(0.0, "loading student and teacher")
    student, student_tokenizer = load(spec["student"], spec)
    teacher, teacher_tokenizer = load(spec["teacher"], spec) if spec["teacher"] is not None else (None, None)
    cache = LogitsCache(spec["logits_cache"]) if spec["logits_cache"] is not None else None
    tokenizer = student_tokenizer or teacher_tokenizer  # for text data
    vocab = int(student.config.vocab_size)
    train_path = demo_tokens_or(spec["train_tokens"], spec["teacher"], DEMO_TRAIN)
    train = load_token_array(train_path, tokenizer, vocab).reshape(-1)
    val_path = demo_tokens_or(spec["val_tokens"], spec["teacher"], DEMO_VAL)
    val = load_token_array(val_path, tokenizer, vocab).reshape(-1) if val_path else None
    settings = settings_of(spec)
    run_dir = Path(spec["run_dir"]) if spec["run_dir"] is not None else ctx.checkpoint_dir
    result = distill(
        student,
        teacher,
        train,
        val,
        settings,
        run_dir,
        resume=(run_dir / "checkpoint" / "state.pt").exists(),
        progress=ctx.progress,
        logits_cache=cache,
        student_tokenizer=student_tokenizer,
        teacher_tokenizer=teacher_tokenizer,
    )
    final = ctx.artifact_path(ARTIFACT.folder, name)
    if spec["run_dir"] is not None:  # the user's folder keeps its model; the artifact is a copy
        with ctx.write_artifact(ARTIFACT.folder, name) as tmp:
            shutil.copytree(run_dir / "model", tmp, dirs_exist_ok=True)
    else:
        if final.exists():  # an earlier attempt moved it but died before recording the run
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir / "model", final)  # same filesystem: one atomic rename
    ctx.register_model(str(final), student.config)
    result = {
        **result,
        "model_dir": str(final),
        "model_path": str(final),  # model_path: like prune's result
        "candidate": spec["candidate"],
        "teacher": spec["teacher"],
    }
    ctx.finish_run("distillations", run_id, final, result)
    return {"run_id": run_id, "artifact": ctx.relative(final), **result}


KIND = JobKind(
    artifact=ARTIFACT,
    name="distill",
    doc="logit distillation of a student from a teacher, resumable from checkpoints",
    fields=spec_fields(DistillInputs, DistillSettings, JobOptions),
    handler=run,
    check=_check,
    requires=("hybridlab.training.distill",),
)
