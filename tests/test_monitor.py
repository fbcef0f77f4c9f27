"""The live monitor: fires on a run built to diverge, agrees with the saved table, acts."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from stability import Recorder, fitting
from stability.monitor import Monitor, log_warning, lower_lr, save_checkpoint
from stability.paper.models import deep_linear
from tests.warning_support import ramp_run


def test_fires_before_the_onset_of_a_diverging_run_and_agrees_with_the_table():
    frame, monitor, _, _ = ramp_run(ramp=True)
    onset = fitting.divergence_onset(frame)
    assert onset is not None
    (first, *_) = monitor.warnings
    assert first.warn_step < onset.step
    assert first.seen_at_step == first.warn_step  # CPU: latency 0
    offline = fitting.early_warning(frame)
    assert offline is not None and offline.warn_step == first.warn_step
    assert offline.lead == onset.step - first.warn_step
    assert first.layer == offline.layer and first.jump == pytest.approx(offline.jump)
    assert first.regime in fitting.REGIMES and first.jump >= monitor.config.jump


def test_never_fires_on_a_stable_run():
    frame, monitor, _, _ = ramp_run(ramp=False)
    assert fitting.divergence_onset(frame) is None
    assert monitor.warnings == [] and fitting.early_warning(frame) is None


def test_stop_takes_effect_at_the_step_it_fired():
    _, monitor, _, _ = ramp_run(ramp=True, stop=True)
    (warning,) = monitor.warnings
    assert monitor.should_stop
    assert monitor.recorder.step_count == warning.warn_step + 1  # the loop ended right there


def test_lower_lr_takes_effect_at_the_step_it_fired():
    torch.manual_seed(0)
    model = deep_linear(8, 32, 20, 5, norm="none")
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    saved = []
    rec = Recorder(model, metrics=("output_rms", "loss"))
    monitor = Monitor(rec, on_warning=[lower_lr(optimizer, 0.1), save_checkpoint(saved.append)])
    fired_at = None
    for step in range(60):
        if fired_at is None and step >= 25:
            optimizer.param_groups[0]["lr"] *= 1.25
        before = optimizer.param_groups[0]["lr"]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if monitor.step(loss):
            fired_at = step
            assert optimizer.param_groups[0]["lr"] == pytest.approx(before * 0.1)
            break
    assert fired_at is not None and saved and saved[0].warn_step == fired_at


def test_log_action_writes_the_description(caplog):
    with caplog.at_level(logging.WARNING, logger="stability.monitor"):
        _, monitor, _, _ = ramp_run(ramp=True, actions=[lambda _opt: log_warning()])
    assert "divergence warning at step" in caplog.text
    assert "lower-bound estimate" in caplog.text or "steps left unknown" in caplog.text


def test_bad_setups_are_refused():
    model = deep_linear(4, 8, 6, 3, norm="none")
    with pytest.raises(ValueError, match="stacks runs"):
        Monitor(Recorder(torch.nn.Sequential(torch.nn.Linear(3, 3)), run_dim=0))
    with pytest.raises(ValueError, match="loss"):
        Monitor(Recorder(model, metrics=("output_rms",)))
    with pytest.raises(TypeError, match="Recorder"):
        Monitor(model)
    with pytest.raises(TypeError, match="callables"):
        Monitor(Recorder(model), on_warning=[1])
    monitor = Monitor(Recorder(model))
    with pytest.raises(ValueError, match="loss"):
        monitor.step()


def test_factory_signature_fits_the_integrations_session():
    from stability.integrations.session import RecordingSession

    session = RecordingSession(
        {"metrics": ("output_rms", "loss")},
        save=False,
        monitor=lambda rec, on_warning: Monitor(rec, on_warning=on_warning),
    )
    recorder = session.start(deep_linear(4, 8, 6, 3, norm="none"), None)
    assert isinstance(session.monitor, Monitor) and session.monitor.recorder is recorder
    assert session.monitor.actions == [session._on_warning]
    session.finish()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_adds_no_sync_and_warns_within_one_step():
    frame, monitor, _, _ = ramp_run(ramp=True, device="cuda", no_sync=True)
    (first, *_) = monitor.warnings
    assert 0 <= first.seen_at_step - first.warn_step <= 1
    assert fitting.early_warning(frame).warn_step == first.warn_step
