"""Data-parallel training on torch.distributed, for runs launched by `torchrun`.

Every rank computes the same deterministic global batch and keeps its own slice, so a
run on N ranks sees the same data as one process at the same global batch size; DDP
averages the gradients (gloo on CPU, NCCL on GPU). FSDP2 (`fully_shard`) shards the
student when it does not fit one device: HYBRIDLAB_FSDP=1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch [B, ...]."""
        if self.world == 1:
            return batch
        if len(batch) % self.world:
            raise ValueError(f"global batch {len(batch)} does not split evenly over {self.world} ranks")
        per_rank = len(batch) // self.world
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]


def setup() -> Dist:
    """Join the process group torchrun describes in the environment, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank=rank, world=world, device=device, fsdp=os.environ.get("HYBRIDLAB_FSDP") == "1")


def wrap(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    model.to(dist.device)
    if dist.world == 1:
        return model
    if dist.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.modules():
            if type(block).__name__.endswith("Block"):  # one shard unit per layer
                fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


def mean_across_ranks(values: dict[str, float], dist: Dist) -> dict[str, float]:
    """Average logged metrics over ranks, so rank 0 logs the global batch's values."""
    if dist.world == 1:
        return values
    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(packed)
    return dict(zip(values, (packed / dist.world).tolist()))


def unsharded(model: torch.nn.Module, dist: Dist, model_class: type) -> torch.nn.Module | None:
    """A plain CPU copy of an FSDP-sharded model on rank 0 (None elsewhere); the model itself otherwise.
    Gathering is a collective: every rank must call this."""
    if not dist.fsdp or dist.world == 1:
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist.is_main:
        return None
    with torch.device("meta"):
        plain = model_class(model.config)  # fully_shard swapped the instance's class
    plain.load_state_dict(state, assign=True)
    return plain


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch_dist.barrier()
