"""Tests for ``stability.paper.train.checkpoint``: the files, the RNG states, reconciling a
run directory with its checkpoint, and exact resume.

References: resume against an uninterrupted run of the same config (bitwise-equal history
and records on the CPU); the RNG streams themselves (the draws after a restore); the file
system (what was kept, what was set aside).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from train_support import assert_same_run, make_tiny_fmnist, records, tiny_config

from stability.paper.train import checkpoint as K
from stability.paper.train import train
from stability.paper.train.config import TrainConfig
from stability.paper.train.schedules import linear_lr
from stability.records import runs as R


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory):
    return make_tiny_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_fmnist):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train(tiny_config(out, tiny_fmnist), progress=False).status == "finished"
    return out


def _part(steps):
    return pd.DataFrame(
        {"step": steps, "layer": "a", "layer_idx": 0, "call_idx": 0, "metric": "output_norm",
         "value": 1.0}
    )  # fmt: skip


# --------------------------------------------------------------------------- files


def test_checkpoint_save_keeps_the_previous_and_load_falls_back(tmp_path):
    run = R.RunDir(tmp_path)
    assert K.load_checkpoint(run) is None
    K.save_checkpoint(run, {"x": torch.tensor(1)})
    K.save_checkpoint(run, {"x": torch.tensor(2)})
    assert K.load_checkpoint(run)["x"].item() == 2
    (tmp_path / R.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="resuming from"):
        assert K.load_checkpoint(run)["x"].item() == 1
    (tmp_path / R.PREVIOUS_CHECKPOINT).write_bytes(b"")
    with pytest.raises(RuntimeError, match="no readable checkpoint"):
        K.load_checkpoint(run)


def test_load_refuses_another_format_or_world_size(tmp_path):
    run = R.RunDir(tmp_path)
    K.save_checkpoint(run, {"format": K.CHECKPOINT_FORMAT, "ranks": [{}, {}]})
    with pytest.raises(ValueError, match="written by 2 process"):
        K.load(run, "cpu", world_size=1)
    assert K.load(run, "cpu", world_size=2)["ranks"] == [{}, {}]
    K.save_checkpoint(run, {"format": 99, "ranks": [{}]})
    with pytest.raises(ValueError, match="unknown checkpoint format 99"):
        K.load(run, "cpu", world_size=1)


def test_rng_state_restores_every_stream():
    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002 (the legacy global stream is what is saved)
    random.seed(3)
    state = K.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    K.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_reconcile_sets_aside_and_repairs(tmp_path):
    run = R.RunDir(tmp_path)
    rows = [{c: float(i) for c in R.HISTORY_COLUMNS} for i in range(3)]
    for row in rows[:2]:
        run.append_history(row)
    for i in range(3):
        run.write_part(_part([i]), i)
    with pytest.warns(UserWarning, match="after the checkpoint"):
        K.reconcile(run, rows, parts_written=2)  # a part the checkpoint does not know
    assert [i for i, _ in run.parts()] == [0, 1]
    assert len(run.read_history()) == 3  # the missing row appended from the checkpoint
    with pytest.warns(UserWarning, match="history.csv has 3 rows"):
        K.reconcile(run, rows[:1], parts_written=2)
    assert len(run.read_history()) == 1
    stale = list((tmp_path / "stale").rglob("*"))
    assert any(p.name == R.HISTORY for p in stale) and any(p.suffix == ".parquet" for p in stale)


# --------------------------------------------------------------------------- resume


def test_resume_at_an_epoch_boundary_is_identical(tmp_path, tiny_fmnist, straight_run):
    out = tmp_path / "run"
    first = train(tiny_config(out, tiny_fmnist), progress=False, max_steps=3)
    assert (first.status, first.epoch, first.step) == ("stopped", 1, 3)
    again = train(tiny_config(out, tiny_fmnist), progress=False, resume=True)
    assert (again.status, again.epoch, again.step) == ("finished", 2, 6)
    assert_same_run(straight_run, out)
    assert sorted(records(out)["step"].unique()) == list(range(6))  # contiguous steps


def test_resume_mid_epoch_twice_is_identical(tmp_path, tiny_fmnist, straight_run):
    out = tmp_path / "run"
    assert train(tiny_config(out, tiny_fmnist), progress=False, max_steps=1).step == 1
    status = json.loads((out / R.STATUS).read_text())
    assert (status["state"], status["epoch"], status["batch"]) == ("stopped", 0, 1)
    mid = train(tiny_config(out, tiny_fmnist), progress=False, resume=True, max_steps=5)
    assert (mid.status, mid.epoch, mid.step) == ("stopped", 1, 5)
    train(tiny_config(out, tiny_fmnist), progress=False, resume=True)
    assert_same_run(straight_run, out)
    assert len(R.RunDir(out).parts()) == 4  # 1 | 2 + epoch end | 1 | 1


def test_sigterm_checkpoints_and_resumes_identically(tmp_path, tiny_fmnist, straight_run):
    out = tmp_path / "run"

    def kill_at_step_4(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(tiny_config(out, tiny_fmnist), progress=False, on_step=kill_at_step_4)
    assert (result.status, result.reason, result.step) == ("stopped", "SIGTERM", 4)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    assert json.loads((out / R.STATUS).read_text())["reason"] == "SIGTERM"
    train(tiny_config(out, tiny_fmnist), progress=False, resume=True)
    assert_same_run(straight_run, out)


def test_resume_with_loader_workers_keeps_the_order(tmp_path):
    """Mid-epoch resume with worker processes skips batches in the sampler (no loading).

    Synthetic samples are a pure function of their index, so the records of the resumed
    run equal the uninterrupted run's exactly when the sample order is right.
    """

    def config(out):
        return TrainConfig(
            dataset="synthetic", subset=(12, 4), epochs=1, batch_size=4, weight_every=2,
            device="cpu", num_workers=0, out=str(out),
        )  # fmt: skip

    train(config(tmp_path / "a"), progress=False)
    train(config(tmp_path / "b"), progress=False, max_steps=2)
    workers = dataclasses.replace(config(tmp_path / "b"), num_workers=1)  # a runtime field
    train(workers, progress=False, resume=True)
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_a_different_seed_gives_different_records(tmp_path, tiny_fmnist, straight_run):
    """Control: the identity checks above are sensitive to the data order."""
    out = tmp_path / "run"
    train(tiny_config(out, tiny_fmnist, seed=1), progress=False, max_steps=2)
    first_two = records(straight_run).query("step < 2").reset_index(drop=True)
    other = records(out)
    assert other[["step", "layer", "metric"]].equals(first_two[["step", "layer", "metric"]])
    assert not other["value"].equals(first_two["value"])


def test_resume_refuses_a_changed_config(tmp_path, tiny_fmnist):
    out = tmp_path / "run"
    train(tiny_config(out, tiny_fmnist), progress=False, max_steps=1)
    with pytest.raises(ValueError, match="lr"):
        train(tiny_config(out, tiny_fmnist, lr=0.5), progress=False, resume=True)


def test_existing_run_needs_resume_or_force(tmp_path, tiny_fmnist):
    out = tmp_path / "run"
    train(tiny_config(out, tiny_fmnist), progress=False, max_steps=1)
    with pytest.raises(R.RunExistsError, match="--resume"):
        train(tiny_config(out, tiny_fmnist), progress=False)
    old = (out / R.STATUS).read_text()
    with pytest.warns(UserWarning, match="moved the existing run"):
        train(tiny_config(out, tiny_fmnist), progress=False, force=True, max_steps=1)
    (aside,) = tmp_path.glob("run.old-*")
    assert (aside / R.STATUS).read_text() == old  # moved, not deleted
    assert (aside / R.CHECKPOINT).is_file()


def test_corrupt_checkpoint_falls_back_to_the_previous(tmp_path, tiny_fmnist, straight_run):
    out = tmp_path / "run"
    train(tiny_config(out, tiny_fmnist), progress=False, max_steps=4)  # ckpts at 3 and 4
    data = (out / R.CHECKPOINT).read_bytes()
    (out / R.CHECKPOINT).write_bytes(data[: len(data) // 2])  # truncated
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_config(out, tiny_fmnist), progress=False, resume=True)
    messages = " | ".join(str(w.message) for w in caught)
    assert "resuming from" in messages and "checkpoint.prev.pt" in messages
    assert "record parts written after the checkpoint" in messages
    assert_same_run(straight_run, out)
    assert list((out / "stale").rglob("part-*.parquet"))  # the orphan part, set aside


def test_history_lr_is_the_schedule_at_the_last_step(straight_run):
    """The loop's history rows, checked on the run the resume tests compare against."""
    config = TrainConfig.from_dict(json.loads((straight_run / R.CONFIG).read_text()))
    h = pd.read_csv(straight_run / R.HISTORY)
    total = int(h["step"].iloc[-1])
    for step, lr in zip(h["step"], h["lr"], strict=True):
        assert lr == pytest.approx(linear_lr(int(step) - 1, total, config.lr, config.final_lr))


def test_the_checkpoint_holds_the_position_and_every_state(straight_run):
    state = K.load(R.RunDir(straight_run), "cpu", world_size=1)
    assert state["progress"] == {"epoch": 2, "batch": 0, "step": 6,
                                 "seconds": state["progress"]["seconds"], "parts": 2}  # fmt: skip
    assert len(state["history"]) == 2 and state["scaler"] is None
    assert set(state["ranks"][0]) == {"rng", "meter"}
    assert TrainConfig.from_dict(state["config"]) == TrainConfig.from_dict(
        R.RunDir(straight_run).read_config()
    )
