"""Tests for :mod:`stability.experiments.bn_runtime_share` and ``analyses/bn_runtime_share.py``.

The references are the profiler's raw self times (every microsecond attributed exactly
once), the known module of each op in a small hand-built network, and the files and CSV
columns the script documents.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from stability.experiments.bn_runtime_share import CATEGORIES, ShareConfig, run
from stability.experiments.bn_runtime_share.attribution import (
    attribute,
    category_times,
    label_modules,
    module_category,
    name_category,
)
from stability.paper.normalization import ResidualAdd, weight_norm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "bn_runtime_share.py"


class Block(nn.Module):
    """WN conv -> BN -> ReLU, a residual sum, max pool, flatten, Linear (each op's module
    is known, so each op's category is known)."""

    def __init__(self):
        super().__init__()
        self.conv = weight_norm(nn.Conv2d(3, 3, 3, padding=1))
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.residual = ResidualAdd()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        h = self.residual(self.relu(self.bn(self.conv(x))), x)
        return self.fc(torch.flatten(self.pool(h), 1))


def test_attribution_follows_modules_and_sequence_numbers():
    """A training step of Block: forward ops and their autograd nodes land in their module's
    category (WN's mul/div/norm and their backward in weight norm, the conv's backward in
    convolution); every event's self time is counted exactly once."""
    torch.manual_seed(0)
    model = Block()
    assert label_modules(model) == 7  # conv, WeightNorm, bn, relu, residual, pool, fc
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    events = prof.events()
    pairs = attribute(events)
    cpu_events = [e for e in events if e.device_type.name == "CPU"]
    assert sorted(id(e) for e, _ in pairs) == sorted(id(e) for e in cpu_events)
    by_name: dict[str, set[str]] = {}
    for event, category in pairs:
        by_name.setdefault(event.name, set()).add(category)
    expected = {
        "aten::native_batch_norm": "batch norm",
        "NativeBatchNormBackward0": "batch norm",
        "aten::linalg_vector_norm": "weight norm",
        "LinalgVectorNormBackward0": "weight norm",
        "ConvolutionBackward0": "convolution",
        "aten::convolution": "convolution",
        "ReluBackward0": "relu",
        "aten::max_pool2d": "pooling",
        "AddmmBackward0": "fc",
        "Optimizer.step#SGD.step": "optimizer",
    }
    for name, category in expected.items():
        assert by_name[name] == {category}, (name, by_name.get(name))
    assert by_name["MulBackward0"] == {"weight norm"}  # only WN multiplies here
    assert by_name["AddBackward0"] <= {"add", "weight norm"}  # residual sum; WN's + eps
    categories, ops = category_times(pairs, steps=1, device_time=False)
    total_us = sum(e.self_cpu_time_total for e in cpu_events)
    assert categories.ms_per_step.sum() == pytest.approx(total_us / 1e3)
    assert categories.share.sum() == pytest.approx(1.0)
    assert ops.self_ms_per_step.sum() == pytest.approx(total_us / 1e3)
    assert list(categories.category) == list(CATEGORIES)


def test_name_rules_fallback():
    assert name_category("aten::add_") == "add"
    assert name_category("aten::cudnn_convolution") == "convolution"
    assert name_category("CudnnBatchNormBackward0") == "batch norm"
    assert name_category("aten::threshold_backward") == "relu"
    assert name_category("aten::cross_entropy_loss") == "other"
    assert module_category(nn.Sequential()) is None


def test_quick_preset_writes_every_file(tmp_path):
    """The quick preset (smaller input for the test): files, columns, shares summing to 1,
    BN only in the BN model and WN only in the WN model."""
    out = tmp_path / "share"
    config = ShareConfig(
        preset="quick", out=out, devices=("cpu",), batch=2, image=32, steps=1, warmup=1, timed=2
    )
    run(config, log=lambda line: None)
    names = {p.name for p in out.iterdir()}
    assert names == {
        "runtime_share.csv",
        "runtime_share.png",
        "runtime_share_cpu.csv",
        "operators.csv",
        "step_times.csv",
        "config.json",
        "report.md",
    }
    shares = pd.read_csv(out / "runtime_share.csv")
    assert list(shares.columns) == ["category", "ms_per_step", "share", "device", "norm"]
    assert set(shares.category) == set(CATEGORIES)
    for norm, rows in shares.groupby("norm"):
        assert rows.share.sum() == pytest.approx(1.0)
        by = rows.set_index("category").share
        assert by["convolution"] > 0 and by["optimizer"] > 0
        if norm == "bn":
            assert by["batch norm"] > 0 and by["weight norm"] == 0
        else:
            assert by["weight norm"] > 0 and by["batch norm"] == 0
    ops = pd.read_csv(out / "operators.csv")
    assert list(ops.columns) == [
        "category",
        "name",
        "self_ms_per_step",
        "calls_per_step",
        "device",
        "norm",
    ]
    steps = pd.read_csv(out / "step_times.csv")
    assert list(steps.columns) == ["device", "norm", "wall_ms"] and (steps.wall_ms > 0).all()
    report = (out / "report.md").read_text()
    assert "batch norm takes" in report and "weight norm costs" in report
    assert not math.isnan(json.loads((out / "config.json").read_text())["setups"]["cpu"]["batch"])


def test_script_errors_are_one_line(tmp_path):
    command = [sys.executable, str(SCRIPT), "--norms", "ln", "--out", str(tmp_path / "x")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_quick_preset_script_end_to_end(tmp_path):
    """``--preset quick`` through the script, as CI would run it on a CPU."""
    out = tmp_path / "q"
    command = [sys.executable, str(SCRIPT), "--preset", "quick", "--devices", "cpu"]
    command += ["--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert set(pd.read_csv(out / "runtime_share.csv").norm) == {"bn", "wn"}
    assert "batch norm takes" in done.stdout
