"""Run a computation in two (or more) gloo processes and collect what each rank computed: the
scaffolding of the tests that check a collective against one process on the whole batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

RankFn = Callable[[int, int], dict[str, torch.Tensor]]


def _worker(rank: int, fn: RankFn, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        state = fn(rank, world)
        save_file({k: v.contiguous() for k, v in state.items()}, f"{folder}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: RankFn, folder: Path, world: int = 2) -> list[dict[str, torch.Tensor]]:
    """fn(rank, world) -> tensors, run in `world` processes joined by gloo; each rank's tensors.
    fn must be a module-level function (the processes are spawned)."""
    mp.spawn(_worker, args=(fn, world, str(folder)), nprocs=world, join=True)
    return [load_file(str(Path(folder) / f"rank{r}.safetensors")) for r in range(world)]
