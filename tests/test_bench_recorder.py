"""Tests for the benchmarks of issue 7: ``analyses/bench_recorder.py`` and
``analyses/bn_runtime_share.py``.

No timing is asserted (timings belong in the benchmark's report). The references are:
hand-computed medians and ratios of synthetic block timings; the Recorder's own table for
the ``.item()`` baseline's values (the baseline must do the Recorder's work); the
profiler's raw self times (every microsecond attributed exactly once) and the known
module of each op in a small hand-built network; and the files and CSV columns the
scripts document.
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

from stability import Recorder
from stability.experiments import bench_recorder as bench
from stability.experiments import bn_runtime_share as share
from stability.paper.normalization import ResidualAdd, weight_norm

ROOT = Path(__file__).resolve().parents[1]


SUMMARY_COLUMNS = [
    "workload",
    "variant",
    "blocks",
    "median_ms",
    "iqr_ms",
    "min_ms",
    "ratio",
    "ratio_q1",
    "ratio_q3",
    "method",
]


# --------------------------------------------------------------------------- bench_recorder


def _blocks(seconds: dict[str, list[float]], workload: str = "resnet50") -> pd.DataFrame:
    rows = [
        (workload, variant, r, 10, t)
        for variant, times in seconds.items()
        for r, t in enumerate(times, start=1)
    ]
    return pd.DataFrame(rows, columns=["workload", "variant", "round", "steps", "seconds"])


def test_summary_medians_paired_ratios_and_amortized_weights():
    """Three rounds with known times: medians, IQR, paired ratios and the weight share
    ``(t[w10] - t[rec]) * 10 / 100 / t[none]`` computed by hand."""
    blocks = _blocks(
        {
            bench.NO_HOOKS: [1.0, 2.0, 1.0],
            bench.RECORDER: [1.02, 2.04, 1.03],
            bench.WEIGHTS_EVERY_10: [1.12, 2.24, 1.13],
        }
    )
    frame = bench.summarize(blocks)
    assert list(frame.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    summary = frame.set_index("variant")
    assert summary.loc[bench.NO_HOOKS, "median_ms"] == pytest.approx(1000.0)
    assert summary.loc[bench.NO_HOOKS, "iqr_ms"] == pytest.approx(500.0)  # q3 1.5, q1 1.0
    assert summary.loc[bench.NO_HOOKS, "ratio"] == pytest.approx(1.0)
    # paired ratios per round: 1.02, 1.02, 1.03 -> median 1.02
    assert summary.loc[bench.RECORDER, "ratio"] == pytest.approx(1.02)
    assert summary.loc[bench.RECORDER, "blocks"] == 3
    # weight share per round: 0.1*10/100/1 = 1%, 0.2*10/100/2 = 1%, 0.1*10/100/1 = 1%
    assert summary.loc[bench.WEIGHTS_AMORTIZED, "weight_share_pct"] == pytest.approx(1.0)
    # amortized ratio: recorder ratio + share, per round 1.03, 1.03, 1.04 -> 1.03
    assert summary.loc[bench.WEIGHTS_AMORTIZED, "ratio"] == pytest.approx(1.03)
    assert list(summary.index[:1]) == [bench.NO_HOOKS]


def test_targets_on_cpu_leave_cuda_targets_unjudged():
    blocks = _blocks({bench.NO_HOOKS: [1.0] * 3, bench.RECORDER: [1.04] * 3})
    summary = bench.summarize(blocks)
    targets = bench.evaluate_targets(summary, torch.device("cpu"), pd.DataFrame(), {})
    met = dict(zip(targets.target, targets.met, strict=True))
    assert met["ResNet-50 recorder every step / no hooks"] is True  # 1.04 <= 1.05
    assert met["ResNet-50 .item() baseline / recorder"] is None
    assert met["host syncs per recorded step"] is None
    quick = bench.evaluate_targets(summary, torch.device("cpu"), pd.DataFrame(), {}, quick=True)
    assert quick.met.isna().all()


def test_item_baseline_records_the_recorders_metrics():
    """The .item() baseline does the default Recorder's work: the same (step, layer, metric)
    rows, with the same values, over 3 steps (weights at step 0 only)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(5, 6)
    naive = bench.ItemRecorder(model)
    with Recorder(model) as rec:
        for _ in range(3):
            model(x).pow(2).mean().backward()
            rec.step()
            naive.step()
    naive.close()
    frame = rec.to_frame()
    expected = {(r.step, r.layer, r.metric): r.value for r in frame.itertuples()}
    got = {(step, layer, metric): value for step, layer, metric, value in naive.rows}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert not any(module._forward_hooks for module in model.modules())


def test_bench_recorder_quick_linear_writes_every_file(tmp_path):
    """--quick on the linear network (2 rounds, 200 memory steps): every file, the CSV
    columns, every variant, and bounded buffers."""
    out = tmp_path / "bench"
    argv = ["--quick", "--workloads", "deep_linear", "--rounds", "2", "--memory-steps", "200"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "blocks.csv",
        "summary.csv",
        "targets.csv",
        "memory.csv",
        "overhead.png",
        "overhead_deep_linear.csv",
        "memory.png",
        "memory_pending.csv",
        "memory_host.csv",
        "config.json",
        "report.md",
    }
    blocks = pd.read_csv(out / "blocks.csv")
    assert list(blocks.columns) == ["workload", "variant", "round", "steps", "seconds"]
    assert len(blocks) == 2 * len(bench.variant_factories())
    assert (blocks.seconds > 0).all()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert set(summary.variant) == set(bench.variant_factories()) | {bench.WEIGHTS_AMORTIZED}
    targets = pd.read_csv(out / "targets.csv")
    assert list(targets.columns) == ["target", "value", "bound", "met", "note"]
    memory = pd.read_csv(out / "memory.csv")
    assert set(memory["mode"]) == {"keep", "pop_frame"}
    assert list(memory.step[memory["mode"] == "keep"]) == [100, 200]
    assert (memory.pending_peak <= 100 + 3 * 4 + 3 * 3).all()
    assert (memory.pending_after_step == 0).all()  # flushed at every 100th step
    config = json.loads((out / "config.json").read_text())
    assert config["machine"]["torch_threads"] == 1 and config["lr"] == 0.0
    assert config["memory"]["rows"] == 200 * 12 + 2 * 9
    report = (out / "report.md").read_text()
    assert "| deep linear (50 x 64) | recorder |" in report


def test_bench_recorder_refuses_existing_output_and_bad_steps(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 2
    assert bench.main(["--steps", "15"]) == 2
    assert bench.main(["--workloads", "vgg", "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_compare_with_loads_another_recorder(tmp_path):
    """--compare-with: a copy of recorder.py becomes one more variant."""
    copy = tmp_path / "recorder_copy.py"
    copy.write_text((ROOT / "stability" / "records" / "recorder.py").read_text())
    recorder_class = bench.load_recorder_class(copy)
    factories = bench.variant_factories(("recorder_copy", recorder_class))
    assert "recorder (recorder_copy)" in factories
    model = nn.Linear(3, 2)
    probe = factories["recorder (recorder_copy)"](model, 100)
    model(torch.randn(2, 3)).sum().backward()
    probe.step()
    probe.close()
    assert len(probe.to_frame()) == 4 + 3
    with pytest.raises(ValueError, match="no Recorder"):
        empty = tmp_path / "empty.py"
        empty.write_text("x = 1\n")
        bench.load_recorder_class(empty)


@pytest.mark.slow
def test_bench_recorder_quick_end_to_end(tmp_path):
    """The full --quick path (ResNet-50 and the linear network), as CI would run it."""
    script = ROOT / "analyses" / "bench_recorder.py"
    command = [sys.executable, str(script), "--quick", "--out", str(tmp_path / "q")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = pd.read_csv(tmp_path / "q" / "summary.csv")
    assert set(summary.workload) == {"resnet50", "deep_linear"}
    assert (tmp_path / "q" / "overhead_resnet50.csv").exists()
    assert "ResNet-50 recorder every step / no hooks" in done.stdout


@pytest.mark.gpu
def test_recorder_makes_no_host_sync_and_item_baseline_does(tmp_path):
    """On CUDA: zero syncs per recorded step for the Recorder, at least one for .item()."""
    workload = bench.Workload("deep_linear", 64, 0, 10, 1, 0, False, False)
    trainer = bench.build_trainer(workload, torch.device("cuda"))
    trainer.step()
    factories = bench.variant_factories()
    chosen = {k: factories[k] for k in (bench.NO_HOOKS, bench.RECORDER, bench.ITEM_BASELINE)}
    syncs = bench.count_syncs(trainer, chosen, steps=5).set_index("variant")["syncs_per_step"]
    assert syncs[bench.NO_HOOKS] == 0
    assert syncs[bench.RECORDER] == 0
    assert syncs[bench.ITEM_BASELINE] >= 1


# --------------------------------------------------------------------------- bn_runtime_share


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
    assert share.label_modules(model) == 7  # conv, WeightNorm, bn, relu, residual, pool, fc
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    events = prof.events()
    pairs = share.attribute(events)
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
    categories, ops = share.category_times(pairs, steps=1, device_time=False)
    total_us = sum(e.self_cpu_time_total for e in cpu_events)
    assert categories.ms_per_step.sum() == pytest.approx(total_us / 1e3)
    assert categories.share.sum() == pytest.approx(1.0)
    assert ops.self_ms_per_step.sum() == pytest.approx(total_us / 1e3)
    assert list(categories.category) == list(share.CATEGORIES)


def test_name_rules_fallback():
    assert share.name_category("aten::add_") == "add"
    assert share.name_category("aten::cudnn_convolution") == "convolution"
    assert share.name_category("CudnnBatchNormBackward0") == "batch norm"
    assert share.name_category("aten::threshold_backward") == "relu"
    assert share.name_category("aten::cross_entropy_loss") == "other"
    assert share.module_category(nn.Sequential()) is None


def test_bn_runtime_share_quick_writes_every_file(tmp_path):
    """--quick (smaller input for the test): files, columns, shares summing to 1, BN only
    in the BN model and WN only in the WN model."""
    out = tmp_path / "share"
    argv = ["--quick", "--batch", "2", "--image", "32", "--devices", "cpu", "--out", str(out)]
    assert share.main(argv) == 0
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
    assert set(shares.category) == set(share.CATEGORIES)
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


def test_bn_runtime_share_errors_are_one_line(tmp_path):
    script = ROOT / "analyses" / "bn_runtime_share.py"
    command = [sys.executable, str(script), "--norms", "ln", "--out", str(tmp_path / "x")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()
