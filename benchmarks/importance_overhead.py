"""Cost of the activation-importance pass versus a plain forward over the same batches.

Target: at most 1.10x. Both run the same calibration batches in eval mode without gradients,
timed in alternation in one run. The importance pass uses layer_metric=None (width axes plus
the free block-cosine score); drop-one-layer metrics ("kl", "loss") cost one extra forward
per layer by design and are reported separately for reference.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import device, interleaved_medians, teacher_model
from hybridlab import estimate_importance

TARGET = 1.10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    dev = device()
    model, what = teacher_model()
    model.to(dev)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), generator=generator).to(dev)
        for _ in range(args.batches)
    ]  # each [B, T]

    def plain_forward():
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch, use_cache=False)

    def importance_pass():
        estimate_importance(model, batches, layer_metric=None, progress=lambda *_: None)

    medians = interleaved_medians({"forward": plain_forward, "importance": importance_pass}, dev, args.repeats)
    ratio = medians["importance"] / medians["forward"]
    print(
        f"model: {what}; {args.batches} batches of {args.batch_size} x {args.seq_len} tokens; device {dev}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"plain forward     {1000 * medians['forward']:9.1f} ms")
    print(f"importance pass   {1000 * medians['importance']:9.1f} ms   (layer_metric=None)")
    print(f"ratio             {ratio:9.3f}x   target <= {TARGET:.2f}x: {'met' if ratio <= TARGET else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
