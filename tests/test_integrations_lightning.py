"""The Lightning callback records exactly what a plain loop over the same batches records.

Reference: a hand-written loop over the same batches, with the same initial weights and
the same updates (Lightning divides the loss by ``accumulate_grad_batches`` and steps at
the last batch of an epoch too), calling ``rec.step()`` after each optimizer step and
never recording validation. The callback's table must have the same rows (step, layer,
depth, call, metric) and the same values.
"""

from __future__ import annotations

import copy
import logging

import pandas as pd
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from stability import Recorder  # noqa: E402
from stability.integrations.lightning import RecorderCallback  # noqa: E402
from stability.integrations.session import RECORDS_FILE  # noqa: E402

KEYS = ["step", "layer", "layer_idx", "call_idx", "metric"]


def batches(n: int = 10, size: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TwoOptimizers(Regressor):
    """Manual optimization: the two layers are trained by two optimizers in one batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        for opt in self.optimizers():
            opt.zero_grad()
            loss = nn.functional.mse_loss(self(x), y)
            self.manual_backward(loss)
            opt.step()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[i].parameters(), lr=0.1) for i in (0, 2)]


def loader(data):
    return torch.utils.data.DataLoader(data, batch_size=None)


def fit(module, callback, tmp_path, epochs=2, **trainer_options) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[callback],
        default_root_dir=tmp_path,
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        **trainer_options,
    )
    data = batches()
    trainer.fit(module, loader(data), loader(data[:3]))
    return trainer


def plain_loop(module, epochs: int, accumulate: int, **options) -> pd.DataFrame:
    """The reference: Lightning's automatic optimization written out by hand."""
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    data = batches()
    with Recorder(module, **options) as rec:
        for _ in range(epochs):
            for i, (x, y) in enumerate(data):
                loss = nn.functional.mse_loss(module(x), y) / accumulate
                loss.backward()
                if (i + 1) % accumulate == 0 or i == len(data) - 1:
                    opt.step()
                    opt.zero_grad()
                    rec.step()
    return rec.to_frame()


def plain_two_optimizers(module, epochs: int) -> pd.DataFrame:
    opts = [torch.optim.SGD(module.net[i].parameters(), lr=0.1) for i in (0, 2)]
    with Recorder(module) as rec:
        for _ in range(epochs):
            for x, y in batches():
                for opt in opts:
                    opt.zero_grad()
                    nn.functional.mse_loss(module(x), y).backward()
                    opt.step()
                rec.step()
    return rec.to_frame()


def assert_same_records(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got[KEYS], expected[KEYS])
    torch.testing.assert_close(
        torch.tensor(got["value"].to_numpy()), torch.tensor(expected["value"].to_numpy())
    )


def test_fit_with_accumulation_and_validation_records_like_a_plain_loop(tmp_path):
    module = Regressor()
    reference = plain_loop(copy.deepcopy(module), epochs=2, accumulate=2, weight_every=2)
    callback = RecorderCallback(weight_every=2)
    trainer = fit(module, callback, tmp_path, accumulate_grad_batches=2)

    table = callback.recorder.to_frame()
    # 5 batches, accumulate 2: steps after batches 2, 4 and 5 of each epoch
    assert sorted(table["step"].unique()) == list(range(6))
    assert set(table.loc[table["step"] % 3 < 2, "call_idx"]) == {0, 1}
    assert set(table.loc[table["step"] % 3 == 2, "call_idx"]) == {0}
    # The callback also records each step's training loss (the plain loop does not).
    loss = table[table["metric"] == "loss"]
    assert sorted(loss["step"]) == list(range(6))
    table = table[table["metric"] != "loss"].reset_index(drop=True)
    assert_same_records(table, reference)
    assert callback.saved_path == tmp_path / "lightning_logs" / "version_0" / RECORDS_FILE
    assert str(callback.saved_path.parent) == trainer.log_dir
    saved = pd.read_parquet(callback.saved_path)
    pd.testing.assert_frame_equal(saved, callback.recorder.to_frame())


def test_two_optimizers_step_once_per_batch(tmp_path):
    module = TwoOptimizers()
    reference = plain_two_optimizers(copy.deepcopy(module), epochs=1)
    callback = RecorderCallback(save=False)
    trainer = fit(module, callback, tmp_path, epochs=1)
    assert trainer.global_step == 10  # Lightning counts both optimizers' steps
    assert callback.saved_path is None
    assert_same_records(callback.recorder.to_frame(), reference)


def test_existing_record_file_is_refused_before_training(tmp_path):
    target = tmp_path / "mine.parquet"
    target.write_bytes(b"user data")
    module = Regressor()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(FileExistsError, match="mine.parquet exists"):
        fit(module, RecorderCallback(save=target), tmp_path)
    assert target.read_bytes() == b"user data"
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} was trained"


def test_bad_options_fail_at_construction():
    with pytest.raises(TypeError, match=r"unknown Recorder option\(s\) \['evry'\]"):
        RecorderCallback(evry=2)
    with pytest.raises(ValueError, match="must end in .parquet or .csv"):
        RecorderCallback(save="records.txt")


class _WarnAtStep:
    """A monitor as the callback sees one: built with the Recorder and ``on_warning``."""

    def __init__(self, recorder, on_warning, at: int):
        self.recorder, self.on_warning, self.at = recorder, on_warning, at


class _Warning:
    def __init__(self, step: int) -> None:
        self.step = step

    def __str__(self) -> str:
        return f"output_rms of net.2 grows at step {self.step}"


class WarnsDuringTraining(Regressor):
    """Calls the monitor's ``on_warning`` in its training step at a chosen optimizer step."""

    monitor: _WarnAtStep

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.monitor.at:
            self.monitor.on_warning(_Warning(self.monitor.recorder.step_count))
        return super().training_step(batch, batch_idx)


def test_monitor_warning_logs_checkpoints_and_stops(tmp_path, caplog):
    module = WarnsDuringTraining()

    def factory(recorder, on_warning):
        module.monitor = _WarnAtStep(recorder, on_warning, at=2)
        return module.monitor

    callback = RecorderCallback(monitor=factory)
    with caplog.at_level(logging.WARNING, logger="stability.integrations"):
        trainer = fit(module, callback, tmp_path, epochs=5)
    assert trainer.global_step == 3  # stopped after the step the warning arrived in
    assert [a.step for a in callback.alerts] == [2]
    log_dir = tmp_path / "lightning_logs" / "version_0"
    assert (log_dir / "normstab-warning-step=3.ckpt").is_file()
    metrics = pd.read_csv(log_dir / "metrics.csv")
    assert metrics.loc[metrics["normstab_warning"].notna(), "step"].tolist() == [3]
    assert "output_rms of net.2 grows at step 2" in caplog.text
    assert sorted(callback.recorder.to_frame()["step"].unique()) == [0, 1, 2]


def test_tensorboard_sink_writes_into_the_run_log_dir(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from stability.integrations.tensorboard import TensorBoardSink

    callback = RecorderCallback(
        sinks=[TensorBoardSink(profile_every=0)], metrics=["output_rms"], flush_every=4
    )
    trainer = fit(Regressor(), callback, tmp_path, accumulate_grad_batches=2)
    events = accumulator.EventAccumulator(trainer.log_dir).Reload()
    table = callback.recorder.to_frame()
    for layer in ("net.0", "net.2"):
        got = [(e.step, e.value) for e in events.Scalars(f"normstab_output_rms/{layer}")]
        expected = table[table["layer"] == layer].groupby("step")["value"].max()
        assert [s for s, _ in got] == list(range(6)) == expected.index.tolist()
        torch.testing.assert_close(
            torch.tensor([v for _, v in got]),
            torch.tensor(expected.to_numpy(), dtype=torch.float32),
        )


def test_the_real_monitor_is_fed_each_step_with_the_loss(tmp_path):
    """stability.Monitor through the callback: it ends each step with the training loss (the
    loss rows of the table), its warning reaches the callback, and training stops there."""
    from stability import Monitor
    from stability.fitting import WarningConfig

    hair_trigger = WarningConfig(jump=1.0001, loss_ratio=1e-9, warmup=2, window=50)
    monitors = []

    def factory(recorder, on_warning):
        monitors.append(Monitor(recorder, hair_trigger, on_warning=on_warning))
        return monitors[0]

    callback = RecorderCallback(monitor=factory, save=False)
    trainer = fit(Regressor(), callback, tmp_path, epochs=5)
    (monitor,) = monitors
    assert monitor.warnings, "the hair-trigger detector never fired"
    warn_step = monitor.warnings[0].warn_step
    assert [a.step for a in callback.alerts] == [warn_step]
    assert trainer.global_step == warn_step + 1  # stop_on_warning: after that step
    frame = callback.recorder.to_frame()
    loss = frame[frame["metric"] == "loss"]
    assert sorted(loss["step"]) == list(range(warn_step + 1))
    assert (loss["value"] > 0).all()
