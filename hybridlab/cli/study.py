"""`hybridlab study`: the paper's ablations on one teacher, written up as docs/results.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hybridlab.cli.options import add_options, settings_from_args
from hybridlab.core.paths import DEMO_TRAIN, DEMO_VAL, demo_dir
from hybridlab.core.settings import declared, setting
from hybridlab.study.run import StudySettings

# Options always echoed into the regeneration command; the others only when they differ from the default.
ALWAYS = ("model", "compression", "tokens", "seeds", "scratch_tokens", "out", "docs")


@dataclass
class StudyCommand:
    """The command's options besides StudySettings: what it reads and where it writes."""

    out: str = setting(help="study folder: results.csv, results_curves.csv, results.md, runs/ (rerun to resume)")
    model: str = setting("demo", help="'demo' (default) or a model directory")
    docs: str | None = setting(None, help="also copy results.md and its CSVs into this folder (e.g. docs)")
    data: str | None = setting(None, help="training tokens .npy (default: the demo's training sample)")
    val: str | None = setting(None, help="validation tokens .npy (default: the demo's)")
    calib: str | None = setting(None, help="calibration tokens (default: the demo's)")
    threads: int | None = setting(None, help="torch intra-op threads")
    trust_remote_code: bool = setting(False, help="allow custom modeling code from the model folder")


def register(sub) -> None:
    p = sub.add_parser(
        "study", help="run the paper's ablations (width vs depth, heads vs channels, ...) and write results.md"
    )
    add_options(p, StudyCommand)
    add_options(p, StudySettings)
    p.set_defaults(func=run_study_command)


def settings_from_command(args) -> StudySettings:
    settings = settings_from_args(StudySettings, args)
    settings.validate()
    return settings


def command_line(args) -> str:
    """The `hybridlab study` command that reproduces this run (defaults left out)."""
    words = ["hybridlab", "study"]
    for item in declared(StudyCommand) + declared(StudySettings):
        value = getattr(args, item.name)
        if value is None or (item.name not in ALWAYS and value == item.cli_default):
            continue
        words += [item.flag] if item.types == (bool,) else [item.flag, str(value)]
    return " ".join(words)


def run_study_command(args) -> int:
    import torch

    from hybridlab.core.outputs import check_new_folder
    from hybridlab.data.calibration import check_tokens, load_calibration, load_token_array
    from hybridlab.model.checks import check_model, check_seq_len
    from hybridlab.model.loading import load_model, resolve_model_dir
    from hybridlab.study.run import publish, run_study

    settings = settings_from_command(args)
    model_dir = resolve_model_dir(args.model)  # an unknown model fails here, before any work
    demo = args.model == "demo"
    for option, value in (("--data", args.data), ("--val", args.val), ("--calib", args.calib)):
        if value is None and not demo:
            raise ValueError(f"{option} is required for models other than the demo")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise ValueError(f"--threads must be between 1 and 1024, got {args.threads}")
    check_new_folder(args.out, "--out", may_exist=True)  # an existing study folder is resumed
    if args.docs:
        check_new_folder(args.docs, "--docs", may_exist=True)
    description = check_model(args.model, args.trust_remote_code)  # config, family, weight headers
    check_seq_len(description.config, settings.seq_len, "--seq-len")
    vocab = description.widths.vocab_size
    for value, demo_file in ((args.data, DEMO_TRAIN), (args.val, DEMO_VAL)):
        check_tokens(value or "demo", vocab, demo_file)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_tokens = load_token_array(args.data or demo_dir() / DEMO_TRAIN, vocab_size=vocab).reshape(-1)
    val_tokens = load_token_array(args.val or demo_dir() / DEMO_VAL, vocab_size=vocab).reshape(-1)
    # float32: the study's losses are fp32, and CPUs without bf16 units run bf16 several times slower
    model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code, dtype=torch.float32)
    # the pool the seeds draw their calibration subsets from
    calib = load_calibration(args.calib or "demo", tokenizer, settings.calib_pool, settings.seq_len, vocab)
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
    for row in result.comparisons[result.comparisons["stage"] == "distilled"].to_dict("records"):
        print(f"{row['comparison']}: {row['verdict']}")
    print(f"wall time {result.summary['wall_s'] / 60:.1f} min")
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
