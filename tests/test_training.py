"""Tests for training (``stability.paper.training``), run directories
(``stability.records.runs``) and the ``analyses/train.py`` CLI.

References: the schedules against their closed forms evaluated with numpy; the paper's
hyper-parameters against the numbers of section 4.1 (footnote 3) and 4.2; resume against
an uninterrupted run of the same config (bitwise-equal history and records on the CPU);
the divergence report against a brute-force scan of the saved records. Data is a tiny
Fashion-MNIST-format idx set written by the tests (so the real augmentation path runs) or
the named ``synthetic`` data set; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stability.paper import training as T
from stability.paper.normalization import NORM_KINDS
from stability.records import runs as R

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "train.py"


def _load_cli():
    spec = importlib.util.spec_from_file_location("train_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_cli()


# --------------------------------------------------------------------------- fixtures


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file (the MNIST format): magic 0 0 0x08 ndim, big-endian sizes, uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory) -> Path:
    """A Fashion-MNIST-format data set of 64 train / 16 test random 28x28 images."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


def tiny_config(out: Path, data_dir: Path | None = None, **overrides) -> T.TrainConfig:
    """cifar10-nv on the tiny idx data: 3 steps of 4 per epoch, 2 epochs, CPU."""
    values = dict(
        model="cifar10_nv",
        norm="bn",
        dataset="fashion-mnist",
        data_dir=str(data_dir) if data_dir is not None else None,
        subset=(12, 4),
        epochs=2,
        batch_size=4,
        lr=0.01,
        final_lr=1e-4,
        schedule="linear",
        weight_every=2,
        check_every=2,
        device="cpu",
        out=str(out),
    )
    values.update(overrides)
    return T.TrainConfig(**values)


def history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / R.HISTORY).drop(columns="seconds")


def records(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / R.RECORDS)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("lr0,final", [(0.01, 1e-5), (0.1, 0.0), (0.01, 1e-4)])
def test_linear_schedule_matches_formula(lr0, final):
    total = 97
    steps = np.arange(0, total + 1)
    expected = lr0 + (final - lr0) * steps / total  # numpy, the closed form
    got = np.array([T.linear_lr(int(t), total, lr0, final) for t in steps])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert got[0] == lr0 and got[-1] == pytest.approx(final, abs=1e-18)
    assert T.linear_lr(total + 5, total, lr0, final) == got[-1]  # clamped past the end


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_poly_schedule_matches_formula(power):
    lr0, final, total = 0.1, 1e-5, 50
    t = np.arange(0, total + 1)
    expected = final + (lr0 - final) * (1 - t / total) ** power
    got = np.array([T.poly_lr(int(s), total, lr0, final, power) for s in t])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(lr0) and got[-1] == pytest.approx(final)
    assert np.all(np.diff(got) <= 0)


def test_step_schedule_sets_the_optimizer_lr():
    """StepSchedule puts schedule_lr(t) into the optimizer at step t, exactly."""
    config = T.TrainConfig(schedule="poly", power=2.0, lr=0.1, final_lr=1e-3)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = T.StepSchedule(optimizer, lambda t: T.schedule_lr(config, t, 6))
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [1e-3 + (0.1 - 1e-3) * (1 - t / 6) ** 2 for t in range(6)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert "lr_fn" not in schedule.state_dict()


# --------------------------------------------------------------------------- config, presets


def test_paper_presets_match_the_paper():
    """Section 4.1 footnote 3 (cifar10-nv) and section 4.2 (ResNet-50)."""
    expected = {  # norm: (schedule, final lr, wd); power 2 for poly
        "np": ("poly", 1e-5, 1e-3),
        "trelu": ("poly", 1e-5, 1e-3),
        "wn": ("linear", 1e-4, 0.0),
        "bn": ("linear", 1e-5, 2e-3),
        "none": ("linear", 1e-5, 0.0),
    }
    for norm, (schedule, final, wd) in expected.items():
        c = T.preset_config("cifar10_nv", norm, "paper")
        assert (c.dataset, c.epochs, c.batch_size, c.lr, c.momentum) == (
            "cifar10",
            256,
            128,
            0.01,
            0.9,
        )
        assert (c.schedule, c.final_lr, c.wd) == (schedule, final, wd)
        if schedule == "poly":
            assert c.power == 2.0
        assert c.out == str(Path("runs") / f"cifar10_nv-{norm}-paper")
    for norm in NORM_KINDS:
        c = T.preset_config("resnet50", norm, "paper")
        assert (c.dataset, c.epochs, c.batch_size, c.lr) == ("imagenet", 120, 256, 0.1)
        assert (c.schedule, c.power, c.final_lr, c.wd, c.momentum) == ("poly", 2.0, 0.0, 1e-4, 0.9)


def test_smoke_presets_use_fashion_mnist_and_keep_the_optimizer():
    c = T.preset_config("cifar10_nv", "np", "smoke")
    assert c.dataset == "fashion-mnist" and c.subset is not None and c.epochs <= 3
    assert (c.schedule, c.final_lr, c.wd, c.lr) == ("poly", 1e-5, 1e-3, 0.01)
    r = T.preset_config("resnet50", "wn", "smoke")
    assert r.image_size <= 28 and r.subset[0] <= 1024
    assert r.lr == pytest.approx(0.1 * r.batch_size / 256)
    assert T.preset_config("resnet50", "wn", "smoke", epochs=1).epochs == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"norm": "layer"},
        {"model": "vgg"},
        {"lr": 0.0},
        {"lr": -1.0},
        {"final_lr": 1.0},
        {"schedule": "cosine"},
        {"amp": "fp8"},
        {"epochs": 0},
        {"subset": (1, 2, 3)},
        {"image_size": 32},  # cifar10_nv needs 28x28
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        T.TrainConfig(**bad)


def test_config_round_trips_through_json():
    c = T.TrainConfig(subset=5, include=["conv*"], data_dir=Path("/x"))
    assert c.subset == (5, 5) and c.include == ("conv*",) and c.data_dir == "/x"
    again = T.TrainConfig.from_dict(json.loads(json.dumps(c.to_dict() | {"meta": {}})))
    assert again == c
    assert c.differences(dataclasses.replace(c, device="cuda", lr=0.5)) == {"lr": (0.01, 0.5)}


def test_topk_correct_against_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g)
    target = torch.randint(0, 10, (50,), generator=g)
    got = T.topk_correct(logits, target, (1, 5)).tolist()
    ranks = [(logits[i] > logits[i, target[i]]).sum().item() for i in range(50)]
    assert got == [sum(r < 1 for r in ranks), sum(r < 5 for r in ranks)]
    assert T.topk_correct(logits[:, :3], target % 3, (1, 5))[1] == 50  # k capped at C


# --------------------------------------------------------------------------- smoke training


@pytest.mark.parametrize("norm", NORM_KINDS)
def test_smoke_training_every_norm(tmp_path, norm):
    """One epoch of cifar10-nv on synthetic data: every file of the run directory."""
    config = T.TrainConfig(
        model="cifar10_nv", norm=norm, dataset="synthetic", subset=(8, 4), epochs=1,
        batch_size=4, weight_every=1, device="cpu", out=str(tmp_path / norm),
    )  # fmt: skip
    result = T.train(config, progress=False)
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
    assert set(frame["layer"]) == convs
    assert set(frame["metric"]) >= {"output_norm", "grad_norm", "coherence"}
    depth = frame.drop_duplicates("layer").set_index("layer")["layer_idx"]
    assert [depth[f"conv{i}"] for i in range(1, 10)] == list(range(9))  # depth order
    meta = json.loads((run / R.CONFIG).read_text())["meta"]
    assert meta["steps_per_epoch"] == 2 and meta["world_size"] == 1
    assert json.loads((run / R.STATUS).read_text())["state"] == "finished"


@pytest.mark.slow
def test_resnet50_on_grey_images(tmp_path, tiny_fmnist):
    """ResNet-50 takes 1-channel 28x28 Fashion-MNIST (repeated to RGB)."""
    config = T.TrainConfig(
        model="resnet50", norm="wn", dataset="fashion-mnist", data_dir=str(tiny_fmnist),
        image_size=28, subset=(8, 4), epochs=1, batch_size=4, lr=0.0125, schedule="poly",
        final_lr=0.0, weight_every=100, device="cpu", out=str(tmp_path / "r50"),
    )  # fmt: skip
    result = T.train(config, progress=False)
    assert result.status == "finished"
    frame = records(tmp_path / "r50")
    order = frame.drop_duplicates("layer").sort_values("layer_idx")["layer"].tolist()
    assert order[0] == "conv1" and order[-1] == "fc" and len(order) == 54


def test_bf16_autocast_trains(tmp_path):
    config = T.TrainConfig(
        dataset="synthetic", subset=(4, 4), epochs=1, batch_size=4, amp="bf16", device="cpu",
        out=str(tmp_path / "bf16"),
    )  # fmt: skip
    result = T.train(config, progress=False)
    assert result.status == "finished" and np.isfinite(result.history["train_loss"]).all()


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_fmnist) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert T.train(tiny_config(out, tiny_fmnist), progress=False).status == "finished"
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(history(a), history(b))
    pd.testing.assert_frame_equal(records(a), records(b))


def test_resume_at_an_epoch_boundary_is_identical(tmp_path, tiny_fmnist, straight_run):
    out = tmp_path / "run"
    first = T.train(tiny_config(out, tiny_fmnist), progress=False, max_steps=3)
    assert (first.status, first.epoch, first.step) == ("stopped", 1, 3)
    again = T.train(tiny_config(out, tiny_fmnist), progress=False, resume=True)
    assert (again.status, again.epoch, again.step) == ("finished", 2, 6)
    _assert_same_run(straight_run, out)
    assert sorted(records(out)["step"].unique()) == list(range(6))  # contiguous steps


def test_resume_mid_epoch_twice_is_identical(tmp_path, tiny_fmnist, straight_run):
    out = tmp_path / "run"
    assert T.train(tiny_config(out, tiny_fmnist), progress=False, max_steps=1).step == 1
    status = json.loads((out / R.STATUS).read_text())
    assert (status["state"], status["epoch"], status["batch"]) == ("stopped", 0, 1)
    mid = T.train(tiny_config(out, tiny_fmnist), progress=False, resume=True, max_steps=5)
    assert (mid.status, mid.epoch, mid.step) == ("stopped", 1, 5)
    T.train(tiny_config(out, tiny_fmnist), progress=False, resume=True)
    _assert_same_run(straight_run, out)
    assert len(R.RunDir(out).parts()) == 4  # 1 | 2 + epoch end | 1 | 1


def test_sigterm_checkpoints_and_resumes_identically(tmp_path, tiny_fmnist, straight_run):
    out = tmp_path / "run"

    def kill_at_step_4(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    result = T.train(tiny_config(out, tiny_fmnist), progress=False, on_step=kill_at_step_4)
    assert (result.status, result.reason, result.step) == ("stopped", "SIGTERM", 4)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    assert json.loads((out / R.STATUS).read_text())["reason"] == "SIGTERM"
    T.train(tiny_config(out, tiny_fmnist), progress=False, resume=True)
    _assert_same_run(straight_run, out)


def test_resume_with_loader_workers_keeps_the_order(tmp_path):
    """Mid-epoch resume with worker processes skips batches in the sampler (no loading).

    Synthetic samples are a pure function of their index, so the records of the resumed
    run equal the uninterrupted run's exactly when the sample order is right.
    """

    def config(out):
        return T.TrainConfig(
            dataset="synthetic", subset=(12, 4), epochs=1, batch_size=4, weight_every=2,
            device="cpu", num_workers=0, out=str(out),
        )  # fmt: skip

    T.train(config(tmp_path / "a"), progress=False)
    T.train(config(tmp_path / "b"), progress=False, max_steps=2)
    workers = dataclasses.replace(config(tmp_path / "b"), num_workers=1)  # a runtime field
    T.train(workers, progress=False, resume=True)
    _assert_same_run(tmp_path / "a", tmp_path / "b")


def test_a_different_seed_gives_different_records(tmp_path, tiny_fmnist, straight_run):
    """Control: the identity checks above are sensitive to the data order."""
    out = tmp_path / "run"
    T.train(tiny_config(out, tiny_fmnist, seed=1), progress=False, max_steps=2)
    first_two = records(straight_run).query("step < 2").reset_index(drop=True)
    other = records(out)
    assert other[["step", "layer", "metric"]].equals(first_two[["step", "layer", "metric"]])
    assert not other["value"].equals(first_two["value"])


def test_history_lr_is_the_schedule_at_the_last_step(straight_run):
    config = T.TrainConfig.from_dict(json.loads((straight_run / R.CONFIG).read_text()))
    h = pd.read_csv(straight_run / R.HISTORY)
    total = int(h["step"].iloc[-1])
    for step, lr in zip(h["step"], h["lr"], strict=True):
        assert lr == pytest.approx(T.linear_lr(int(step) - 1, total, config.lr, config.final_lr))


def test_resume_refuses_a_changed_config(tmp_path, tiny_fmnist):
    out = tmp_path / "run"
    T.train(tiny_config(out, tiny_fmnist), progress=False, max_steps=1)
    with pytest.raises(ValueError, match="lr"):
        T.train(tiny_config(out, tiny_fmnist, lr=0.5), progress=False, resume=True)


def test_existing_run_needs_resume_or_force(tmp_path, tiny_fmnist):
    out = tmp_path / "run"
    T.train(tiny_config(out, tiny_fmnist), progress=False, max_steps=1)
    with pytest.raises(R.RunExistsError, match="--resume"):
        T.train(tiny_config(out, tiny_fmnist), progress=False)
    old = (out / R.STATUS).read_text()
    with pytest.warns(UserWarning, match="moved the existing run"):
        T.train(tiny_config(out, tiny_fmnist), progress=False, force=True, max_steps=1)
    (aside,) = tmp_path.glob("run.old-*")
    assert (aside / R.STATUS).read_text() == old  # moved, not deleted
    assert (aside / R.CHECKPOINT).is_file()


def test_corrupt_checkpoint_falls_back_to_the_previous(tmp_path, tiny_fmnist, straight_run):
    out = tmp_path / "run"
    T.train(tiny_config(out, tiny_fmnist), progress=False, max_steps=4)  # ckpts at 3 and 4
    data = (out / R.CHECKPOINT).read_bytes()
    (out / R.CHECKPOINT).write_bytes(data[: len(data) // 2])  # truncated
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        T.train(tiny_config(out, tiny_fmnist), progress=False, resume=True)
    messages = " | ".join(str(w.message) for w in caught)
    assert "resuming from" in messages and "checkpoint.prev.pt" in messages
    assert "record parts written after the checkpoint" in messages
    _assert_same_run(straight_run, out)
    assert list((out / "stale").rglob("part-*.parquet"))  # the orphan part, set aside


# --------------------------------------------------------------------------- divergence


def test_non_finite_loss_stops_and_names_the_first_layer(tmp_path):
    config = T.TrainConfig(
        model="cifar10_nv", norm="none", dataset="synthetic", subset=(16, 4), epochs=1,
        batch_size=4, lr=1e6, final_lr=1e6, check_every=1, device="cpu",
        out=str(tmp_path / "boom"),
    )  # fmt: skip
    result = T.train(config, progress=False)
    assert result.status == "diverged"
    info = json.loads((tmp_path / "boom" / R.DIVERGENCE).read_text())
    exact = {k: v for k, v in result.divergence.items() if k not in ("loss", "value")}
    assert {k: info[k] for k in exact} == exact
    assert info["loss"] == str(result.divergence["loss"])  # JSON has no nan: "nan"
    frame = records(tmp_path / "boom")
    # brute force: the first step with a non-finite output norm, then its shallowest layer
    bad = frame[(frame["metric"] == "output_norm") & ~np.isfinite(frame["value"])]
    first = bad[bad["step"] == bad["step"].min()].sort_values("layer_idx").iloc[0]
    assert (info["record_step"], info["layer"], info["layer_idx"]) == (
        first["step"],
        first["layer"],
        first["layer_idx"],
    )
    assert info["metric"] == "output_norm" and not np.isfinite(float(info["value"]))
    assert info["step"] >= info["record_step"] and info["stopped_at_step"] == info["step"] + 1
    assert not np.isfinite(float(info["loss"]))
    assert json.loads((tmp_path / "boom" / R.STATUS).read_text())["state"] == "diverged"
    with pytest.raises(ValueError, match="diverged"):
        T.train(config, progress=False, resume=True)


@pytest.mark.slow
def test_fp16_scaler_skips_are_not_divergence(tmp_path, monkeypatch):
    """An overflowing scaled gradient makes the GradScaler skip the step, not diverge."""
    original = torch.amp.GradScaler

    def huge_scale(device):
        return original(device, init_scale=2.0**100)  # scaled fp16 grads are inf

    monkeypatch.setattr(torch.amp, "GradScaler", huge_scale)
    config = T.TrainConfig(
        dataset="synthetic", subset=(8, 4), epochs=1, batch_size=4, amp="fp16", device="cpu",
        check_every=1, out=str(tmp_path / "fp16"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = T.train(config, progress=False)
    assert result.status == "finished"
    assert result.history["amp_scale"].iloc[0] < 2.0**100  # backed off


# --------------------------------------------------------------------------- run directory


def _frame(steps, value=1.0) -> pd.DataFrame:
    return pd.DataFrame(
        {"step": steps, "layer": "a", "layer_idx": 0, "call_idx": 0, "metric": "output_norm",
         "value": value}
    )  # fmt: skip


def test_parts_form_one_dataset_and_are_never_overwritten(tmp_path):
    run = R.RunDir(tmp_path)
    run.write_part(_frame([0, 1]), 0)
    run.write_part(_frame([2]), 1)
    assert run.write_part(_frame([])[:0], 2) is None  # empty: nothing written
    (tmp_path / R.RECORDS / ".part-00002.parquet.tmp-1").write_bytes(b"garbage")  # killed
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / R.RECORDS).sort_values("step", ignore_index=True),
        _frame([0, 1, 2]),
    )
    with pytest.raises(FileExistsError):
        run.write_part(_frame([3]), 1)


def test_ddp_parts_carry_the_rank(tmp_path):
    R.RunDir(tmp_path, rank=0, world_size=2).write_part(_frame([0]), 0)
    R.RunDir(tmp_path, rank=1, world_size=2).write_part(_frame([0], 2.0), 0)
    frame = pd.read_parquet(tmp_path / R.RECORDS).sort_values("rank")
    assert frame["rank"].tolist() == [0, 1] and frame["value"].tolist() == [1.0, 2.0]
    assert sorted(p.name for _, p in R.RunDir(tmp_path).parts(rank=-1)) == [
        "part-00000-rank0.parquet", "part-00000-rank1.parquet"
    ]  # fmt: skip


def test_history_round_trips_floats_exactly(tmp_path):
    run = R.RunDir(tmp_path)
    rows = [{c: float(i) + 0.1 for c in R.HISTORY_COLUMNS} for i in range(2)]
    rows[1]["test_loss"] = 1 / 3
    for row in rows:
        run.append_history(row)
    pd.testing.assert_frame_equal(run.read_history(), pd.DataFrame(rows))


def test_reconcile_sets_aside_and_repairs(tmp_path):
    run = R.RunDir(tmp_path)
    rows = [{c: float(i) for c in R.HISTORY_COLUMNS} for i in range(3)]
    for row in rows[:2]:
        run.append_history(row)
    for i in range(3):
        run.write_part(_frame([i]), i)
    with pytest.warns(UserWarning, match="after the checkpoint"):
        run.reconcile(rows, parts_written=2)  # a part the checkpoint does not know
    assert [i for i, _ in run.parts()] == [0, 1]
    assert len(run.read_history()) == 3  # the missing row appended from the checkpoint
    with pytest.warns(UserWarning, match="history.csv has 3 rows"):
        run.reconcile(rows[:1], parts_written=2)
    assert len(run.read_history()) == 1
    stale = list((tmp_path / "stale").rglob("*"))
    assert any(p.name == R.HISTORY for p in stale) and any(p.suffix == ".parquet" for p in stale)


def test_checkpoint_save_keeps_the_previous_and_load_falls_back(tmp_path):
    run = R.RunDir(tmp_path)
    assert run.load_checkpoint() is None
    run.save_checkpoint({"x": torch.tensor(1)})
    run.save_checkpoint({"x": torch.tensor(2)})
    assert run.load_checkpoint()["x"].item() == 2
    (tmp_path / R.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="resuming from"):
        assert run.load_checkpoint()["x"].item() == 1
    (tmp_path / R.PREVIOUS_CHECKPOINT).write_bytes(b"")
    with pytest.raises(RuntimeError, match="no readable checkpoint"):
        run.load_checkpoint()


def test_growth_report_style_pyarrow_reads_the_parts(tmp_path):
    """pyarrow's dataset API (what growth_report uses) reads the part directory."""
    import pyarrow.dataset as ds

    run = R.RunDir(tmp_path)
    run.write_part(_frame([0, 1]), 0)
    run.write_part(_frame([2]), 1)
    table = ds.dataset(tmp_path / R.RECORDS, format="parquet").to_table()
    assert sorted(table.column("step").to_pylist()) == [0, 1, 2]


def test_growth_report_reads_a_training_run(tmp_path):
    """The growth report reads the parts directory a training run streams its records to."""
    from stability.experiments import growth_report

    run = R.RunDir(tmp_path)
    for part, steps in enumerate([range(0, 3), range(3, 6)]):
        frame = pd.concat(
            [_frame(list(steps), 1.0).assign(layer=f"l{k}", layer_idx=k) for k in range(4)]
        )
        run.write_part(frame, part)
    config = growth_report.ReportConfig(metric="output_norm")
    report = growth_report.build_report(tmp_path, config)
    assert sorted(report.growth["step"]) == list(range(6))
    assert report.layers == ["l0", "l1", "l2", "l3"]


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "cifar10_nv", "--norm", "layer"], "invalid choice"),
        (["--model", "cifar10_nv", "--norm", "bn", "--lr", "0"], "positive number"),
        (["--model", "cifar10_nv", "--norm", "bn", "--lr", "-1"], "positive number"),
        (["--model", "cifar10_nv", "--norm", "bn", "--data-dir", "/no/such/dir"], "not a dir"),
        (["--norm", "bn"], "--model and --norm are required"),
        (["--out", "/no/such/run", "--resume"], "holds no run"),
        (["--model", "cifar10_nv", "--norm", "bn", "--resume", "--force"], "not allowed"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _cli_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--model", "cifar10_nv", "--norm", "wn", "--preset", "smoke", "--data-dir",
        str(data_dir), "--subset", "8", "--test-subset", "4", "--batch-size", "4",
        "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def test_cli_trains_and_refuses_an_existing_out(tmp_path, tiny_fmnist, capsys):
    out = tmp_path / "run"
    assert cli.main(_cli_args(out, tiny_fmnist, "--record-include", "conv1")) == 0
    assert "finished: 1 epochs, 2 steps" in capsys.readouterr().out
    stored = json.loads((out / R.CONFIG).read_text())
    assert (stored["preset"], stored["subset"], stored["final_lr"]) == ("smoke", [8, 4], 1e-4)
    assert set(records(out)["layer"]) == {"conv1"}
    assert cli.main(_cli_args(out, tiny_fmnist)) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and len(err.strip().splitlines()) == 1


def test_cli_resume_continues_and_rejects_changes(tmp_path, tiny_fmnist, capsys):
    out = tmp_path / "run"
    args = _cli_args(out, tiny_fmnist)
    args[args.index("--epochs") + 1] = "2"
    assert cli.main([*args, "--max-steps", "1"]) == 0
    with pytest.raises(SystemExit):
        cli.main(["--out", str(out), "--resume", "--lr", "0.5"])
    assert "cannot change --lr" in capsys.readouterr().err
    assert cli.main(["--out", str(out), "--resume", "--no-progress", "--device", "cpu"]) == 0
    assert history(out)["epoch"].tolist() == [1, 2]


@pytest.mark.slow
def test_cli_sigterm_exits_143_and_resumes(tmp_path, tiny_fmnist, capsys):
    """A real SIGTERM to the CLI process: checkpoint, exit status 143, then resume."""
    import time

    out = tmp_path / "run"
    args = _cli_args(out, tiny_fmnist)
    args[args.index("--epochs") + 1] = "50"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (out / R.HISTORY).exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until the first epoch is done
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    status = json.loads((out / R.STATUS).read_text())
    assert (status["state"], status["reason"]) == ("stopped", "SIGTERM")
    done = int(status["step"])
    assert R.RunDir(out).load_checkpoint()["progress"]["step"] == done
    steps = records(out)["step"]
    assert steps.max() == done - 1 and steps.nunique() == done  # flushed, contiguous
    resumed = ["--out", str(out), "--resume", "--no-progress", "--max-steps", str(done + 3)]
    assert cli.main(resumed) == 0
    steps = records(out)["step"]
    assert sorted(steps.unique()) == list(range(done + 3))  # continues, nothing truncated


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path, tiny_fmnist):
    """torchrun with 2 gloo processes: per-rank record parts, one history."""
    out = tmp_path / "ddp"
    args = _cli_args(out, tiny_fmnist)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(SCRIPT), *args]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = records(out)
    assert sorted(frame["rank"].unique()) == [0, 1]
    assert len(history(out)) == 1
    meta = json.loads((out / R.CONFIG).read_text())["meta"]
    assert (meta["world_size"], meta["batch_per_process"], meta["steps_per_epoch"]) == (2, 2, 2)


@pytest.mark.slow
def test_compiled_model_trains_and_records(tmp_path):
    config = T.TrainConfig(
        dataset="synthetic", subset=(8, 8), epochs=1, batch_size=8, compile=True, device="cpu",
        out=str(tmp_path / "compiled"),
    )  # fmt: skip
    result = T.train(config, progress=False)
    assert result.status == "finished"
    assert set(records(tmp_path / "compiled")["layer"]) == {f"conv{i}" for i in range(1, 10)}


@pytest.mark.slow
def test_sigkill_leaves_a_readable_prefix_and_resumes(tmp_path, tiny_fmnist):
    """SIGKILL mid-training (no chance to clean up): the record parts and history written so
    far are readable, the last complete checkpoint loads, and --resume continues with
    contiguous steps from it."""
    import time

    out = tmp_path / "run"
    args = _cli_args(out, tiny_fmnist)
    args[args.index("--epochs") + 1] = "50"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / R.HISTORY).exists() and len(history(out)) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kept = history(out)
    assert len(kept) >= 2
    steps = records(out)["step"]
    assert sorted(steps.unique()) == list(range(int(steps.max()) + 1))  # a contiguous prefix
    checkpoint_step = R.RunDir(out).load_checkpoint()["progress"]["step"]
    assert checkpoint_step >= int(kept["step"].iloc[1])
    target = checkpoint_step + 3
    assert (
        cli.main(["--out", str(out), "--resume", "--no-progress", "--max-steps", str(target)]) == 0
    )
    steps = records(out)["step"]
    assert sorted(steps.unique()) == list(range(target))  # continues, nothing lost or doubled


@pytest.mark.slow
def test_ddp_nan_on_one_rank_stops_every_rank(tmp_path, tiny_fmnist):
    """torchrun, 2 gloo processes; rank 1 alone sees a non-finite loss from its 2nd step on
    (fault injected through a sitecustomize that wraps LossWatch.update on rank 1). Both
    ranks must stop together and cleanly: exit 0, state "diverged", divergence.json, and
    record parts of both ranks ending at the same step."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    from stability.paper import training\n"
        "    original = training.LossWatch.update\n"
        "    calls = []\n"
        "    def update(self, loss):\n"
        "        calls.append(1)\n"
        "        return original(self, loss * float('nan') if len(calls) >= 2 else loss)\n"
        "    training.LossWatch.update = update\n"
    )
    out = tmp_path / "ddp"
    args = _cli_args(out, tiny_fmnist, "--check-every", "1")
    args[args.index("--epochs") + 1] = "4"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(SCRIPT), *args]  # fmt: skip
    path = os.pathsep.join([str(inject), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads((out / R.STATUS).read_text())
    assert status["state"] == "diverged"
    assert (out / "divergence.json").exists()
    frame = records(out)
    last = frame.groupby("rank")["step"].max()
    assert sorted(last.index) == [0, 1] and last.nunique() == 1  # stopped at the same step
    names = frame.groupby("rank")["layer"].agg(lambda v: tuple(sorted(set(v))))
    assert names.loc[0] == names.loc[1]  # identical layer names on both ranks
    assert int(last.iloc[0]) < 4 * 2 - 1  # stopped early (4 epochs x 2 steps otherwise)
