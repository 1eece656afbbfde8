"""`hybridlab importance`, `hybridlab prune` and `hybridlab plan`.

importance and prune run as recorded jobs of the experiment store (hybridlab.cli.recorded):
`hybridlab jobs list` and the dashboard see them; --out gets a copy of the job's artifact.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

from hybridlab.cli.options import add_options, job_spec_from_args
from hybridlab.cli.recorded import add_workspace_option, artifact_dir, copy_out, refuse_existing, run_recorded
from hybridlab.cli.spec_options import add_spec_options, spec_from_args
from hybridlab.core.atomic import atomic_file
from hybridlab.core.errors import UserError
from hybridlab.core.outputs import check_free_space, check_new_file, same_disk
from hybridlab.jobs.kinds.common import Calibration, JobOptions, ModelInput
from hybridlab.jobs.kinds.prune import PruneOptions
from hybridlab.jobs.kinds.source_model import Streaming


def register(sub) -> None:
    p = sub.add_parser("importance", help="score every prunable unit on calibration data")
    add_options(p, ModelInput)
    add_options(p, JobOptions)
    add_options(p, Calibration)
    add_options(p, Streaming)
    p.add_argument("--out", required=True, help="folder for the scores (safetensors + JSON)")
    p.add_argument("--csv", default=None, help="also write the tidy score table as CSV")
    add_workspace_option(p)
    p.set_defaults(func=run_importance)

    p = sub.add_parser("prune", help="prune a model to a target architecture")
    add_options(p, ModelInput)
    add_options(p, JobOptions)
    add_options(p, Calibration)
    add_spec_options(p)
    add_options(p, PruneOptions)
    add_options(p, Streaming)
    p.add_argument("--out", required=True, help="folder for the pruned Hugging Face model")
    add_workspace_option(p)
    p.set_defaults(func=run_prune)

    p = sub.add_parser("plan", help="sizes of a model and of a pruning plan, without building it")
    p.add_argument("--model", required=True, help="'demo', a model directory, or a reference config (nemotron-h-8b)")
    add_spec_options(p)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=run_plan)


def _check_model_and_calib(args, needs_calib: bool = True) -> None:
    """Cheap checks with the option names a user typed, before any job is recorded."""
    from hybridlab.model.loading import resolve_model_dir

    resolve_model_dir(args.model)  # a missing folder fails here with a clear message
    if needs_calib and args.calib is None and args.model != "demo":
        raise ValueError("--calib is required for models other than the demo (a .npy token array or text files)")


def run_importance(args) -> int:
    from hybridlab import ImportanceScores

    refuse_existing(args.out)
    if args.csv:
        check_new_file(args.csv, "--csv")
        if Path(args.csv).expanduser().resolve() == Path(args.out).expanduser().resolve():
            raise UserError(f"--csv {args.csv} is the --out folder; give the CSV its own path")
    _check_model_and_calib(args)
    result = run_recorded("importance", job_spec_from_args(args, ModelInput, Calibration, Streaming, JobOptions), args)
    source = artifact_dir(result, args)
    scores = ImportanceScores.load(source)
    frame = scores.to_frame()
    # Both outputs or neither: the CSV goes to a temporary sibling first, is renamed into place
    # once --out is complete, and is removed if copying --out fails.
    with atomic_file(args.csv) if args.csv else nullcontext() as handle:
        if handle is not None:
            frame.to_csv(handle, index=False)
        out = copy_out(source, args.out)
    summary = frame.groupby("axis")["score"].agg(["count", "min", "median", "max"])
    print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    for metric, values in scores.layers.items():
        order = values.argsort().tolist()
        print(f"least important layers by {metric}: {order[:5]}")
    print(f"scores written to {out}")
    return 0


def run_prune(args) -> int:
    from hybridlab.core.paths import workspace_path
    from hybridlab.jobs.kinds.prune import check_architecture, pruned_bytes

    spec = spec_from_args(args)
    if spec.is_empty():
        raise ValueError("give at least one target size, e.g. --mamba-num-heads 96 or --num-layers 40")
    refuse_existing(args.out)
    description = check_architecture(args.model, spec.to_dict(), args.trust_remote_code, args.allow_pickle_weights)
    _check_model_and_calib(args, needs_calib=args.importance is None and args.ranking == "importance")
    job_spec = {
        **job_spec_from_args(args, ModelInput, PruneOptions, Calibration, Streaming, JobOptions),
        "spec": spec.to_dict(),
    }
    # the job writes its artifact in the workspace (checked by the job), then it is copied to --out
    need = pruned_bytes(job_spec, description)
    if same_disk(args.out, workspace_path(args.workspace)):
        check_free_space(args.out, 2 * need, what="the pruned checkpoint and its copy in the workspace")
    else:
        check_free_space(args.out, need, what="the pruned checkpoint")
    result = run_recorded("prune", job_spec, args)  # an impossible spec is refused before any model is loaded
    out = copy_out(artifact_dir(result, args), args.out)
    before, after = result["parent_params"], result["params"]
    print(f"parameters: {before:,} -> {after:,} ({after / before:.1%})")
    before, after = result["parent_active_params"], result["active_params"]
    if before != result["parent_params"]:
        print(f"active parameters per token: {before:,} -> {after:,} ({after / before:.1%})")
    print(f"layers: {result['parent_num_layers']} -> {result['num_layers']}")
    print(f"pruned model written to {out}")
    return 0


def _plan_config(ref: str, trust_remote_code: bool):
    from hybridlab.model.reference import REFERENCE_CONFIGS, reference_config

    if ref in REFERENCE_CONFIGS:
        return reference_config(ref)
    from hybridlab.model.checks import describe_config, read_config

    config = read_config(ref, trust_remote_code)
    describe_config(config)  # an unsupported family or layer type is one line, not a traceback in sizes
    return config


def run_plan(args) -> int:
    from hybridlab.core.settings import batch_count, sequence_length
    from hybridlab.model.sizes import estimate_sizes

    for flag, value, check in (
        ("--seq-len", args.seq_len, sequence_length),
        ("--batch-size", args.batch_size, batch_count),
    ):
        try:
            check(value)
        except ValueError as err:
            raise UserError(f"{flag}: {err}") from None
    config = _plan_config(args.model, args.trust_remote_code)
    spec = spec_from_args(args)
    base = estimate_sizes(config, None, args.seq_len, args.batch_size)
    planned = estimate_sizes(config, spec, args.seq_len, args.batch_size)
    from hybridlab.measure.latency_model import speedup_estimate

    speedup = speedup_estimate(config, spec, args.seq_len, args.batch_size)  # this device's latency model, else FLOPs
    if args.json:
        json.dump(
            {"spec": spec.to_dict(), "original": base.to_dict(), "pruned": planned.to_dict(), "speedup": speedup},
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    rows = [("parameters", f"{base.params:,}", f"{planned.params:,}", planned.params / base.params)]
    if base.active_params != base.params:  # a mixture of experts: what one token runs through
        rows.append(
            (
                "active parameters per token",
                f"{base.active_params:,}",
                f"{planned.active_params:,}",
                planned.active_params / base.active_params,
            )
        )
    rows += [
        (
            "GFLOPs per token",
            f"{base.flops_per_token / 1e9:.3f}",
            f"{planned.flops_per_token / 1e9:.3f}",
            planned.flops_per_token / base.flops_per_token,
        ),
        (
            f"state MiB @ {args.seq_len} tok x {args.batch_size}",
            f"{base.state_bytes / 2**20:.2f}",
            f"{planned.state_bytes / 2**20:.2f}",
            planned.state_bytes / max(base.state_bytes, 1),
        ),
    ]
    print(f"{'':34}{'original':>18}{'pruned':>18}{'ratio':>9}")
    for name, a, b, ratio in rows:
        print(f"{name:34}{a:>18}{b:>18}{ratio:>9.3f}")
    print("parameters by kind (pruned): " + ", ".join(f"{k} {v:,}" for k, v in planned.params_by_kind.items()))
    print(f"{'predicted speedup' if speedup['basis'] != 'FLOPs' else 'speedup (FLOPs)'}: {speedup['speedup']:.2f}x "
          f"prefill of {args.seq_len} tokens ({speedup['label']})")  # fmt: skip
    _print_memory(config, spec, args)
    return 0


def _print_memory(config, spec, args) -> None:
    """What each command needs for this model (bf16 weights, the defaults' calibration and batch sizes)."""
    from hybridlab.core.outputs import gib
    from hybridlab.families import describe
    from hybridlab.model.memory import available_bytes, memory_need
    from hybridlab.model.sizes import planned_widths

    description = describe(config)
    pruned = None if spec.is_empty() else planned_widths(description, spec)
    tokens, batch = 64 * 256, 8 * 256  # importance's defaults: 64 sequences of 256 tokens, batches of 8
    print(f"memory each command needs (bf16 weights; {gib(available_bytes())} free here):")
    for command, streamed in (("importance", False), ("importance", True), ("prune", False), ("prune", True)):
        need = memory_need(command, description, 2, streamed, tokens=tokens, batch_tokens=batch, pruned=pruned)
        print(f"  {need.describe()}")
    for command in ("distill", "eval", "bench"):
        print(f"  {memory_need(command, description, 2, batch_tokens=batch, pruned=pruned).describe()}")
