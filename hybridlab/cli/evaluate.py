"""`hybridlab eval` (validation loss, lm-eval tasks) and `hybridlab bench` (latency, memory).

Both run as recorded jobs of the experiment store (hybridlab.cli.recorded), so their
numbers appear in `hybridlab jobs list` and the dashboard's comparison views."""

from __future__ import annotations

import argparse
import json

from hybridlab.cli.options import add_options, job_spec_from_args
from hybridlab.cli.recorded import add_workspace_option, run_recorded
from hybridlab.jobs.kinds.bench import BenchSettings
from hybridlab.jobs.kinds.common import JobOptions, ModelInput
from hybridlab.jobs.kinds.evaluate import EvalSettings


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="validation loss / perplexity and lm-eval accuracy")
    add_options(ev, ModelInput)
    add_options(ev, EvalSettings)
    _common(ev)
    ev.set_defaults(func=_eval)

    bench = subparsers.add_parser("bench", help="prefill latency, decode throughput and peak memory")
    add_options(bench, ModelInput)
    add_options(bench, BenchSettings)
    _common(bench)
    bench.set_defaults(func=_bench)


def _common(parser: argparse.ArgumentParser) -> None:
    add_options(parser, JobOptions)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_workspace_option(parser)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device: use --device cpu")
    return device


def _check_model_and_device(args) -> None:
    """Before a job is recorded: a missing model folder or an absent GPU is one clear line."""
    from hybridlab.model.loading import resolve_model_dir

    resolve_model_dir(args.model)
    _device(args.device)


def _eval(args: argparse.Namespace) -> int:
    from hybridlab.measure.evaluate import VAL_LOSS_TASK
    from hybridlab.measure.lmeval.harness import prepare_task_manager

    tasks = job_spec_from_args(args, EvalSettings)["tasks"]
    if not tasks:
        raise ValueError("--tasks is empty: pass e.g. --tasks val_loss,continuation_mc")
    _check_model_and_device(args)  # a missing model fails first
    lm_tasks = [name for name in tasks if name != VAL_LOSS_TASK]
    if lm_tasks:
        prepare_task_manager(lm_tasks, args.include_path)  # unknown names fail here, before a job is recorded
    if VAL_LOSS_TASK in tasks and args.val_tokens is None and args.model != "demo":
        raise ValueError("val_loss needs validation tokens: pass --val-tokens FILE.npy")
    spec = job_spec_from_args(args, ModelInput, EvalSettings, JobOptions)
    report = run_recorded("eval", spec, args)["tasks"]
    if args.json:
        print(json.dumps({"model": str(args.model), "tasks": report}, indent=2))
        return 0
    for task, metrics in report.items():
        shown = "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in metrics.items()
            if not isinstance(v, list)  # per-window losses: in --json and the store, not one line
        )
        print(f"{task:<20} {shown}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    _check_model_and_device(args)
    spec = job_spec_from_args(args, ModelInput, BenchSettings, JobOptions)
    result = run_recorded("bench", spec, args)
    report = {"model": str(args.model), **{k: v for k, v in result.items() if k != "run_id"}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    decode = report["decode_tokens_per_s"]
    print(
        f"{report['model']} on {report['device_name']} ({report['dtype']}), batch {args.batch_size}, "
        f"prompt {args.seq_len}, {args.new_tokens} new tokens, mamba kernels "
        f"{'on' if report['mamba_kernels']['in_use'] else 'off'}"
    )
    print(f"prefill   {report['prefill_ms']:.2f} ms ({report['prefill_tokens_per_s']:.0f} tokens/s)")
    print(f"decode    {'n/a' if decode is None else f'{decode:.1f} tokens/s'}")
    paired = report.get("paired")
    if paired:  # timed in pairs with its reference (hybridlab.measure.paired)
        p = paired["prefill"]
        print(
            f"speedup   {p['speedup']:.3f}x prefill over {report['reference_model']} "
            f"({paired['level']:.0%} interval {p['speedup_low']:.3f}-{p['speedup_high']:.3f}, {paired['rounds']} "
            f"paired rounds; {p['model_ms']:.2f} vs {p['reference_ms']:.2f} ms)"
        )
    peak = report["peak_memory_bytes"]
    print(
        f"memory    peak {'n/a' if peak is None else f'{peak / 2**20:.1f} MiB'} "
        f"(+{(report['peak_memory_delta_bytes'] or 0) / 2**20:.1f} MiB during generate; {report['memory_measure']})"
    )
    if report.get("analytic") and "flops_per_token" in report["analytic"]:
        a = report["analytic"]
        print(
            f"analytic  {a['params']:,} params, {a['flops_per_token']:.3g} FLOPs/token, "
            f"state {a['state_bytes'] / 2**20:.2f} MiB"
        )
    return 0
