"""Tests for ``stability.paper.train.distributed`` in a single process (DDP itself runs in
tests/test_train_cli.py, through torchrun)."""

from __future__ import annotations

import pytest
import torch

from stability.paper.train import distributed as D


def test_a_plain_process_is_a_job_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = D.init_distributed("cpu")
    assert dist == D.Dist() and dist.is_main and not dist.enabled
    x = torch.tensor([1.0, 2.0])
    assert D.all_reduce(x, dist, "max") is x and x.tolist() == [1.0, 2.0]
    assert D.gather_objects({"a": 1}, dist) == [{"a": 1}]
    D.barrier(dist)  # no-op


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert D.resolve_device("auto", D.Dist()).type == expected
    assert D.resolve_device("cpu", D.Dist()) == torch.device("cpu")
    with pytest.raises(ValueError, match="bad device 'gpu0'"):
        D.resolve_device("gpu0", D.Dist())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            D.resolve_device("cuda:1", D.Dist())
