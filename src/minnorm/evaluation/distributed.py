"""Sharding an evaluation over ``torchrun`` ranks with ``torch.distributed``.

Under ``torchrun --nproc_per_node K`` (``WORLD_SIZE`` > 1 in the environment) the process group
is started here if the caller has not (gloo on CPU, nccl on CUDA); batches are dealt
round-robin and the per-batch records are gathered as Python objects, so the ranks need no
shared file system to merge (resuming does need the output folder to be shared).
"""
from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import torch
import torch.distributed as dist


class Group:
    def __init__(self, rank: int = 0, world: int = 1, owned: bool = False):
        self.rank, self.world, self.owned = rank, world, owned

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated, on every rank."""
        if self.world == 1:
            return list(items)
        boxes: list[Any] = [None] * self.world
        dist.all_gather_object(boxes, list(items))
        return [item for box in boxes for item in box]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device) -> Group:
    """The process group to shard over: the caller's, one started from torchrun's environment,
    or a single process."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Group()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device.type == "cuda" else "gloo"
    # Long evaluations leave ranks waiting for each other at the end: allow for it.
    dist.init_process_group(backend, timeout=_dt.timedelta(hours=12))
    return Group(dist.get_rank(), dist.get_world_size(), owned=True)
