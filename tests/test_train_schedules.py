"""Tests for ``stability.paper.train.schedules`` against the closed forms, in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stability.paper.train.config import TrainConfig
from stability.paper.train.schedules import StepSchedule, linear_lr, poly_lr, schedule_lr


@pytest.mark.parametrize("lr0,final", [(0.01, 1e-5), (0.1, 0.0), (0.01, 1e-4)])
def test_linear_schedule_matches_formula(lr0, final):
    total = 97
    steps = np.arange(0, total + 1)
    expected = lr0 + (final - lr0) * steps / total  # numpy, the closed form
    got = np.array([linear_lr(int(t), total, lr0, final) for t in steps])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert got[0] == lr0 and got[-1] == pytest.approx(final, abs=1e-18)
    assert linear_lr(total + 5, total, lr0, final) == got[-1]  # clamped past the end


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_poly_schedule_matches_formula(power):
    lr0, final, total = 0.1, 1e-5, 50
    t = np.arange(0, total + 1)
    expected = final + (lr0 - final) * (1 - t / total) ** power
    got = np.array([poly_lr(int(s), total, lr0, final, power) for s in t])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(lr0) and got[-1] == pytest.approx(final)
    assert np.all(np.diff(got) <= 0)
    assert poly_lr(-3, total, lr0, final, power) == got[0]  # clamped before the start


def test_schedule_lr_follows_the_config():
    linear = TrainConfig(schedule="linear", lr=0.1, final_lr=0.0)
    poly = TrainConfig(schedule="poly", lr=0.1, final_lr=0.0, power=3.0)
    assert schedule_lr(linear, 5, 10) == pytest.approx(0.05)
    assert schedule_lr(poly, 5, 10) == pytest.approx(0.1 * 0.5**3)


def test_step_schedule_sets_the_optimizer_lr():
    """StepSchedule puts schedule_lr(t) into the optimizer at step t, exactly."""
    config = TrainConfig(schedule="poly", power=2.0, lr=0.1, final_lr=1e-3)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = StepSchedule(optimizer, lambda t: schedule_lr(config, t, 6))
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [1e-3 + (0.1 - 1e-3) * (1 - t / 6) ** 2 for t in range(6)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert "lr_fn" not in schedule.state_dict()
