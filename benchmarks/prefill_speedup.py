"""Prefill speedup of a ~50%-parameter student over its teacher, next to their FLOP ratio.

The student is the teacher pruned (random ranking: the weights do not change the timing) to
the uniform width shrink whose parameter count is closest to half. Teacher and student
prefill are timed in alternation in one run; the analytic FLOPs come from hybridlab.model.sizes.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import device, interleaved_medians, teacher_model
from hybridlab import PruneSpec, estimate_sizes, prune
from hybridlab.families import family_for


def _round_down(value: float, multiple: int) -> int:
    return max(multiple, int(value) // multiple * multiple)


def half_spec(config, target: float = 0.5) -> PruneSpec:
    """Shrink hidden, FFN and Mamba heads by one factor r, chosen so params ~= target * teacher."""
    widths = family_for(config).widths(config)
    teacher_params = estimate_sizes(config).params
    best, best_gap = None, float("inf")
    for step in range(32, 65):
        r = step / 64
        spec = PruneSpec(
            hidden_size=_round_down(widths.hidden_size * r, 16),
            ffn_hidden_size=_round_down(widths.ffn_hidden_size * r, 16) if widths.ffn_hidden_size else None,
            mamba_num_heads=_round_down(widths.mamba_num_heads * r, widths.mamba_n_groups)
            if widths.mamba_num_heads
            else None,
        )
        try:
            params = estimate_sizes(config, spec).params
        except ValueError:
            continue
        gap = abs(params / teacher_params - target)
        if gap < best_gap:
            best, best_gap = spec, gap
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="256,1024")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    dev = device()
    teacher, what = teacher_model()
    teacher.to(dev)
    spec = half_spec(teacher.config)
    student = prune(teacher, spec, ranking="random").eval()
    t_params = sum(p.numel() for p in teacher.parameters())
    s_params = sum(p.numel() for p in student.parameters())
    print(
        f"teacher: {what}, {t_params:,} params; student: {spec.to_dict()}, {s_params:,} params "
        f"({s_params / t_params:.1%}); device {dev}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'batch':>5} {'seq':>6} {'teacher ms':>11} {'student ms':>11} {'speedup':>8} "
        f"{'FLOP ratio':>10} {'speedup / FLOP-predicted':>25}"
    )
    for seq_len in (int(s) for s in args.seq_lens.split(",")):
        ids = torch.randint(
            0, teacher.config.vocab_size, (args.batch_size, seq_len), generator=torch.Generator().manual_seed(0)
        ).to(dev)  # [B, T]
        with torch.inference_mode():
            medians = interleaved_medians(
                {
                    "teacher": lambda ids=ids: teacher(input_ids=ids, use_cache=True, logits_to_keep=1),
                    "student": lambda ids=ids: student(input_ids=ids, use_cache=True, logits_to_keep=1),
                },
                dev,
                repeats=args.repeats,
            )
        flops_t = estimate_sizes(teacher.config, seq_len=seq_len).flops_per_token
        flops_s = estimate_sizes(teacher.config, spec, seq_len=seq_len).flops_per_token
        speedup, predicted = medians["teacher"] / medians["student"], flops_t / flops_s
        print(
            f"{args.batch_size:>5} {seq_len:>6} {1000 * medians['teacher']:>11.1f} {1000 * medians['student']:>11.1f} "
            f"{speedup:>7.2f}x {flops_s / flops_t:>10.3f} {speedup / predicted:>25.2f}"
        )
    print(
        "speedup = teacher / student prefill latency (median, interleaved); FLOP-predicted speedup = "
        "teacher FLOPs / student FLOPs per token (hybridlab.model.sizes); 1.00 in the last column means "
        "latency scales exactly with FLOPs."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
