"""End-to-end tests of the main job, ``analyses/deep_linear_divergence.py``.

The real Fashion-MNIST is used when it is installed (``make test`` installs it); otherwise
the tests ask for the synthetic data set by name (never a silent fallback in the script).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from stability.paper import data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "deep_linear_divergence.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("deep_linear_divergence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SWEEP = _load_script()


def _dataset_args() -> list[str]:
    try:
        data.fashion_mnist_candidates()
        data.load_arrays("fashion-mnist", "test", subset=1)
        return ["--dataset", "fashion-mnist"]
    except FileNotFoundError:
        return ["--dataset", "synthetic"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "run"
    assert SWEEP.main(["--quick", "--no-progress", "--out", str(out), *_dataset_args()]) == 0
    return out


def test_quick_writes_every_file(quick_run):
    """records, config, summary, losses, the figure and the CSV behind each panel."""
    names = {p.name for p in quick_run.iterdir()}
    expected = {
        "records.parquet", "config.json", "summary.csv", "losses.csv",
        "deep_linear_divergence.png", "deep_linear_divergence_a_iterations.csv",
        "deep_linear_divergence_b_depth_profile.csv", "deep_linear_divergence_c_coherence.csv",
        "deep_linear_divergence_d_growth.csv",
    }  # fmt: skip
    assert expected <= names
    summary = pd.read_csv(quick_run / "summary.csv")
    assert len(summary) == 3 * 3  # 3 norms x 3 learning rates x 1 seed
    records = pd.read_parquet(quick_run / "records.parquet")
    assert list(records.columns) == [
        "norm", "lr", "seed", "step", "layer", "layer_idx", "call_idx", "metric", "value"
    ]  # fmt: skip
    assert set(records["layer"]) == {f"layers.{i}" for i in range(50)}
    config = json.loads((quick_run / "config.json").read_text())
    assert config["depth"] == 50 and config["width"] == 64


def test_same_seed_reproduces_the_summary(quick_run, tmp_path):
    """Running the same command again gives the same summary table."""
    out = tmp_path / "again"
    assert SWEEP.main(["--quick", "--no-progress", "--out", str(out), *_dataset_args()]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(quick_run / "summary.csv"), pd.read_csv(out / "summary.csv")
    )


def test_wn_diverges_at_lr_0p1_and_bn_does_not(tmp_path):
    """The paper's claim at lr 0.1: WN diverges within 100 iterations, its fitted per-layer
    growth factor rising above 1 (and above its value at initialization) on the way, while
    BN trains through all 100 iterations."""
    out = tmp_path / "claim"
    args = ["--norms", "wn,bn", "--lrs", "0.1", "--seeds", "0", "--iters", "100",
            "--train-subset", "4096", "--no-progress", "--out", str(out)]  # fmt: skip
    args += _dataset_args()
    assert SWEEP.main(args) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("norm")
    wn, bn = summary.loc["wn"], summary.loc["bn"]
    assert bool(wn["diverged"]) and wn["iteration"] < 100
    assert wn["growth_factor_max_before"] > max(1.0, wn["growth_factor_start"])
    assert not bool(bn["diverged"]) and bn["iteration"] == 100
    records = pd.read_parquet(out / "records.parquet")
    wn_steps = records.loc[records["norm"] == "wn", "step"]
    assert wn_steps.max() == wn["iteration"]  # records kept up to and including the onset


def test_existing_out_is_never_overwritten(quick_run, capsys):
    """An --out that already holds files is a one-line error; nothing is touched."""
    before = {p.name: p.stat().st_mtime_ns for p in quick_run.iterdir()}
    assert SWEEP.main(["--quick", "--no-progress", "--out", str(quick_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(quick_run) in err and "\n" not in err
    assert {p.name: p.stat().st_mtime_ns for p in quick_run.iterdir()} == before


@pytest.mark.parametrize(
    "flag, value",
    [("--lrs", "0.1,-1"), ("--norms", "wn,np"), ("--iters", "0"), ("--seeds", "a"),
     ("--dataset", "mnist"), ("--threshold", "0")],
)  # fmt: skip
def test_bad_values_are_one_line_errors(flag, value, tmp_path):
    """argparse rejects each bad value with a message naming the flag, exit code 2."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), flag, value, "--out", str(tmp_path / "x")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert flag in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_missing_data_dir_names_the_path(tmp_path, monkeypatch, capsys):
    """A data set that is not found is an error naming the paths tried (no fallback)."""
    missing = tmp_path / "nowhere"
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    monkeypatch.setenv("NORMSTAB_DATA", str(tmp_path / "no-env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    code = SWEEP.main(["--quick", "--no-progress", "--data-dir", str(missing),
                       "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
