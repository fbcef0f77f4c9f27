#!/usr/bin/env python
"""How much does the Recorder slow training down? Overhead, host syncs and memory (issue 7).

Every variant trains the same model instance in one process, interleaved round-robin
(the order rotates each round; the first round is a warm-up and is discarded):

    no hooks                      plain training step
    recorder                      Recorder(model): forward + gradient metrics every step
    recorder every 10             Recorder(model, every=10)
    recorder weights every 10     Recorder(model, weight_every=10)
    .item() baseline              the same metrics read with one .item() per value inside
                                  the hooks, weights every 100 steps (what common tools do)

One sample is the mean step time over a block of ``--steps`` training steps (forward,
backward, ``optimizer.step``, ``zero_grad``, ``rec.step()``), timed after one untimed step
on a freshly attached probe; ``--steps`` is a multiple of 10, so a block of an "every 10"
variant holds exactly one recorded (or weight) step. The learning rate is 0 (SGD,
momentum 0.9): every step does a training step's full work while the weights stay fixed,
so no variant sees other numbers (or denormals) than another. Ratios are paired: a
variant's block time over the no-hooks block of the same round; the tables give their
median and interquartile range. Weight metrics every 100 steps are amortized from the
measured weight steps: a weight step costs ``10 (t[weights every 10] - t[recorder])``
extra, so weights every 100 steps cost ``(t[weights every 10] - t[recorder]) / 10`` per
step, reported as a share of a no-hooks step. The default Recorder flushes every 100
steps; blocks are shorter, so the flush (one concatenation and copy per 100 steps) is not
in the timed blocks.

Workloads: ResNet-50 (CPU: batch 16 at 112x112; CUDA: batch 256 at 224x224, bf16
autocast, channels_last) and the paper's 50-layer linear network (batch 256), whose tiny
layers make it launch/Python-bound: the worst case for any hook-based tool.

Also: host syncs per recorded step on CUDA (``torch.cuda.set_sync_debug_mode("warn")``,
counted; skipped on CPU), and memory over ``--memory-steps`` steps of a small network
(device tensors waiting for a flush, host memory by tracemalloc and RSS, with and without
``pop_frame``, and ``torch.cuda.max_memory_allocated`` on CUDA).

    python analyses/bench_recorder.py --quick        # CI, well under a minute on 2 cores
    python analyses/bench_recorder.py                # the full benchmark (minutes on CPU)
    git show HEAD:stability/recorder.py > /tmp/recorder_before.py
    python analyses/bench_recorder.py --compare-with /tmp/recorder_before.py

Writes into ``--out`` (default ``runs/bench/<timestamp>``; files are never overwritten):
``blocks.csv`` (every timed block), ``summary.csv``, ``targets.csv``, ``memory.csv``,
``overhead.png`` and ``memory.png`` with the CSV behind each panel, ``config.json`` and
``report.md`` (the Markdown performance table).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from stability import Recorder
from stability import metrics as M
from stability.experiments.cli import OneLineParser, cpu_name, nonnegative_int, positive_int
from stability.paper.models import deep_linear, resnet50
from stability.records.recorder import select_modules

WEIGHT_EVERY = 100  # the default Recorder's weight schedule, amortized over this many steps
NO_HOOKS = "no hooks"
RECORDER = "recorder"
WEIGHTS_EVERY_10 = "recorder weights every 10"
WEIGHTS_AMORTIZED = "recorder weights every 100 (amortized)"
ITEM_BASELINE = ".item() baseline"
WORKLOADS = ("resnet50", "deep_linear")
LABELS = {"resnet50": "ResNet-50", "deep_linear": "deep linear (50 x 64)"}


# =========================================================================== workloads


@dataclass(frozen=True)
class Workload:
    """One model and input size, and how long to time it."""

    name: str
    batch: int
    image: int  # input height = width (ResNet-50); 0 for the linear network
    steps: int  # timed steps per block (a multiple of 10)
    rounds: int  # measured rounds
    warmup_rounds: int  # rounds run first and dropped
    amp: bool  # bf16 autocast
    channels_last: bool


def default_workloads(device: torch.device, quick: bool) -> dict[str, Workload]:
    """The issue's sizes; ``quick`` shrinks ResNet-50's input and the number of rounds."""
    cuda = device.type == "cuda"
    if quick:
        resnet = Workload("resnet50", 32 if cuda else 4, 112 if cuda else 64, 10, 1, 0, cuda, cuda)
        linear = Workload("deep_linear", 256, 0, 10, 5, 1, False, False)
    elif cuda:
        resnet = Workload("resnet50", 256, 224, 20, 10, 1, True, True)
        linear = Workload("deep_linear", 256, 0, 50, 30, 1, False, False)
    else:
        resnet = Workload("resnet50", 16, 112, 10, 5, 1, False, False)
        linear = Workload("deep_linear", 256, 0, 10, 30, 1, False, False)
    return {w.name: w for w in (resnet, linear)}


@dataclass
class Trainer:
    """A model, its optimizer and one fixed batch: ``step()`` is one training step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    amp: bool

    def step(self) -> None:
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_trainer(workload: Workload, device: torch.device, seed: int = 0) -> Trainer:
    """The workload's model (BN ResNet-50 or WN linear network) and a synthetic batch."""
    torch.manual_seed(seed)
    if workload.name == "resnet50":
        model = resnet50("bn")
        x = torch.randn(workload.batch, 3, workload.image, workload.image)
        classes = 1000
    else:
        model = deep_linear(depth=50, width=64, norm="wn")
        x = torch.randn(workload.batch, 784)
        classes = 10
    memory_format = torch.channels_last if workload.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format).train()
    x = x.to(device, memory_format=memory_format)
    y = torch.randint(0, classes, (workload.batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return Trainer(model, optimizer, x, y, workload.amp)


# =========================================================================== variants


class ItemRecorder:
    """The naive baseline: the default Recorder's metrics, one ``.item()`` per value.

    Forward hooks read ``||o||`` and ``||x||`` with ``.item()`` (``output_rms`` and ``gain``
    follow on the host), a tensor hook reads ``grad_norm`` with ``.item()``, and every
    ``weight_every`` steps the weight norm and both coherences are read the same way. On a
    GPU each ``.item()`` waits for the device: a host sync per value.
    """

    def __init__(self, model: nn.Module, weight_every: int = WEIGHT_EVERY) -> None:
        self.weight_every = weight_every
        self.step_count = 0
        self.rows: list[tuple[int, str, str, float]] = []
        self._handles = [
            module.register_forward_hook(partial(self._forward_hook, name))
            for name, module in select_modules(model)
        ]

    def _forward_hook(self, name: str, module: nn.Module, args, output) -> None:
        step, out, x = self.step_count, output, args[0]
        norm = M.output_norm(out).item()
        self.rows.append((step, name, "output_norm", norm))
        self.rows.append((step, name, "output_rms", norm / math.sqrt(out.numel())))
        self.rows.append((step, name, "gain", norm / M.output_norm(x).item()))
        if out.requires_grad:
            out.register_hook(partial(self._grad_hook, step, name))
        if step % self.weight_every == 0:
            with torch.no_grad():
                coherence = M.row_coherence(module.weight, groups=getattr(module, "groups", 1))
                self.rows.append((step, name, "weight_norm", M.weight_norm(module.weight).item()))
            self.rows.append((step, name, "coherence", coherence[0].item()))
            self.rows.append((step, name, "coherence_mean", coherence[1].item()))

    def _grad_hook(self, step: int, name: str, grad: torch.Tensor) -> None:
        self.rows.append((step, name, "grad_norm", M.output_norm(grad).item()))

    def step(self) -> None:
        self.step_count += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


Probe = Recorder | ItemRecorder
ProbeFactory = Callable[[nn.Module, int], "Probe | None"]  # (model, flush_every) -> probe


def load_recorder_class(path: Path) -> type:
    """The ``Recorder`` class defined in another copy of ``recorder.py`` (e.g. a git revision)."""
    if not path.is_file():
        raise FileNotFoundError(f"--compare-with {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"_bench_recorder_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "Recorder", None), type):
        raise ValueError(f"--compare-with {path}: the file defines no Recorder class")
    return module.Recorder


def _recorder(recorder_class: type = Recorder, **kwargs) -> ProbeFactory:
    def attach(model: nn.Module, flush_every: int = 100) -> Probe:
        return recorder_class(model, flush_every=flush_every, **kwargs)

    return attach


def variant_factories(compare: tuple[str, type] | None = None) -> dict[str, ProbeFactory]:
    """Variant name -> attach a fresh probe to a model (``None``: no hooks)."""
    factories: dict[str, ProbeFactory] = {
        NO_HOOKS: lambda model, flush_every=100: None,
        RECORDER: _recorder(),
        "recorder every 10": _recorder(every=10),
        WEIGHTS_EVERY_10: _recorder(weight_every=10),
        ITEM_BASELINE: lambda model, flush_every=100: ItemRecorder(model),
    }
    if compare is not None:
        label, recorder_class = compare
        factories[f"recorder ({label})"] = _recorder(recorder_class)
    return factories


# =========================================================================== timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(trainer: Trainer, probe: Probe | None, steps: int) -> float:
    """Mean seconds per training step over ``steps`` steps, after one untimed step."""

    def one_step() -> None:
        trainer.step()
        if probe is not None:
            probe.step()

    one_step()
    device = trainer.x.device
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def rotated(names: list[str], round_index: int) -> list[str]:
    """The variant order of one round: shifted by one each round, so none always goes first."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def time_workload(
    workload: Workload,
    trainer: Trainer,
    factories: dict[str, ProbeFactory],
    progress: Callable[[str], None] = print,
) -> pd.DataFrame:
    """One row per measured block: workload, variant, round, steps, seconds (per step)."""
    names = list(factories)
    rows = []
    for round_index in range(workload.warmup_rounds + workload.rounds):
        for name in rotated(names, round_index):
            probe = factories[name](trainer.model, 100)
            try:
                seconds = time_block(trainer, probe, workload.steps)
            finally:
                if probe is not None:
                    probe.close()
            if round_index >= workload.warmup_rounds:
                rows.append((workload.name, name, round_index, workload.steps, seconds))
        total = workload.warmup_rounds + workload.rounds
        progress(f"  {workload.name}: round {round_index + 1}/{total} done")
    return pd.DataFrame(rows, columns=["workload", "variant", "round", "steps", "seconds"])


# =========================================================================== summary


def _quartiles(values: pd.Series) -> tuple[float, float, float]:
    q1, median, q3 = np.nanquantile(values.to_numpy(dtype=float), [0.25, 0.5, 0.75])
    return float(q1), float(median), float(q3)


def _summary_row(workload: str, variant: str, seconds: pd.Series, ratio: pd.Series, method: str):
    s_q1, s_med, s_q3 = _quartiles(seconds)
    r_q1, r_med, r_q3 = _quartiles(ratio)
    return {
        "workload": workload,
        "variant": variant,
        "blocks": int(seconds.notna().sum()),
        "median_ms": 1e3 * s_med,
        "iqr_ms": 1e3 * (s_q3 - s_q1),
        "min_ms": 1e3 * float(seconds.min()),
        "ratio": r_med,
        "ratio_q1": r_q1,
        "ratio_q3": r_q3,
        "method": method,
    }


def summarize(blocks: pd.DataFrame) -> pd.DataFrame:
    """Per workload and variant: median step time, IQR, minimum, paired ratio to no hooks.

    Adds the amortized row ``recorder weights every 100``: per round,
    ``t[recorder] + (t[weights every 10] - t[recorder]) / 10`` (one weight step per 10
    steps measured, one per 100 wanted).
    """
    rows = []
    for workload, group in blocks.groupby("workload", sort=False):
        wide = group.pivot(index="round", columns="variant", values="seconds")
        wide = wide[list(dict.fromkeys(group["variant"]))]  # first-round order
        wide = wide[[NO_HOOKS] + [v for v in wide.columns if v != NO_HOOKS]]
        ratio = wide.div(wide[NO_HOOKS], axis=0)
        for variant in wide.columns:
            method = f"mean over blocks of {int(group['steps'].iloc[0])} steps"
            rows.append(_summary_row(workload, variant, wide[variant], ratio[variant], method))
        if {RECORDER, WEIGHTS_EVERY_10} <= set(wide.columns):
            extra = (wide[WEIGHTS_EVERY_10] - wide[RECORDER]) * 10 / WEIGHT_EVERY
            amortized = wide[RECORDER] + extra
            row = _summary_row(
                workload,
                WEIGHTS_AMORTIZED,
                amortized,
                amortized / wide[NO_HOOKS],
                "recorder + (weights every 10 - recorder) / 10",
            )
            row["weight_share_pct"] = 100 * float(np.nanmedian(extra / wide[NO_HOOKS]))
            rows.append(row)
    return pd.DataFrame(rows)


def _value(summary: pd.DataFrame, workload: str, variant: str, column: str) -> float:
    hit = summary[(summary.workload == workload) & (summary.variant == variant)]
    return float(hit[column].iloc[0]) if len(hit) else math.nan


def evaluate_targets(
    summary: pd.DataFrame,
    device: torch.device,
    syncs: pd.DataFrame,
    memory: dict,
    quick: bool = False,
) -> pd.DataFrame:
    """The issue's targets: value, bound, whether it is met, and why not judged if not.

    ``met`` is ``None`` for a target that does not apply to this device, for the deep
    linear network (no bound: reported), and for timing targets of a ``--quick`` run (its
    sizes are not the issue's).
    """
    cuda = device.type == "cuda"
    timing_note = "quick sizes: not judged" if quick else ""
    rows = []

    def target(name: str, value: float, bound: float, at_most: bool, note: str = "") -> None:
        met = None
        if not note and not math.isnan(value):
            met = bool(value <= bound) if at_most else bool(value >= bound)
        rows.append({"target": name, "value": value, "bound": bound, "met": met, "note": note})

    def resnet(variant: str, column: str) -> float:
        return _value(summary, "resnet50", variant, column)

    target(
        "ResNet-50 recorder every step / no hooks",
        resnet(RECORDER, "ratio"),
        1.03 if cuda else 1.05,
        True,
        timing_note,
    )
    target(
        "ResNet-50 weight metrics at weight_every=100 (% of a step)",
        resnet(WEIGHTS_AMORTIZED, "weight_share_pct"),
        1.0,
        True,
        timing_note,
    )
    target(
        "ResNet-50 .item() baseline / recorder",
        resnet(ITEM_BASELINE, "median_ms") / resnet(RECORDER, "median_ms"),
        1.5,
        False,
        timing_note if cuda else "CUDA target; on a CPU .item() does not wait",
    )
    counted = syncs[syncs.variant == RECORDER]["syncs_per_step"] if len(syncs) else []
    target(
        "host syncs per recorded step",
        float(counted.iloc[0]) if len(counted) else math.nan,
        0.0,
        True,
        "" if cuda else "CUDA only",
    )
    if memory:
        bound = memory["pending_bound"]
        target("device tensors awaiting a flush (max)", memory["pending_max"], bound, True)
    target(
        "deep linear recorder every step / no hooks",
        _value(summary, "deep_linear", RECORDER, "ratio"),
        math.nan,
        True,
        "reported (launch-bound; no bound set)",
    )
    return pd.DataFrame(rows)


# =========================================================================== host syncs


def count_syncs(trainer: Trainer, factories: dict[str, ProbeFactory], steps: int) -> pd.DataFrame:
    """Host syncs per step for each variant, counted by ``set_sync_debug_mode("warn")``.

    The Recorder is built with ``flush_every`` above ``steps``, so the copy to the host (a
    sync by design, once per flush) is outside the counted steps.
    """
    rows = []
    for name, factory in factories.items():
        probe = factory(trainer.model, steps + 1)
        synchronize(trainer.x.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    trainer.step()
                    if probe is not None:
                        probe.step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
                if probe is not None:
                    probe.close()
        count = sum("synchroniz" in str(w.message) for w in caught)
        rows.append({"variant": name, "steps": steps, "syncs_per_step": count / steps})
    return pd.DataFrame(rows)


# =========================================================================== memory


def small_network(device: torch.device) -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    ).to(device)


def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def memory_trace(device: torch.device, steps: int, pop_every: int | None) -> pd.DataFrame:
    """Train a 3-layer network ``steps`` steps under the default Recorder (flush every 100).

    Every 100 steps: the most device tensors that waited for a flush in those steps, the
    host memory traced by tracemalloc since the first flush, RSS, and CUDA memory. With
    ``pop_every`` the records are taken out with ``pop_frame()`` (and dropped) that often.
    """
    torch.manual_seed(0)
    model = small_network(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rec = Recorder(model, flush_every=100, weight_every=WEIGHT_EVERY)
    gc.collect()
    tracemalloc.start()
    rows, peak, base, popped = [], 0, None, 0
    try:
        for i in range(1, steps + 1):
            F.cross_entropy(model(x), y).backward()
            peak = max(peak, rec.pending_device_tensors)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rec.step()
            if pop_every and i % pop_every == 0:
                popped += len(rec.pop_frame())
            if i % 100 == 0:
                traced = tracemalloc.get_traced_memory()[0]
                base = traced if base is None else base
                rows.append(_memory_row(i, peak, rec, traced - base, device))
                peak = 0
    finally:
        tracemalloc.stop()
        rec.close()
    frame = pd.DataFrame(rows)
    frame.insert(0, "mode", "pop_frame" if pop_every else "keep")
    frame.attrs["rows"] = popped + len(rec.to_frame())
    return frame


def _memory_row(step: int, peak: int, rec: Recorder, traced: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "step": step,
        "pending_peak": peak,
        "pending_after_step": rec.pending_device_tensors,
        "traced_host_bytes": traced,
        "rss_bytes": _rss_bytes(),
        "cuda_allocated_bytes": torch.cuda.memory_allocated(device) if cuda else None,
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
    }


def memory_report(device: torch.device, steps: int) -> tuple[pd.DataFrame, dict]:
    """Both traces (records kept / popped every 1000 steps) and the numbers they give."""
    keep = memory_trace(device, steps, None)
    popped = memory_trace(device, steps, 1000)
    rows_total = keep.attrs["rows"]
    rows_per_step = rows_total / steps
    span = keep["step"].iloc[-1] - keep["step"].iloc[0]
    growth = keep["traced_host_bytes"].iloc[-1]
    per_layer_step = 3 * 4 + 3 * 3  # 3 layers x (3 forward + grad) + weight metrics
    stats = {
        "steps": steps,
        "rows": int(rows_total),
        "bytes_per_row": growth / (rows_per_step * span) if span else math.nan,
        "host_growth_keep_bytes": int(growth),
        "host_growth_pop_frame_bytes": int(popped["traced_host_bytes"].iloc[-1]),
        "host_max_pop_frame_bytes": int(popped["traced_host_bytes"].max()),
        "pending_max": int(max(keep["pending_peak"].max(), popped["pending_peak"].max())),
        "pending_bound": 100 + per_layer_step,
        "cuda_max_allocated_bytes": keep["cuda_max_allocated_bytes"].max(),
    }
    return pd.concat([keep, popped], ignore_index=True), stats


# =========================================================================== figures


def draw_overhead(summary: pd.DataFrame, out: Path, bounds: dict[str, float]) -> list[Path]:
    """One panel per workload: paired ratio to no hooks, median with IQR whiskers."""
    from stability.experiments.plotting import new_figure, save_figure

    workloads = list(summary["workload"].unique())
    fig, axes = new_figure(1, len(workloads), width=5.6, height=3.6)
    panels = {}
    for ax, workload in zip(axes[0], workloads, strict=True):
        data = summary[summary.workload == workload].reset_index(drop=True)
        y = np.arange(len(data))
        err = np.vstack([data.ratio - data.ratio_q1, data.ratio_q3 - data.ratio]).clip(min=0)
        ax.barh(y, data.ratio - 1.0, left=1.0, xerr=err, color="#4c72b0", capsize=3)
        ax.set_yticks(y, data.variant)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        if workload in bounds:
            ax.axvline(bounds[workload], color="#d62728", ls="--", lw=1, label="target")
            ax.legend(loc="lower right")
        ax.set_xlabel("step time / no hooks (median, IQR)")
        ax.set_title(LABELS.get(workload, workload))
        panels[workload] = data
    return save_figure(fig, out / "overhead.png", panels)


def draw_memory(memory: pd.DataFrame, out: Path) -> list[Path]:
    """Device tensors awaiting a flush and traced host memory against the step."""
    from stability.experiments.plotting import new_figure, save_figure

    fig, axes = new_figure(1, 2, width=4.6, height=3.4)
    for mode, trace in memory.groupby("mode", sort=False):
        axes[0, 0].plot(trace.step, trace.pending_peak, marker=".", label=mode)
        axes[0, 1].plot(trace.step, trace.traced_host_bytes / 1e6, marker=".", label=mode)
    axes[0, 0].set(xlabel="step", ylabel="device tensors awaiting flush (peak)")
    axes[0, 1].set(xlabel="step", ylabel="host memory since step 100 (MB)")
    for ax in axes[0]:
        ax.set_ylim(bottom=0)
        ax.legend()
    panels = {
        "pending": memory[["mode", "step", "pending_peak", "pending_after_step"]],
        "host": memory.drop(columns=["pending_peak", "pending_after_step"]),
    }
    return save_figure(fig, out / "memory.png", panels)


# =========================================================================== report


def machine_info(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_report(
    machine: dict, summary: pd.DataFrame, targets: pd.DataFrame, memory: dict
) -> str:
    """The README's Performance table (and the targets) in Markdown."""
    where = machine["gpu"] or f"{machine['cpu']} ({machine['cpu_count']} cores)"
    where += f", torch threads: {machine['torch_threads']}"
    lines = [
        f"Recorder overhead, {machine['date'][:10]}, {where}, torch {machine['torch']}",
        "",
        "| workload | variant | median step (ms) | IQR (ms) | ratio to no hooks (IQR) |",
        "|---|---|---:|---:|---:|",
    ]
    for row in summary.itertuples():
        ratio = f"{row.ratio:.3f} ({row.ratio_q1:.3f}-{row.ratio_q3:.3f})"
        label = LABELS.get(row.workload, row.workload)
        lines.append(
            f"| {label} | {row.variant} | {row.median_ms:.1f} | {row.iqr_ms:.1f} | {ratio} |"
        )
    lines += ["", "| target | value | bound | met |", "|---|---:|---:|---|"]
    for row in targets.itertuples():
        met = {True: "yes", False: "**no**", None: row.note or "n/a"}[row.met]
        lines.append(f"| {row.target} | {_fmt(row.value)} | {_fmt(row.bound, 2)} | {met} |")
    if memory:
        lines += [
            "",
            f"Memory over {memory['steps']} steps (3-layer net, flush every 100): at most "
            f"{memory['pending_max']} device tensors awaiting a flush (bound "
            f"{memory['pending_bound']}); host records {memory['bytes_per_row']:.1f} bytes "
            f"per row ({memory['rows']} rows, +{memory['host_growth_keep_bytes'] / 1e6:.2f} MB);"
            f" with pop_frame every 1000 steps host memory ends at "
            f"+{memory['host_growth_pop_frame_bytes'] / 1e3:.0f} kB "
            f"(max +{memory['host_max_pop_frame_bytes'] / 1e3:.0f} kB).",
        ]
    return "\n".join(lines) + "\n"


# =========================================================================== CLI


def _steps_per_block(text: str) -> int:
    value = positive_int(text)
    if value % 10:
        raise argparse.ArgumentTypeError(f"--steps must be a multiple of 10, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        description="Recorder overhead vs no hooks and an .item() baseline, interleaved in one "
        "process; host syncs (CUDA) and memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds, for CI")
    p.add_argument("--out", type=Path, default=None, help="output folder (runs/bench/<time>)")
    p.add_argument("--device", default=None, help="torch device; cuda when available, else cpu")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch.set_num_threads (1: on a shared CPU a second intra-op thread makes every "
        "parallel op wait for a time slice, and the timings measure the scheduler)",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {', '.join(WORKLOADS)}",
    )
    p.add_argument("--rounds", type=positive_int, default=None, help="measured rounds")
    p.add_argument("--steps", type=_steps_per_block, default=None, help="timed steps per block")
    p.add_argument(
        "--memory-steps",
        type=nonnegative_int,
        default=None,
        help="steps of the memory check (default 10000, quick 1000; 0 skips it)",
    )
    p.add_argument("--sync-steps", type=positive_int, default=20, help="steps of the sync count")
    p.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        help="another recorder.py (e.g. from git show) timed as one more variant",
    )
    return p


def prepare_out(out: Path | None) -> Path:
    """A new (or empty) output folder; an existing folder with files is refused."""
    out = out or Path("runs/bench") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} already holds files; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def resolve(args: argparse.Namespace) -> tuple[torch.device, dict[str, Workload]]:
    """The device and the workloads chosen on the command line (ValueError if unknown)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available")
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(chosen) - set(WORKLOADS))
    if unknown or not chosen:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    defaults = default_workloads(device, args.quick)
    workloads = {}
    for name in chosen:
        w = defaults[name]
        rounds, steps = args.rounds or w.rounds, args.steps or w.steps
        workloads[name] = replace(w, steps=steps, rounds=rounds)
    return device, workloads


def run(args: argparse.Namespace, out: Path, device: torch.device, workloads) -> dict:
    """Every measurement; writes the files and returns the targets table and paths."""
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    compare = None
    if args.compare_with is not None:
        compare = (args.compare_with.stem, load_recorder_class(args.compare_with))
    factories = variant_factories(compare)
    machine = machine_info(device)
    blocks, syncs = [], []
    for workload in workloads.values():
        print(f"timing {workload.name}: {workload}")
        trainer = build_trainer(workload, device)
        started = time.perf_counter()
        blocks.append(time_workload(workload, trainer, factories))
        print(f"  {workload.name}: {time.perf_counter() - started:.0f} s")
        if device.type == "cuda":
            counted = count_syncs(trainer, factories, args.sync_steps)
            syncs.append(counted.assign(workload=workload.name))
        del trainer
    blocks = pd.concat(blocks, ignore_index=True)
    syncs = pd.concat(syncs, ignore_index=True) if syncs else pd.DataFrame()
    if device.type != "cuda":
        print("host-sync check skipped: it needs a CUDA device (on a CPU nothing waits)")
    memory_steps = args.memory_steps
    if memory_steps is None:
        memory_steps = 1000 if args.quick else 10_000
    memory, memory_stats = (pd.DataFrame(), {})
    if memory_steps > 0:
        print(f"memory check: {memory_steps} steps, records kept / popped every 1000 steps")
        started = time.perf_counter()
        memory, memory_stats = memory_report(device, memory_steps)
        print(f"  memory: {time.perf_counter() - started:.0f} s")
    summary = summarize(blocks)
    targets = evaluate_targets(summary, device, syncs, memory_stats, args.quick)
    blocks.to_csv(out / "blocks.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    targets.to_csv(out / "targets.csv", index=False)
    if len(syncs):
        syncs.to_csv(out / "syncs.csv", index=False)
    bounds = {"resnet50": 1.03 if device.type == "cuda" else 1.05}
    draw_overhead(summary, out, bounds)
    if len(memory):
        memory.to_csv(out / "memory.csv", index=False)
        draw_memory(memory, out)
    config = {
        "machine": machine,
        "workloads": {name: asdict(w) for name, w in workloads.items()},
        "variants": list(factories),
        "compare_with": str(args.compare_with) if args.compare_with else None,
        "memory": {k: None if pd.isna(v) else v for k, v in memory_stats.items()},
        "quick": args.quick,
        "lr": 0.0,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    report = markdown_report(machine, summary, targets, memory_stats)
    (out / "report.md").write_text(report)
    print()
    print(report)
    return {"summary": summary, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)
    try:
        device, workloads = resolve(args)
        out = prepare_out(args.out)
        started = time.perf_counter()
        run(args, out, device, workloads)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        message = " ".join(str(error).split())
        print(f"bench_recorder.py: error: {message}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - started:.0f} s; results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
