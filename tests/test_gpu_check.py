"""Tests for ``analyses/gpu_check.py`` (through a subprocess) and its table.

Without CUDA the script must refuse at once, in one line, writing nothing; ``--dry-run``
must run the whole plan on the CPU and write the table with every part of the plan.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from stability.experiments.gpu_check import COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "gpu_check.py"
TINY = ["--batch", "2", "--image", "32", "--steps", "1", "--monitor-steps", "12"]


def _script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_exits_2_with_one_line_and_writes_nothing(tmp_path):
    done = _script("--out", str(tmp_path / "x"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "CUDA is not available" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "x").exists()


def test_bad_argument_is_one_line(tmp_path):
    done = _script("--dry-run", "--batch", "0", "--out", str(tmp_path / "x"), timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


def _check_table(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "gpu_check.csv")
    assert list(table.columns) == COLUMNS
    assert {"throughput", "host syncs", "monitor"} <= set(table.part)
    by = table.set_index("measurement")
    for variant in ("no hooks", "recorder", "naive .item() hooks"):
        assert by.loc[f"ResNet-50 {variant}", "value"] > 0
    ratio = by.loc["ResNet-50 no hooks", "value"] / by.loc["ResNet-50 recorder", "value"]
    assert by.loc["recorder / no hooks", "value"] == pytest.approx(1 / ratio, rel=1e-9)
    assert by.loc["latency (max)", "value"] == 0  # on a CPU values are read at once
    assert table.loc[table.part == "host syncs", "note"].str.contains("CUDA only").all()
    assert json.loads((out / "config.json").read_text())["config"]["dry_run"] is True
    assert "| throughput | ResNet-50 recorder |" in (out / "report.md").read_text()
    return table


@pytest.mark.slow  # minutes on 2 cores: ResNet-50 steps on CPU
def test_dry_run_writes_the_table_without_the_tests(tmp_path):
    out = tmp_path / "dry"
    done = _script("--dry-run", "--no-tests", *TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    table = _check_table(out)
    assert "tests" not in set(table.part)
    assert "GPU check, CPU dry run" in done.stdout


@pytest.mark.slow
def test_dry_run_collects_the_gpu_tests(tmp_path):
    out = tmp_path / "dry"
    done = _script("--dry-run", *TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    tests = _check_table(out).set_index("part").loc["tests"]
    assert tests.measurement == "gpu-marked tests collected" and tests.value >= 1
    assert bool(tests.ok)
