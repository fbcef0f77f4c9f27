"""The main job's script, ``analyses/deep_linear_divergence.py``, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "deep_linear_divergence.py"


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
        timeout=600, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_preset_quick_end_to_end_and_flags_override_it(tmp_path, dataset_name):
    """``--preset quick`` (abbreviated, as argparse allows) with one flag overridden."""
    out = tmp_path / "run"
    done = run_script("--pre", "quick", "--it", "5", "--no-progress", "--threads", "1",
                      "--dataset", dataset_name, "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["iters"], config["seeds"], config["subset"]) == (5, [0], 4096)
    assert config["threads"] == 1
    assert "median iterations to divergence" in done.stdout and str(out) in done.stdout


def test_existing_out_is_never_overwritten(tmp_path):
    """An --out that already holds files is a one-line error; nothing is touched."""
    (tmp_path / "keep.txt").write_text("mine")
    done = run_script("--preset", "quick", "--out", str(tmp_path))
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.startswith("deep_linear_divergence.py: error:") and str(tmp_path) in err
    assert "\n" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_out_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("mine")
    done = run_script("--preset", "quick", "--out", str(tmp_path / "file" / "sub"))
    assert done.returncode == 2 and "is a file" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize(
    "flag, value",
    [("--lrs", "0.1,-1"), ("--norms", "wn,np"), ("--iters", "0"), ("--seeds", "a"),
     ("--dataset", "mnist"), ("--threshold", "0"), ("--preset", "huge")],
)  # fmt: skip
def test_bad_values_are_one_line_errors(flag, value, tmp_path):
    """argparse rejects each bad value with a message naming the flag, exit code 2."""
    done = run_script(flag, value, "--out", str(tmp_path / "x"))
    assert done.returncode == 2
    assert flag in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_missing_data_dir_names_the_path(tmp_path):
    """A --data-dir that does not exist is an error naming it (no fallback to other data)."""
    missing = tmp_path / "nowhere"
    done = run_script("--preset", "quick", "--data-dir", str(missing), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert str(missing) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_help_is_instant_and_does_not_import_torch():
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    assert done.returncode == 0 and "--preset" in done.stdout
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()]
    assert "torch" not in imported and "pandas" not in imported
    assert elapsed < 10  # generous: a loaded machine; without torch it takes ~0.1 s
