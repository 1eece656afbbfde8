"""`hybridlab eval` (validation loss, lm-eval tasks) and `hybridlab bench` (latency, memory).

Both run as recorded jobs of the experiment store (hybridlab.cli.recorded), so their
numbers appear in `hybridlab jobs list` and the dashboard's comparison views."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hybridlab.cli.recorded import add_workspace_option, run_recorded

DEFAULT_TASKS = "val_loss,continuation_mc"


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="validation loss / perplexity and lm-eval accuracy")
    ev.add_argument("--model", required=True, help="'demo' or a local Hugging Face model directory")
    ev.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help=f"comma-separated: val_loss, continuation_mc, YAML tasks under --include-path, or "
        f"standard lm-eval names (those need the network); default {DEFAULT_TASKS}",
    )
    ev.add_argument(
        "--val-tokens",
        default=None,
        help="1-D uint16 .npy of held-out tokens; default for --model demo: assets/demo/val.npy",
    )
    ev.add_argument("--seq-len", type=int, default=256, help="window length for val_loss")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-tokens", type=float, default=None, help="cap on tokens scored by val_loss, e.g. 2e5")
    ev.add_argument("--limit", type=float, default=None, help="items per lm-eval task (a fraction if < 1)")
    ev.add_argument("--include-path", default=None, help="folder of extra lm-eval task YAML files")
    _common(ev)
    ev.set_defaults(func=_eval)

    bench = subparsers.add_parser("bench", help="prefill latency, decode throughput and peak memory")
    bench.add_argument("--model", required=True, help="'demo' or a local Hugging Face model directory")
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--seq-len", type=int, default=256, help="prompt length for prefill")
    bench.add_argument("--new-tokens", type=int, default=32, help="tokens decoded with the cache (at least 2)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    bench.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    _common(bench)
    bench.set_defaults(func=_bench)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder")
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

    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not tasks:
        raise ValueError("--tasks is empty: pass e.g. --tasks val_loss,continuation_mc")
    _check_model_and_device(args)  # a missing model fails first
    lm_tasks = [name for name in tasks if name != VAL_LOSS_TASK]
    if lm_tasks:
        prepare_task_manager(lm_tasks, args.include_path)  # unknown names fail here, before a job is recorded
    if args.val_tokens is not None and not Path(args.val_tokens).exists():
        raise FileNotFoundError(f"--val-tokens {args.val_tokens} not found: pass a 1-D uint16 .npy token file")
    if VAL_LOSS_TASK in tasks and args.val_tokens is None and args.model != "demo":
        raise ValueError("val_loss needs validation tokens: pass --val-tokens FILE.npy")
    spec = {
        "model": args.model,
        "tasks": tasks,
        "val_tokens": args.val_tokens,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "max_tokens": None if args.max_tokens is None else int(args.max_tokens),
        "limit": args.limit,
        "include_path": args.include_path,
        "device": args.device,
        "trust_remote_code": args.trust_remote_code,
    }
    report = run_recorded("eval", spec, args)["tasks"]
    if args.json:
        print(json.dumps({"model": str(args.model), "tasks": report}, indent=2))
        return 0
    for task, metrics in report.items():
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        print(f"{task:<20} {shown}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    _check_model_and_device(args)
    spec = {
        "model": args.model,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "dtype": args.dtype,
        "device": args.device,
        "trust_remote_code": args.trust_remote_code,
    }
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
