"""Predicted against measured speedup: the latency model's error on typical candidates of the demo teacher.

Calibrates the latency model on this device (hybridlab.measure.latency_calibration, saved to a temporary
folder unless --save), then for ~6 candidates (depth-only, width-only and mixed near 50% of the
parameters, and a few others) predicts the prefill speedup and measures it in pairs with the teacher
(hybridlab.measure.bench.measure_paired: interleaved rounds, a 95% interval). The candidates are the
teacher pruned with random ranking: the weights do not change the timing. The goal: every predicted
speedup within 10% of the paired measurement; the FLOP ratio's error is printed next to it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks._common import device, teacher_model
from hybridlab import PruneSpec, estimate_sizes, prune
from hybridlab.families import describe
from hybridlab.measure.bench import measure_paired
from hybridlab.measure.latency_calibration import CalibrationSettings, calibrate, match_mamba_path
from hybridlab.measure.latency_model import save_latency_model

GOAL = 0.10


def _closest(description, specs, fraction: float) -> PruneSpec:
    total = estimate_sizes(description).params
    scored = []
    for spec in specs:
        try:
            scored.append((abs(estimate_sizes(description, spec).params / total - fraction), spec))
        except ValueError:
            continue
    return min(scored, key=lambda pair: pair[0])[1]


def _width(widths, r: float, mamba: bool = True, **extra) -> PruneSpec:
    down = lambda value, step: max(step, int(value * r) // step * step)  # noqa: E731
    return PruneSpec(
        hidden_size=down(widths.hidden_size, 16),
        ffn_hidden_size=down(widths.ffn_hidden_size, 16) if widths.ffn_hidden_size else None,
        mamba_num_heads=down(widths.mamba_num_heads, widths.mamba_n_groups)
        if mamba and widths.mamba_num_heads
        else None,
        **extra,
    )


def candidates(description) -> dict[str, PruneSpec]:
    """Depth-only, width-only and mixed near 50% of the parameters; depth and width near 75%; Mamba heads halved."""
    w = description.widths
    layers = w.num_layers
    depth = [PruneSpec(num_layers=n) for n in range(1, layers)]
    width = [_width(w, s / 64) for s in range(20, 64)]
    mixed = [_width(w, s / 64, num_layers=round(0.8 * layers)) for s in range(20, 64)]
    return {
        "depth 50%": _closest(description, depth, 0.5),
        "width 50%": _closest(description, width, 0.5),
        "mixed 50%": _closest(description, mixed, 0.5),
        "depth 75%": _closest(description, depth, 0.75),
        "width 75%": _closest(description, width, 0.75),
        "mamba heads 1/2": PruneSpec(
            mamba_num_heads=max(w.mamba_n_groups, w.mamba_num_heads // 2 // w.mamba_n_groups * w.mamba_n_groups)
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8, help="paired rounds per candidate")
    parser.add_argument("--repeats", type=int, default=CalibrationSettings().repeats, help="calibration rounds")
    parser.add_argument("--save", action="store_true", help="keep the calibration in the workspace")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine, fewer threads than free cores keep the rounds steady)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    dev = device()
    teacher, what = teacher_model()
    teacher.to(dev)
    description = describe(teacher)
    print(f"teacher: {what}; device {dev}, {torch.get_num_threads()} threads, seq_len {args.seq_len}")
    start = time.perf_counter()
    latency = calibrate(teacher, CalibrationSettings(seq_lens=sorted({64, args.seq_len}), repeats=args.repeats))
    folder = None if args.save else tempfile.mkdtemp(prefix="hybridlab-latency-")
    path = save_latency_model(latency, folder)
    print(f"calibrated in {time.perf_counter() - start:.0f} s -> {path} ({latency.label})")
    teacher_flops = estimate_sizes(description, seq_len=args.seq_len).flops_per_token
    print(
        f"{'candidate':<16} {'params':>7} {'measured':>9} {'95% interval':>15} {'predicted':>10} {'error':>7} "
        f"{'inside':>7} {'FLOP ratio':>10} {'error':>7}"
    )
    errors, flop_errors, insides = [], [], []
    for name, spec in candidates(description).items():
        student = match_mamba_path(teacher, prune(teacher, spec, ranking="random", description=description).eval())
        paired = measure_paired(student, teacher, seq_len=args.seq_len, rounds=args.rounds, warmup=1, decode=False)
        measured = paired["paired"]["prefill"]
        # the layers prune really dropped (random ranking), not the evenly spread plan
        kept = describe(student).widths
        predicted = (
            latency.predict_ms(description.widths, args.seq_len)["total_ms"]
            / latency.predict_ms(kept, args.seq_len)["total_ms"]
        )
        flops = teacher_flops / estimate_sizes(description, spec, seq_len=args.seq_len).flops_per_token
        error, flop_error = predicted / measured["speedup"] - 1, flops / measured["speedup"] - 1
        inside = measured["speedup_low"] <= predicted <= measured["speedup_high"]
        insides.append(inside)
        errors.append(abs(error))
        flop_errors.append(abs(flop_error))
        params = estimate_sizes(description, spec).params / estimate_sizes(description).params
        interval = f"{measured['speedup_low']:.2f}-{measured['speedup_high']:.2f}"
        print(
            f"{name:<16} {params:>7.1%} {measured['speedup']:>8.2f}x {interval:>15} {predicted:>9.2f}x {error:>+7.1%} "
            f"{'yes' if inside else 'no':>7} {flops:>9.2f}x {flop_error:>+7.1%}"
        )
        del student
    print(
        f"largest error: latency model {max(errors):.1%}, FLOP ratio {max(flop_errors):.1%} "
        f"(goal: within {GOAL:.0%}: {'met' if max(errors) <= GOAL else 'NOT met'}); "
        f"{sum(insides)} of {len(insides)} predictions inside the measured 95% interval"
    )
    print(
        "error = predicted / measured speedup - 1. The measured speedup is itself uncertain (its interval): on a "
        "busy machine, rerun with more --rounds before reading an error larger than the interval's half-width."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
