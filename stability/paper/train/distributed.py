"""Devices and multi-GPU training: one process of a (possibly single-process) job.

Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is
initialized (NCCL on CUDA, gloo on CPU), each process takes ``batch_size / world_size``
samples per step (``batch_size`` is the global batch, 256 = 4 x 64 in the paper), the
model is wrapped in DDP, and BatchNorm keeps per-GPU batch statistics (no SyncBatchNorm),
as in the paper (footnote 4). Every rank records its own layers into
``part-XXXXX-rank{r}.parquet`` (with a ``rank`` column); rank 0 writes the history
(accuracies and losses summed over ranks), checkpoints and status. The test set is split
over the ranks by a DistributedSampler, which repeats a few samples to make equal shards.

``device="auto"`` is CUDA when available; under DDP CUDA means ``cuda:LOCAL_RANK``. Every
collective below is a no-op in a single-process job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Dist", "all_reduce", "barrier", "gather_objects", "init_distributed", "resolve_device"]


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) job.

    Attributes:
        rank: this process's rank (0: the one that writes shared files).
        world_size: number of processes.
        local_rank: the rank on this machine (its GPU index).
        owns_group: the process group was initialized by :func:`init_distributed` (and
            is to be destroyed by its caller).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``).

    NCCL when the run is on CUDA, gloo otherwise. A group that already exists is used
    as is (and not destroyed at the end).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    import torch.distributed as td

    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    owns = False
    if not td.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local)
        td.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    return Dist(td.get_rank(), td.get_world_size(), local, owns)


def resolve_device(spec: str, dist: Dist) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; under DDP CUDA means ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: an unparsable device, or CUDA asked for but unavailable.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"bad device {spec!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for but CUDA is not available")
        if dist.enabled or device.index is None:
            device = torch.device("cuda", dist.local_rank if dist.enabled else 0)
    return device


def barrier(dist: Dist) -> None:
    """Wait for every rank."""
    if dist.enabled:
        torch.distributed.barrier()


def all_reduce(tensor: torch.Tensor, dist: Dist, op: str = "sum") -> torch.Tensor:
    """``tensor`` summed (``op="sum"``) or maximized (``"max"``) over ranks, in place."""
    if dist.enabled:
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(tensor, op=ops[op])
    return tensor


def gather_objects(obj: Any, dist: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable objects)."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out
