"""How much of the pruning loss a short distillation recovers, for a 50%-parameter student
of the demo teacher (the issue's acceptance check, and the README's numbers).

The student is the best zero-shot candidate at 50% of the teacher's parameters (a small
search without distillation). It is then distilled once for the largest budget, with
validation along the way; each row reports the loss after that many tokens of the run.
Recovered = (loss before - loss after) / (loss before - teacher loss).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from hybridlab.compression.importance import estimate_importance
from hybridlab.core.paths import demo_dir
from hybridlab.data.calibration import batched
from hybridlab.demo.load import load_demo
from hybridlab.measure.evaluate import validation_loss
from hybridlab.search.run import SearchSettings, search
from hybridlab.search.space import SearchSpace
from hybridlab.training.distill import DistillSettings, distill, parse_token_count


def teacher_training_tokens() -> int | None:
    for name in ("train_summary.json",):
        path = demo_dir() / name
        if path.exists():
            return json.loads(path.read_text()).get("tokens_seen")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="50%")
    parser.add_argument("--tokens", default="256k", help="distillation budget")
    parser.add_argument("--evals", type=int, default=4, help="validation points along the run")
    parser.add_argument("--eval-tokens", type=int, default=65_536)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)

    demo = load_demo()
    teacher, val = demo.model, demo.val
    train = demo.train_sample
    scores = estimate_importance(teacher, batched(demo.calib[:64], 8), layer_metric="kl", progress=lambda *_: None)
    ranked = search(
        teacher,
        demo.tokenizer,
        train,
        val,
        SearchSettings(
            target_params=args.target,
            max_candidates=8,
            top_k=0,
            distill_tokens=0,
            measure_latency=False,
            eval_tokens=16_384,
            space=SearchSpace(),
        ),
        scores=scores,
        progress=lambda *_: None,
    )
    student, chosen = ranked.best_model, ranked.best
    teacher_loss = validation_loss(teacher, val, max_tokens=args.eval_tokens)["loss"]
    before = validation_loss(student, val, max_tokens=args.eval_tokens)["loss"]

    budget = parse_token_count(args.tokens)
    settings = DistillSettings(tokens=budget, lr=args.lr, eval_tokens=args.eval_tokens, checkpoint_every=10**9)
    settings.eval_every = max(1, settings.total_steps // args.evals)
    with tempfile.TemporaryDirectory() as run_dir:
        distill(student, teacher, train, val, settings, run_dir, progress=lambda *_: None)
        curve = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl") if '"eval"' in line]

    pretrain = teacher_training_tokens()
    teacher_params = sum(p.numel() for p in teacher.parameters())
    print(
        f"student: {chosen['name']} ({chosen['strategy']}), {chosen['params']:,} of {teacher_params:,} parameters "
        f"({chosen['params'] / teacher_params:.1%}); {torch.get_num_threads()} threads"
    )
    print(f"teacher validation loss {teacher_loss:.4f}; pruned student before distillation {before:.4f}")
    print(f"{'KD tokens':>10} {'% of teacher tokens':>20} {'student loss':>13} {'gap recovered':>14}")
    for point in curve:
        share = f"{100 * point['tokens'] / pretrain:.1f}%" if pretrain else "n/a"
        recovered = (before - point["val_loss"]) / (before - teacher_loss)
        print(f"{point['tokens']:>10,} {share:>20} {point['val_loss']:>13.4f} {recovered:>14.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
