"""Cost of one distillation step versus its parts measured separately: a teacher forward
plus an ordinary student training step. Target: at most 1.10x.

All three run the same batch under bf16 autocast (the CPU default), timed in alternation.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks._common import device, interleaved_medians, teacher_model
from hybridlab import PruneSpec, prune
from hybridlab.training.distill import kd_loss

TARGET = 1.10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    dev = device()
    teacher, what = teacher_model()
    teacher.to(dev).requires_grad_(False)
    widths = teacher.config
    student = prune(
        teacher,
        PruneSpec(
            hidden_size=widths.hidden_size * 3 // 4,
            ffn_hidden_size=widths.intermediate_size // 2,
            mamba_num_heads=widths.mamba_num_heads // 2,
        ),
        ranking="random",
    ).to(dev)
    student.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    batch = torch.randint(
        0, teacher.config.vocab_size, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(0)
    ).to(dev)
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)

    def teacher_forward():
        with torch.no_grad(), autocast():
            return teacher(input_ids=batch).logits

    def optimizer_step(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def student_step():
        with autocast():
            logits = student(input_ids=batch).logits
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch[:, 1:].flatten())
        optimizer_step(loss)

    def distill_step():
        target = teacher_forward()
        with autocast():
            loss = kd_loss(student(input_ids=batch).logits, target)
        optimizer_step(loss)

    medians = interleaved_medians(
        {"teacher": teacher_forward, "student": student_step, "distill": distill_step}, dev, args.repeats
    )
    parts = medians["teacher"] + medians["student"]
    ratio = medians["distill"] / parts
    print(
        f"model: {what}; student {sum(p.numel() for p in student.parameters()):,} params; batch {args.batch_size} x {args.seq_len}; "
        f"device {dev}, {torch.get_num_threads()} threads"
    )
    print(f"teacher forward          {1000 * medians['teacher']:9.1f} ms")
    print(f"student step (CE loss)   {1000 * medians['student']:9.1f} ms")
    print(f"distillation step        {1000 * medians['distill']:9.1f} ms")
    print(
        f"ratio distill / (teacher + student) {ratio:6.3f}x   target <= {TARGET:.2f}x: {'met' if ratio <= TARGET else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
