"""Data-parallel training: one process per device, launched by torchrun.

    torchrun --nproc_per_node 4 -m edvae train --config configs/cifar10-edvae.yaml --out runs/c10

Each process reads the same global batch order and trains on its own contiguous slice of every
batch, so the global batch size is `train.batch_size` whatever the number of processes; DDP
averages the gradients. Rank 0 alone writes the run folder (config, metrics, checkpoints, model,
evaluation); every rank reads a checkpoint when resuming. Without torchrun's environment
(WORLD_SIZE unset or 1) nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..distributed import all_reduce_sum_
from ..errors import EdvaeError


@dataclass
class Group:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch."""
        if not self.active:
            return indices
        n = indices.shape[0] // self.world
        return indices[self.rank * n:(self.rank + 1) * n]

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of `tensor`, in place; returns it."""
        return all_reduce_sum_(tensor).div_(self.world)


def start(device: torch.device, batch_size: int) -> tuple[Group, torch.device]:
    """Join torchrun's process group when there is one; returns it and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group(), device
    if batch_size % world:
        raise EdvaeError(f"train.batch_size {batch_size} is not divisible by the {world} processes")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise EdvaeError(f"process {local_rank} of this machine has no CUDA device ({visible} visible): "
                             f"start at most {visible} processes per machine, or train on --device cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(rank, world), device


def stop(group: Group) -> None:
    """Leave the process group together. A rank that tears gloo down while a peer is still
    finishing the last barrier can make that peer abort (a SIGABRT seen once, under load, after a
    run had written everything): after the barrier every rank also checks in at the launcher's
    key-value store and waits for all the others there (the store's timeout applies) before
    the connections are closed."""
    if group.active and dist.is_initialized():
        dist.barrier()
        store = dist.group.WORLD.get_group_store()  # the launcher's store; a public, undocumented method
        store.set(f"edvae/left-barrier/{group.rank}", "1")
        store.wait([f"edvae/left-barrier/{r}" for r in range(group.world)])
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, group: Group, device: torch.device) -> torch.nn.Module:
    if not group.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
