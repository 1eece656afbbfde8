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
from hybridlab.model.weight_files import plan_shards, write_sharded

DEFAULT_SHARD_BYTES = 2 * 1024**3


def write_random_checkpoint(
    config,
    out: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    seed: int = 0,
) -> Path:
    from transformers import AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    torch.manual_seed(seed)
    config.dtype = dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    owners = _owners(model)  # tensor name -> (module, attribute, numel); tied copies left out, as save_pretrained does
    element = torch.empty((), dtype=dtype).element_size()
    sizes = [(name, numel * element) for name, (_, _, numel) in owners.items()]
    modules = dict(model.named_modules())

    def make_shard(names: list[str]) -> dict[str, torch.Tensor]:
        out_tensors = {}
        for module_name in dict.fromkeys(owners[n][0] for n in names):
            module = modules[module_name]
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
            for attr, tensor in list(module.named_parameters(recurse=False)) + list(
                module.named_buffers(recurse=False)
            ):
                full = f"{module_name}.{attr}" if module_name else attr
                if full in names:
                    out_tensors[full] = tensor.detach().to(dtype).clone()
            module.to_empty(device="meta", recurse=False)  # free it again
        return revert_weight_conversion(model, out_tensors)  # the names save_pretrained writes (NemotronH: backbone.*)

    with atomic_directory(out) as tmp:
        config.save_pretrained(tmp)
        write_sharded(tmp, plan_shards(sizes, max_shard_bytes), make_shard)
    return Path(out).expanduser().resolve()


def _owners(model) -> dict[str, tuple[str, str, int]]:
    persistent = set(model.state_dict())
    owners: dict[str, tuple[str, str, int]] = {}
    for module_name, module in model.named_modules():
        for attr, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            full = f"{module_name}.{attr}" if module_name else attr
            if full in persistent:
                owners[full] = (module_name, attr, tensor.numel())
    tied = _tied_names(model)
    return {name: owner for name, owner in owners.items() if name not in tied}


def _tied_names(model) -> set[str]:
    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or output.weight is not embeddings.weight:
        return set()
    return {f"{name}.weight" for name, module in model.named_modules() if module is output}  # as save_pretrained does


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
