"""Tests for ``stability.paper.train.setup``: the data order, the network's inputs, SGD.

References: a full pass over the loader (for the batches of a resumed epoch),
``itertools.islice`` (for the skipping sampler), ``torch.optim.SGD`` driven by hand.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from stability.paper.train import setup as S
from stability.paper.train.config import TrainConfig
from stability.paper.train.distributed import Dist


def _data(**overrides) -> S.TrainData:
    values = dict(dataset="synthetic", subset=(20, 4), batch_size=4, device="cpu", num_workers=0)
    return S.build_data(TrainConfig(**(values | overrides)), Dist(), torch.device("cpu"))


def test_epoch_seed_is_a_pure_function_of_seed_and_epoch():
    seeds = {S.epoch_seed(s, e) for s in range(3) for e in range(3)}
    assert len(seeds) == 9 and all(0 <= v < 2**63 for v in seeds)
    assert S.epoch_seed(1, 2) == S.epoch_seed(1, 2)


def test_skip_batches_is_the_tail_of_the_sampler():
    data = _data()
    batches = data.train_loader.batch_sampler
    data.train_loader.sampler.set_epoch(0)
    expected = list(itertools.islice(iter(batches), 2, None))
    data.train_loader.sampler.set_epoch(0)
    skip = S.SkipBatches(batches, 2)
    assert list(skip) == expected and len(skip) == len(batches) - 2


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_resumed_epoch_sees_the_batches_of_a_whole_one(epoch):
    data = _data()
    assert data.steps_per_epoch == 5
    whole = [x for x, _ in data.batches(epoch, 0)]
    tail = [x for x, _ in data.batches(epoch, 3)]
    assert len(tail) == 2 and all(torch.equal(a, b) for a, b in zip(whole[3:], tail, strict=True))
    other = [x for x, _ in data.batches(1 - epoch, 0)]
    assert not all(torch.equal(a, b) for a, b in zip(whole, other, strict=True))


def test_build_data_names_a_batch_that_does_not_fit():
    with pytest.raises(ValueError, match="exceeds the 20 training samples"):
        _data(batch_size=32)


def test_network_inputs_repeat_grey_to_rgb():
    net = S.Network(nn.Identity(), nn.Identity(), torch.device("cpu"), 3, channels_last=True)
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2)
    got, y = net.inputs(x, torch.tensor([0, 1]))
    assert got.shape == (2, 3, 2, 2) and all(torch.equal(got[:, c], x[:, 0]) for c in range(3))
    assert got.is_contiguous(memory_format=torch.channels_last) and y.tolist() == [0, 1]


def test_optimization_step_is_sgd_then_the_schedule():
    config = TrainConfig(lr=0.1, final_lr=0.0, momentum=0.9, wd=1e-2)
    torch.manual_seed(0)
    model, reference = nn.Linear(3, 2), nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    optim = S.build_optimization(config, model, total_steps=4, device=torch.device("cpu"))
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(5, 3)
    for step in range(3):
        assert optim.lr_of(step) == pytest.approx(0.1 * (1 - step / 4))
        optim.step(model(x).square().sum())
        for group in sgd.param_groups:
            group["lr"] = 0.1 * (1 - step / 4)
        sgd.zero_grad()
        reference(x).square().sum().backward()
        sgd.step()
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert optim.scale == 1.0 and set(optim.state_dict()) == {"optimizer", "scheduler", "scaler"}
