"""The processes of one indexing job: one alone, or ``torchrun``'s ranks joined in a gloo group (barriers and
gathering small Python objects only; every rank writes its own shards, so no embeddings travel)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

RANK_TIMEOUT = timedelta(days=7)  # a rank may wait this long at a barrier for the others to finish their files


@dataclass(frozen=True)
class Ranks:
    """Which process this is: ``rank`` of ``world`` (0 writes the catalogue and prints), ``local_rank`` on its
    machine (its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    main = property(lambda self: self.rank == 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (``[obj]`` alone)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def join_ranks() -> Ranks:
    """The ranks ``torchrun`` started (``WORLD_SIZE`` > 1), joined in a gloo group; else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=RANK_TIMEOUT)
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
