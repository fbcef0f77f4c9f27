"""Tests for ``stability.paper.train.meters`` against brute force and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stability.paper.train.distributed import Dist
from stability.paper.train.meters import LossWatch, Meter, topk_correct


def test_topk_correct_against_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g)
    target = torch.randint(0, 10, (50,), generator=g)
    got = topk_correct(logits, target, (1, 5)).tolist()
    ranks = [(logits[i] > logits[i, target[i]]).sum().item() for i in range(50)]
    assert got == [sum(r < 1 for r in ranks), sum(r < 5 for r in ranks)]
    assert topk_correct(logits[:, :3], target % 3, (1, 5))[1] == 50  # k capped at C


def test_meter_averages_are_sample_weighted():
    g = torch.Generator().manual_seed(1)
    meter = Meter(torch.device("cpu"))
    assert all(math.isnan(v) for v in meter.averages(Dist()))
    losses, sizes, top1 = [], [], 0
    for n in (3, 5):
        logits = torch.randn(n, 10, generator=g)
        target = torch.randint(0, 10, (n,), generator=g)
        loss = torch.nn.functional.cross_entropy(logits, target)
        meter.update(loss, logits, target)
        losses.append(loss.item())
        sizes.append(n)
        top1 += int((logits.argmax(1) == target).sum())
    loss, acc1, acc5 = meter.averages(Dist())
    assert loss == pytest.approx(np.average(losses, weights=sizes), rel=1e-15)
    assert acc1 == 100.0 * top1 / 8 and acc1 <= acc5 <= 100
    again = Meter(torch.device("cpu"))
    again.load_state_dict(meter.state_dict())
    assert again.averages(Dist()) == (loss, acc1, acc5)
    meter.reset()
    assert meter.state_dict() == [0.0] * 4


def test_loss_watch_keeps_the_first_non_finite_step():
    watch = LossWatch(torch.device("cpu"), step=10)
    for value in (1.0, 2.0, math.inf, math.nan, 3.0):
        watch.update(torch.tensor(value))
    assert (int(watch.first), float(watch.value), float(watch.flag())) == (12, math.inf, 1.0)
    quiet = LossWatch(torch.device("cpu"), step=0)
    quiet.update(torch.tensor(1.0))
    assert (int(quiet.first), float(quiet.flag())) == (-1, 0.0)
