"""DataLoaders set up the same way for every experiment, distributed or not."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from stability.paper.data.arrays import check_count
from stability.paper.data.datasets import TensorImageDataset

__all__ = ["default_num_workers", "make_loader"]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers(dataset: Dataset | None = None) -> int:
    """Worker processes for :func:`make_loader` when none are given.

    0 for :class:`TensorImageDataset` (its batched tensor transforms take microseconds,
    workers would only add start-up cost); otherwise the usable CPUs divided among the
    local processes (``$LOCAL_WORLD_SIZE``), minus one for the main process, at most 8.
    """
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    if isinstance(base, TensorImageDataset):
        return 0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(8, _usable_cpus() // local - 1))


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    distributed: bool | None = None,
    *,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> DataLoader:
    """A DataLoader set up the same way for every experiment.

    * shuffling (training) from a :class:`torch.Generator` seeded with ``seed``, so two
      loaders with the same seed give the same order (and, through the per-worker seeds
      drawn from it, the same augmentations for the same ``num_workers``);
    * ``drop_last`` for training, every sample for testing;
    * pinned memory when the target device is CUDA (``device=None``: when CUDA exists);
    * a :class:`~torch.utils.data.DistributedSampler` (``shuffle=train``, seeded,
      ``drop_last=train``) when ``distributed`` is true, or when it is ``None`` and a
      process group is initialized or ``num_replicas`` is given. Call
      ``loader.sampler.set_epoch(epoch)`` every epoch to reshuffle. ``batch_size`` is then
      per process. Note that a distributed test loader pads to equal shards by repeating
      samples.

    Args:
        dataset: any map-style dataset.
        batch_size: samples per batch (per process when distributed).
        train: shuffle and drop the last incomplete batch.
        seed: seeds the shuffling generator and the distributed sampler.
        num_workers: worker processes; ``None`` picks :func:`default_num_workers`, 0 loads
            in the main process.
        device: where the batches will go, only used to decide on pinned memory.
        distributed: use a DistributedSampler (see above).
        num_replicas: world size for the sampler (default: from the process group).
        rank: this process's rank for the sampler (default: from the process group).

    Returns:
        The :class:`~torch.utils.data.DataLoader`.
    """
    batch_size = check_count(batch_size, "batch_size")
    if num_workers is None:
        num_workers = default_num_workers(dataset)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if device is None:
        pin = torch.cuda.is_available()
    else:
        pin = torch.device(device).type == "cuda"
    if distributed is None:
        distributed = num_replicas is not None or rank is not None or _dist_initialized()
    elif not distributed and (num_replicas is not None or rank is not None):
        raise ValueError("num_replicas/rank given but distributed=False")
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=train, seed=seed,
            drop_last=train,
        )  # fmt: skip
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=train,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
