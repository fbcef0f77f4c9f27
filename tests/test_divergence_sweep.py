"""Tests of the main job's experiment, :func:`stability.experiments.divergence_sweep.run`.

The real Fashion-MNIST is used when it is installed (``make test`` installs it); otherwise
the tests ask for the synthetic data set by name (never a silent fallback).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from stability import fitting
from stability.experiments import divergence_sweep as sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_config(dataset_name):
    return dataclasses.replace(
        sweep.SweepConfig(),
        lrs=(1e-3, 0.1, 1.0),
        seeds=(0,),
        iters=40,
        subset=4096,
        dataset=dataset_name,
        progress=False,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, quick_config):
    return sweep.run(quick_config, tmp_path_factory.mktemp("quick") / "run")


def test_quick_writes_every_file(quick_run, quick_config):
    """records, config, summary, losses, the figure and the CSV behind each panel."""
    out = quick_run.out
    names = {p.name for p in out.iterdir()}
    expected = {
        "records.parquet", "config.json", "summary.csv", "losses.csv",
        "deep_linear_divergence.png", "deep_linear_divergence_a_iterations.csv",
        "deep_linear_divergence_b_depth_profile.csv", "deep_linear_divergence_c_coherence.csv",
        "deep_linear_divergence_d_growth.csv",
    }  # fmt: skip
    assert expected <= names
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3 * 3  # 3 norms x 3 learning rates x 1 seed
    records = pd.read_parquet(out / "records.parquet")
    assert list(records.columns) == [
        "norm", "lr", "seed", "step", "layer", "layer_idx", "call_idx", "metric", "value"
    ]  # fmt: skip
    assert set(records["layer"]) == {f"layers.{i}" for i in range(50)}
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads(json.dumps(dataclasses.asdict(quick_config)))  # the whole config


def test_same_seed_reproduces_the_summary(quick_run, tmp_path, quick_config):
    """Running the same config again gives the same summary table."""
    again = sweep.run(quick_config, tmp_path / "again")
    pd.testing.assert_frame_equal(quick_run.summary, again.summary)


def test_onset_is_the_one_divergence_rule(quick_run, quick_config):
    """Every run's iteration-to-divergence is fitting.divergence_onset over its records."""
    records = pd.read_parquet(quick_run.out / "records.parquet")
    for _, row in quick_run.summary.iterrows():
        mine = records[(records["norm"] == row["norm"]) & (records["lr"] == row["lr"])]
        onset = fitting.divergence_onset(mine.drop(columns=["norm", "lr", "seed"]))
        expected = onset.step if onset is not None else quick_config.iters
        assert (row["iteration"], bool(row["diverged"])) == (expected, onset is not None)
    assert quick_run.summary["diverged"].any()  # the check above saw a divergence


def test_growth_report_agrees_with_the_main_job(quick_run, tmp_path):
    """The growth report on a diverged run of the sweep finds the summary's onset step."""
    diverged = quick_run.summary[quick_run.summary["diverged"].astype(bool)]
    row = diverged[diverged["norm"] == "wn"].iloc[0]
    out = tmp_path / "report"
    where = f"norm=wn,lr={row['lr']},seed={row['seed']}"
    done = subprocess.run(
        [sys.executable, str(ROOT / "analyses" / "norm_growth.py"), str(quick_run.out),
         "--where", where, "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "growth_summary.json").read_text())
    assert summary["onset"]["step"] == row["iteration"]


def test_wn_diverges_at_lr_0p1_and_bn_does_not(tmp_path, quick_config):
    """The paper's claim at lr 0.1: WN diverges within 100 iterations, its fitted per-layer
    growth factor rising above 1 (and above its value at initialization) on the way, while
    BN trains through all 100 iterations."""
    config = dataclasses.replace(
        quick_config, norms=("wn", "bn"), lrs=(0.1,), seeds=(0,), iters=100, subset=4096
    )
    result = sweep.run(config, tmp_path / "claim")
    summary = result.summary.set_index("norm")
    wn, bn = summary.loc["wn"], summary.loc["bn"]
    assert bool(wn["diverged"]) and wn["iteration"] < 100
    assert wn["growth_factor_max_before"] > max(1.0, wn["growth_factor_start"])
    assert not bool(bn["diverged"]) and bn["iteration"] == 100
    records = pd.read_parquet(result.out / "records.parquet")
    wn_steps = records.loc[records["norm"] == "wn", "step"]
    assert wn_steps.max() == wn["iteration"]  # records kept up to and including the onset


def test_batch_larger_than_data_is_an_error_before_any_file(tmp_path, quick_config):
    config = dataclasses.replace(quick_config, subset=100, batch_size=256)
    with pytest.raises(ValueError, match="--batch-size 256 exceeds the 100"):
        sweep.run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_format_table_has_one_row_per_lr(quick_run, quick_config):
    lines = sweep.format_table(quick_run.summary).splitlines()
    assert len(lines) == 2 + len(quick_config.lrs)
    assert lines[1].split() == ["lr", *quick_config.norms]
