"""DistributedDataParallel plumbing: the process group under ``torchrun``, and gathering across ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_spec: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank)


def close_distributed(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_batch(local: torch.Tensor, d: Dist) -> torch.Tensor:
    """All ranks' rows, concatenated; gradients flow only into this rank's slice."""
    if not d.enabled:
        return local
    parts = [torch.empty_like(local) for _ in range(d.world)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[d.rank] = local
    return torch.cat(parts)


def gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of a scalar tensor over all ranks (itself when not distributed)."""
    if d.enabled:
        dist.all_reduce(value)
        value /= d.world
    return value


def broadcast_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Every rank's buffers (BatchNorm running statistics) := rank 0's, the ones its checkpoint saves.

    DDP copies rank 0's buffers to the others before each training forward, but each rank's own last batch
    then moves its statistics again; validating without this would embed each rank's shard with other statistics.
    """
    if d.enabled:
        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shard(n: int, d: Dist) -> list[int]:
    """This rank's indices of ``range(n)``: every ``world``-th, starting at ``rank``."""
    return list(range(d.rank, n, d.world))
