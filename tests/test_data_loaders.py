"""Tests for stability.paper.data.loaders: seeded order, workers, distributed samplers,
pinned memory and the default worker count."""

from __future__ import annotations

import pytest
import torch
from data_support import isolate_paths, make_fashion

from stability.paper import data as D
from stability.paper.data import loaders


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    isolate_paths(tmp_path, monkeypatch)


def _order(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_loader_seeded_order_and_drop_last():
    ds = torch.utils.data.TensorDataset(torch.zeros(50, 1), torch.arange(50))
    first = _order(D.make_loader(ds, 8, train=True, seed=5, num_workers=0))
    again = _order(D.make_loader(ds, 8, train=True, seed=5, num_workers=0))
    other = _order(D.make_loader(ds, 8, train=True, seed=6, num_workers=0))
    assert first == again and first != other
    assert len(first) == 48 and len(set(first)) == 48  # drop_last for training
    test = D.make_loader(ds, 8, train=False, seed=5, num_workers=0)
    assert _order(test) == list(range(50))
    assert D.make_loader(ds, 8, train=False, device="cpu", num_workers=0).pin_memory is False


def test_loader_with_worker_repeats_augmentation(tmp_path):
    make_fashion(tmp_path / "fm", n_train=40)
    train_ds, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm")
    assert D.default_num_workers(train_ds) == 0

    def epoch(seed):
        loader = D.make_loader(train_ds, 16, train=True, seed=seed, num_workers=1)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert len(a) == 2 and a[0][0].shape == (16, 1, 28, 28) and a[0][1].dtype == torch.int64
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True)
    )
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c, strict=True))


def test_loader_distributed_sampler_explicit_ranks():
    ds = torch.utils.data.TensorDataset(torch.zeros(21, 1), torch.arange(21))
    shards = []
    for rank in range(2):
        loader = D.make_loader(ds, 4, train=False, seed=0, num_workers=0, num_replicas=2, rank=rank)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        shards.append(_order(loader))
    assert set(shards[0]) | set(shards[1]) == set(range(21))  # evaluation sees everything
    train = [
        D.make_loader(ds, 2, train=True, seed=3, num_workers=0, num_replicas=2, rank=r)
        for r in range(2)
    ]
    orders = [_order(t) for t in train]
    assert not set(orders[0]) & set(orders[1])  # disjoint shards
    assert orders[0] == _order(
        D.make_loader(ds, 2, train=True, seed=3, num_workers=0, num_replicas=2, rank=0)
    )
    plain = D.make_loader(ds, 4, train=True, seed=0, num_workers=0)
    assert not isinstance(plain.sampler, torch.utils.data.DistributedSampler)
    with pytest.raises(ValueError):
        D.make_loader(ds, 4, train=True, distributed=False, num_replicas=2, rank=0)


def test_loader_distributed_when_group_initialized(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", world_size=1, rank=0)
    try:
        ds = torch.utils.data.TensorDataset(torch.zeros(10, 1), torch.arange(10))
        loader = D.make_loader(ds, 4, train=True, seed=0, num_workers=0)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        assert loader.sampler.num_replicas == 1 and loader.sampler.shuffle
        off = D.make_loader(ds, 4, train=True, seed=0, num_workers=0, distributed=False)
        assert not isinstance(off.sampler, torch.utils.data.DistributedSampler)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_loader_pins_memory_for_cuda(tmp_path):
    make_fashion(tmp_path / "fm")
    train_ds, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm")
    loader = D.make_loader(train_ds, 4, train=True, device="cuda", num_workers=0)
    assert loader.pin_memory
    x, y = next(iter(loader))
    assert x.is_pinned() and y.is_pinned()


def test_default_num_workers_from_cpus(monkeypatch):
    monkeypatch.setattr(loaders, "_usable_cpus", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    ds = torch.utils.data.TensorDataset(torch.zeros(2))
    assert D.default_num_workers(ds) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert D.default_num_workers(ds) == 3
    monkeypatch.setattr(loaders, "_usable_cpus", lambda: 1)
    assert D.default_num_workers(ds) == 0
