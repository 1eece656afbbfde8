"""Write a random-weight checkpoint of any transformers config, shard by shard, never whole in memory.

    python -m benchmarks.random_checkpoint --reference nemotron-h-8b --out /tmp/nemotron-h-8b-random

The model is built on the meta device; each shard's modules are materialised on the CPU, given the
model's own initialisation (`_init_weights`: A_log, D and dt_bias as a trained Mamba2 starts, norms at
one), cast to the checkpoint dtype, written, and freed. Peak memory is about one shard.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hybridlab.core.atomic import atomic_directory
from hybridlab.model.weight_files import ShardWriter, stored_tensors

DEFAULT_SHARD_BYTES = 2 * 1024**3


def write_random_checkpoint(
    config,
    out: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    seed: int = 0,
) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    stored = {id(module) for module, _ in stored_tensors(model).values()}
    writer = ShardWriter(model, max_shard_bytes)
    with atomic_directory(out) as tmp:
        writer.open(tmp)
        for module in model.modules():
            if id(module) in stored:
                module.to_empty(device="cpu", recurse=False)
                model._init_weights(module)
                writer.add_modules([module], recurse=False)
                module.to_empty(device="meta", recurse=False)  # free it again
        writer.close()
        config.dtype = dtype
        config.save_pretrained(tmp)
    return Path(out).expanduser().resolve()


def main() -> None:
    from hybridlab.model.reference import REFERENCE_CONFIGS, reference_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", choices=sorted(REFERENCE_CONFIGS), default="nemotron-h-8b")
    parser.add_argument("--out", required=True)
    parser.add_argument("--shard-gb", type=float, default=2.0)
    args = parser.parse_args()
    start = time.perf_counter()
    out = write_random_checkpoint(
        reference_config(args.reference), args.out, max_shard_bytes=int(args.shard_gb * 1024**3)
    )
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(json.dumps({"out": str(out), "bytes": size, "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
