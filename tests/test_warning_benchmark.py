"""The warning benchmark: its scoring by hand, its config, and the script end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stability import fitting
from stability.experiments.warning_benchmark import BenchmarkConfig, scoring
from stability.experiments.warning_benchmark.workloads import BenchRun
from tests.warning_support import ramp_run

SCRIPT = Path(__file__).resolve().parents[1] / "analyses" / "warning_benchmark.py"


def _signals(workload, onset, jumps, losses, regime="abrupt", split="reporting", stable="stable"):
    n = len(jumps)
    return {
        "workload": workload,
        "lr": 0.1,
        "seed": 0,
        "split": split,
        "onset": onset,
        "regime": regime if onset is not None else stable,
        "step": np.arange(n),
        "records": np.arange(n),
        "jump": np.asarray(jumps, float),
        "loss_ratio": np.asarray(losses, float),
    }


def test_outcomes_leads_and_false_alarms_by_hand():
    runs = [
        _signals("w", 6, [1, 1, 1, 5, 9, 9, 9], [1, 1, 1, 3, 3, 3, 3]),  # warns at 3: lead 3
        _signals("w", 3, [1, 1, 1, 9, 9], [1, 1, 1, 3, 3]),  # warns at the onset: a miss
        _signals("w", None, [9, 1, 1, 1, 5], [3, 1, 1, 1, 1]),  # rms surge, flat loss
        _signals("w", None, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
        _signals("w", None, [1, 1, 9, 9, 9], [1, 1, 3, 3, 3], stable="undecided"),  # left out
    ]
    with_loss = scoring.outcomes(runs, 4.0, 2.0, 2)
    assert with_loss["warn"].tolist()[:2] == [3, 3] and with_loss["lead"].tolist() == [
        3,
        0,
        0,
        0,
        0,
    ]
    assert with_loss["false_alarm"].tolist() == [False] * 5  # the undecided run is no alarm
    assert with_loss["undecided"].tolist() == [False] * 4 + [True]
    rms_only = scoring.outcomes(runs, 4.0, 0.0, 2)
    assert rms_only["false_alarm"].tolist() == [False, False, True, False, False]  # step 0 early
    late = scoring.outcomes(runs, 4.0, 2.0, 4)  # warm-up of 4 records: run 0 warns at 4
    assert late["warn"].tolist()[:2] == [4, 4] and late["lead"].tolist()[:2] == [2, 0]
    table = scoring.score(with_loss)
    (row,) = table.to_dict("records")
    assert row["recall"] == 0.5 and row["median_lead"] == 1.5 and row["false_alarms"] == 0.0
    assert row["runs"] == 4 and row["diverged"] == 2 and row["undecided"] == 1
    grid = scoring.grid_scores(runs)
    assert len(grid) == len(scoring.JUMPS) * len(scoring.LOSS_RATIOS) * len(scoring.WARMUPS)
    best = scoring.ceiling(grid)
    assert float(best["ceiling_lead"].iloc[0]) == grid[grid.false_alarms <= 0.02].median_lead.max()


def test_run_signals_labels_diverged_stable_and_undecided_runs():
    frame = ramp_run(ramp=True)[0]
    onset = fitting.divergence_onset(frame).step

    def signals(part):
        run = BenchRun("w", 0.1, 0, "tuning", part.reset_index(drop=True))
        return scoring.run_signals(run, 1e6)

    full = signals(frame)
    assert full["onset"] == onset and full["regime"] in ("abrupt", "slow")
    assert full["records"].tolist() == list(range(len(full["step"])))
    early = frame[frame["step"] <= 5]
    assert signals(early)["regime"] == "stable" and signals(early)["onset"] is None
    grown = early.copy()  # the same run, its last rms past sqrt(1e6) but not past 1e6
    last = (grown["metric"] == "output_rms") & (grown["step"] == 5)
    grown.loc[last, "value"] = 5e3
    assert signals(grown)["regime"] == "undecided" and signals(grown)["onset"] is None


def test_tune_prefers_no_false_alarms_then_recall_then_lead():
    grid = pd.DataFrame(
        {
            "jump": [2.0, 4.0, 8.0, 4.0],
            "loss_ratio": [0.0, 2.0, 2.0, 2.0],
            "warmup": [2, 2, 2, 10],
            "workload": ["w"] * 4,
            "regime": ["abrupt"] * 4,
            "recall": [1.0, 1.0, 0.5, 0.5],
            "false_alarms": [0.5, 0.0, 0.0, 0.0],
            "median_lead": [5.0, 3.0, 1.0, 1.0],
        }
    )
    assert scoring.tune(grid) == (4.0, 2.0, 2)


def test_config_is_checked():
    with pytest.raises(ValueError, match="disjoint"):
        BenchmarkConfig(tuning_seeds=(0,), reporting_seeds=(0,))
    with pytest.raises(ValueError, match="unknown workload"):
        BenchmarkConfig(workloads=("resnet",))
    with pytest.raises(ValueError, match="cifar_width"):
        BenchmarkConfig(cifar_width=0.0)
    assert BenchmarkConfig(lr_points=2).lrs("linear-wn") == (2e-3, 1.2e-2)


def test_script_end_to_end_and_refuses_a_used_folder(tmp_path):
    out = tmp_path / "bench"
    command = [
        sys.executable,
        str(SCRIPT),
        "--preset",
        "quick",
        "--workloads",
        "linear-wn",
        "--iters",
        "15",
        "--lr-points",
        "2",
        "--subset",
        "1024",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "| linear-wn |" in done.stdout
    for name in (
        "config.json",
        "runs.csv",
        "summary.csv",
        "report.md",
        "warning_benchmark.png",
        "grid_tuning.csv",
        "grid_reporting.csv",
    ):
        assert (out / name).is_file(), name
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["split"]) == {"tuning", "reporting"} and len(runs) == 4
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--out" in again.stderr and again.stderr.count("\n") == 1
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--workloads", "resnet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "resnet" in bad.stderr
