"""Tests for the training loop (``stability.paper.train.loop`` and ``launch``).

References: the files a run directory must hold (stability.records.runs); the divergence
report against a brute-force scan of the saved records; torch's GradScaler for fp16.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from train_support import make_tiny_fmnist, records

from stability.paper.names import NORM_KINDS
from stability.paper.train import TrainConfig, train
from stability.records import runs as R


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory):
    return make_tiny_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.mark.parametrize("norm", NORM_KINDS)
def test_smoke_training_every_norm(tmp_path, norm):
    """One epoch of cifar10-nv on synthetic data: every file of the run directory."""
    config = TrainConfig(
        model="cifar10_nv", norm=norm, dataset="synthetic", subset=(8, 4), epochs=1,
        batch_size=4, weight_every=1, device="cpu", out=str(tmp_path / norm),
    )  # fmt: skip
    result = train(config, progress=False)
    assert result.status == "finished" and result.epoch == 1 and result.step == 2
    run = tmp_path / norm
    for name in (R.CONFIG, R.HISTORY, R.CHECKPOINT, R.STATUS):
        assert (run / name).is_file(), name
    assert list(result.history.columns) == list(R.HISTORY_COLUMNS)
    row = result.history.iloc[0]
    assert np.isfinite(row["train_loss"]) and 0 <= row["test_top1"] <= row["test_top5"] <= 100
    frame = records(run)
    assert list(frame.columns) == ["step", "layer", "layer_idx", "call_idx", "metric", "value"]
    assert sorted(frame["step"].unique()) == [0, 1]
    convs = {f"conv{i}" for i in range(1, 10)}
    assert set(frame["layer"]) == convs | {"(loss)"}
    assert set(frame["metric"]) >= {"output_norm", "grad_norm", "coherence", "loss"}
    loss = frame[frame["metric"] == "loss"]  # rec.step(loss=...): one finite row per step
    assert sorted(loss["step"]) == [0, 1] and np.isfinite(loss["value"]).all()
    depth = frame.drop_duplicates("layer").set_index("layer")["layer_idx"]
    assert [depth[f"conv{i}"] for i in range(1, 10)] == list(range(9))  # depth order
    meta = json.loads((run / R.CONFIG).read_text())["meta"]
    assert meta["steps_per_epoch"] == 2 and meta["world_size"] == 1
    assert json.loads((run / R.STATUS).read_text())["state"] == "finished"


@pytest.mark.slow
def test_resnet50_on_grey_images(tmp_path, tiny_fmnist):
    """ResNet-50 takes 1-channel 28x28 Fashion-MNIST (repeated to RGB)."""
    config = TrainConfig(
        model="resnet50", norm="wn", dataset="fashion-mnist", data_dir=str(tiny_fmnist),
        image_size=28, subset=(8, 4), epochs=1, batch_size=4, lr=0.0125, schedule="poly",
        final_lr=0.0, weight_every=100, device="cpu", out=str(tmp_path / "r50"),
    )  # fmt: skip
    result = train(config, progress=False)
    assert result.status == "finished"
    frame = records(tmp_path / "r50")
    layers = frame[frame["metric"] != "loss"]  # the loss rows sit at layer_idx -1
    order = layers.drop_duplicates("layer").sort_values("layer_idx")["layer"].tolist()
    assert order[0] == "conv1" and order[-1] == "fc" and len(order) == 54


def test_bf16_autocast_trains(tmp_path):
    config = TrainConfig(
        dataset="synthetic", subset=(4, 4), epochs=1, batch_size=4, amp="bf16", device="cpu",
        out=str(tmp_path / "bf16"),
    )  # fmt: skip
    result = train(config, progress=False)
    assert result.status == "finished" and np.isfinite(result.history["train_loss"]).all()


def test_non_finite_loss_stops_and_names_the_first_layer(tmp_path):
    config = TrainConfig(
        model="cifar10_nv", norm="none", dataset="synthetic", subset=(16, 4), epochs=1,
        batch_size=4, lr=1e6, final_lr=1e6, check_every=1, device="cpu",
        out=str(tmp_path / "boom"),
    )  # fmt: skip
    result = train(config, progress=False)
    assert result.status == "diverged"
    info = json.loads((tmp_path / "boom" / R.DIVERGENCE).read_text())
    exact = {k: v for k, v in result.divergence.items() if k not in ("loss", "value")}
    assert {k: info[k] for k in exact} == exact
    # the one JSON policy: non-finite numbers are null, their text is kept beside them
    assert info["loss"] is None and info["loss_text"] == str(result.divergence["loss"])
    assert info["value"] is None and info["value_text"] == str(result.divergence["value"])
    frame = records(tmp_path / "boom")
    # brute force: the first step with a non-finite output norm, then its shallowest layer
    bad = frame[(frame["metric"] == "output_norm") & ~np.isfinite(frame["value"])]
    first = bad[bad["step"] == bad["step"].min()].sort_values("layer_idx").iloc[0]
    assert (info["record_step"], info["layer"], info["layer_idx"]) == (
        first["step"],
        first["layer"],
        first["layer_idx"],
    )
    assert info["metric"] == "output_norm" and not np.isfinite(float(info["value_text"]))
    assert info["step"] >= info["record_step"] and info["stopped_at_step"] == info["step"] + 1
    assert not np.isfinite(float(info["loss_text"]))
    assert json.loads((tmp_path / "boom" / R.STATUS).read_text())["state"] == "diverged"
    with pytest.raises(ValueError, match="diverged"):
        train(config, progress=False, resume=True)


@pytest.mark.slow
def test_fp16_scaler_skips_are_not_divergence(tmp_path, monkeypatch):
    """An overflowing scaled gradient makes the GradScaler skip the step, not diverge."""
    original = torch.amp.GradScaler

    def huge_scale(device):
        return original(device, init_scale=2.0**100)  # scaled fp16 grads are inf

    monkeypatch.setattr(torch.amp, "GradScaler", huge_scale)
    config = TrainConfig(
        dataset="synthetic", subset=(8, 4), epochs=1, batch_size=4, amp="fp16", device="cpu",
        check_every=1, out=str(tmp_path / "fp16"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(config, progress=False)
    assert result.status == "finished"
    assert result.history["amp_scale"].iloc[0] < 2.0**100  # backed off


@pytest.mark.slow
def test_compiled_model_trains_and_records(tmp_path):
    config = TrainConfig(
        dataset="synthetic", subset=(8, 8), epochs=1, batch_size=8, compile=True, device="cpu",
        out=str(tmp_path / "compiled"),
    )  # fmt: skip
    result = train(config, progress=False)
    assert result.status == "finished"
    layers = set(records(tmp_path / "compiled")["layer"])
    assert layers == {f"conv{i}" for i in range(1, 10)} | {"(loss)"}
