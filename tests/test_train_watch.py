"""``--on-warning``: the live monitor inside training (stability.paper.train.watch).

The detector is the real one, made hair-trigger (fire at the first record whose largest
layer rms exceeds its trailing median by 0.01%, after one record), so that a tiny stable
run warns at a known step; the reference is the monitor's own warning step.
"""

from __future__ import annotations

import json

import pytest
import torch

from stability.fitting.detector import WarningConfig
from stability.paper.train import TrainConfig, train, watch
from stability.records import runs as R


@pytest.fixture
def hair_trigger(monkeypatch):
    config = WarningConfig(jump=1.0001, loss_ratio=None, warmup=1, window=50)
    monkeypatch.setattr(watch, "DETECTOR", config)


def _config(tmp_path, action: str, **overrides) -> TrainConfig:
    values = dict(
        model="cifar10_nv", norm="bn", dataset="synthetic", subset=(64, 8), epochs=1,
        batch_size=4, lr=0.01, final_lr=0.01, check_every=1, device="cpu", threads=1,
        on_warning=action, out=str(tmp_path / action),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def test_stop_ends_the_run_at_the_warning_step(tmp_path, hair_trigger, caplog):
    result = train(_config(tmp_path, "stop"), progress=False)
    assert (result.status, result.reason) == ("stopped", "warning")
    logged = [r.getMessage() for r in caplog.records if "divergence warning" in r.getMessage()]
    assert len(logged) == 1
    warn_step = int(logged[0].split("divergence warning at step ")[1].split()[0])
    assert result.step == warn_step + 1  # steps 0..warn_step ran, nothing after
    status = json.loads((result.run_dir / R.STATUS).read_text())
    assert status["state"] == "stopped" and status["reason"] == "warning"


def test_lower_lr_scales_the_schedule_from_the_next_step(tmp_path, hair_trigger, caplog):
    result = train(_config(tmp_path, "lower-lr"), progress=False)
    assert result.status == "finished"
    logged = [r.getMessage() for r in caplog.records if "divergence warning" in r.getMessage()]
    assert len(logged) == 1  # one warning per episode (window 50 > the 16 steps)
    warn_step = int(logged[0].split("divergence warning at step ")[1].split()[0])
    state = torch.load(result.run_dir / "checkpoint.pt", weights_only=False)
    assert state["scheduler"]["lr_scale"] == pytest.approx(watch.LOWER_LR_FACTOR)
    assert warn_step < result.step


def test_none_attaches_no_monitor_and_ddp_refuses_one_process_actions():
    assert watch.build_monitor("none", object(), distributed=False,
                               save_checkpoint=lambda: None, schedule=None) is None  # fmt: skip
    with pytest.raises(ValueError, match="--on-warning lower-lr acts on one process only"):
        watch.build_monitor("lower-lr", object(), distributed=True,
                            save_checkpoint=lambda: None, schedule=None)  # fmt: skip
    with pytest.raises(ValueError, match="on-warning action"):
        TrainConfig(model="cifar10_nv", norm="bn", dataset="synthetic", on_warning="panic")


def test_divergence_json_carries_the_warning_and_its_lead(tmp_path, hair_trigger):
    config = _config(tmp_path, "log", norm="none", lr=1e6, final_lr=1e6, subset=(16, 4))
    result = train(config, progress=False)
    assert result.status == "diverged"
    info = json.loads((result.run_dir / R.DIVERGENCE).read_text())
    warning = info["warning"]
    assert warning is not None, info
    assert warning["lead"] == info["step"] - warning["warn_step"]
    assert warning["onset_step"] == info["step"]
    assert "divergence warning at step" in warning["message"]
