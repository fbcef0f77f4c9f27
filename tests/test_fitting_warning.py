"""The offline door: early_warning / warning_signals on saved tables (single and stacked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stability import Recorder, fitting
from stability.paper.models import deep_linear
from stability.paper.stacked import StackedDeepLinear, StackedSGD
from tests.warning_support import ramp_run


@pytest.fixture(scope="module")
def diverging():
    return ramp_run(ramp=True)[0]


def test_warns_before_the_onset_with_its_lead(diverging):
    warning = fitting.early_warning(diverging)
    onset = fitting.divergence_onset(diverging)
    assert warning.onset_step == onset.step and warning.lead == onset.step - warning.warn_step > 0
    signals = fitting.warning_signals(diverging)
    assert int(signals.loc[signals["fires"], "step"].iloc[0]) == warning.warn_step
    assert "lower-bound estimate" in warning.describe() or warning.steps_left_lower_bound is None


def test_none_when_it_never_fires_and_errors_name_the_problem(diverging):
    assert fitting.early_warning(diverging[diverging["step"] < 30]) is None  # before the ramp bites
    with pytest.raises(ValueError, match="no 'loss' rows"):
        fitting.early_warning(diverging[diverging["metric"] != "loss"])
    no_loss = fitting.early_warning(
        diverging[diverging["metric"] != "loss"], fitting.WarningConfig(loss_ratio=None)
    )
    assert no_loss is not None
    with pytest.raises(TypeError, match="depth_factor_crossing"):
        fitting.early_warning(diverging, 1.05)
    two = diverging.assign(run=np.arange(len(diverging)) % 2)
    with pytest.raises(ValueError, match="several runs"):
        fitting.early_warning(two)


def test_loss_is_recorded_per_run_for_stacked_runs():
    torch.manual_seed(0)
    models = [deep_linear(4, 8, 6, 3, norm="none") for _ in range(3)]
    model = StackedDeepLinear.from_models(models)
    optimizer = StackedSGD(model.parameters(), torch.tensor([0.01, 0.02, 0.03]))
    x, y = torch.randn(3, 16, 6), torch.randint(0, 3, (3, 16))
    expected = []
    with Recorder(model, run_dim=0, metrics=("output_rms", "loss")) as rec:
        for _ in range(4):
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none")
            loss = loss.view(3, -1).mean(1)
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
            expected.append(loss.detach().numpy().copy())
            rec.step(loss=loss.detach())
    frame = rec.to_frame()
    rows = frame[frame["metric"] == "loss"].sort_values(["step", "run"])
    np.testing.assert_allclose(rows["value"].to_numpy(), np.concatenate(expected), rtol=1e-6)
    assert set(rows["layer"]) == {"(loss)"} and set(rows["layer_idx"]) == {-1}
    one = frame[frame["run"] == 1].drop(columns="run")
    assert len(fitting.warning_signals(one)) == 4


def test_depth_factor_crossing_is_kept(diverging):
    crossing = fitting.depth_factor_crossing(diverging, 1.05)
    assert crossing is not None and crossing.factor >= 1.05
