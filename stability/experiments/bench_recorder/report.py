"""The tables, targets, figures and Markdown report of the Recorder overhead benchmark.

Ratios are paired: a variant's block time over the no-hooks block of the same round and
thread count; the tables give their median and interquartile range, per thread count.
Weight metrics every 100 steps are
amortized from the measured weight steps: a weight step costs
``10 (t[weights every 10] - t[recorder])`` extra, so weights every 100 steps cost
``(t[weights every 10] - t[recorder]) / 10`` per step, reported as a share of a no-hooks
step.
"""

from __future__ import annotations

import math
import os
import platform
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stability.experiments.bench_recorder.config import (
    BUFFERED,
    COORD_CHECK,
    EMPTY_HOOKS,
    ITEM_BASELINE,
    LABELS,
    LINEAR_BOUND,
    NO_HOOKS,
    RECORDER,
    WEIGHT_EVERY,
    WEIGHTS_AMORTIZED,
    WEIGHTS_EVERY_10,
)
from stability.experiments.cli import cpu_name


def _quartiles(values: pd.Series) -> tuple[float, float, float]:
    q1, median, q3 = np.nanquantile(values.to_numpy(dtype=float), [0.25, 0.5, 0.75])
    return float(q1), float(median), float(q3)


def _summary_row(
    key: tuple[str, int], variant: str, seconds: pd.Series, ratio: pd.Series, method: str
) -> dict:
    s_q1, s_med, s_q3 = _quartiles(seconds)
    r_q1, r_med, r_q3 = _quartiles(ratio)
    return {
        "workload": key[0],
        "threads": int(key[1]),
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
    """Per workload, thread count and variant: median step time, IQR, minimum, paired
    ratio to no hooks.

    Adds the amortized row ``recorder weights every 100``: per round,
    ``t[recorder] + (t[weights every 10] - t[recorder]) / 10`` (one weight step per 10
    steps measured, one per 100 wanted).
    """
    rows = []
    for key, group in blocks.groupby(["workload", "threads"], sort=False):
        wide = group.pivot(index="round", columns="variant", values="seconds")
        wide = wide[list(dict.fromkeys(group["variant"]))]  # first-round order
        wide = wide[[NO_HOOKS] + [v for v in wide.columns if v != NO_HOOKS]]
        ratio = wide.div(wide[NO_HOOKS], axis=0)
        for variant in wide.columns:
            method = f"mean over blocks of {int(group['steps'].iloc[0])} steps"
            rows.append(_summary_row(key, variant, wide[variant], ratio[variant], method))
        if {RECORDER, WEIGHTS_EVERY_10} <= set(wide.columns):
            extra = (wide[WEIGHTS_EVERY_10] - wide[RECORDER]) * 10 / WEIGHT_EVERY
            amortized = wide[RECORDER] + extra
            row = _summary_row(
                key,
                WEIGHTS_AMORTIZED,
                amortized,
                amortized / wide[NO_HOOKS],
                "recorder + (weights every 10 - recorder) / 10",
            )
            row["weight_share_pct"] = 100 * float(np.nanmedian(extra / wide[NO_HOOKS]))
            rows.append(row)
    return pd.DataFrame(rows)


def _value(summary: pd.DataFrame, workload: str, threads: int, variant: str, column: str):
    hit = summary[
        (summary.workload == workload) & (summary.threads == threads) & (summary.variant == variant)
    ]
    return float(hit[column].iloc[0]) if len(hit) else math.nan


def evaluate_targets(
    summary: pd.DataFrame,
    device: torch.device,
    syncs: pd.DataFrame,
    memory: dict,
    quick: bool = False,
) -> pd.DataFrame:
    """The issue's targets, per thread count: value, bound, whether met, why not judged.

    ``met`` is ``None`` for a target that does not apply to this device and for timing
    targets of a ``quick`` run (its sizes are not the issue's). The deep linear network's
    Recorder must stay within :data:`LINEAR_BOUND` of no hooks and below every peer that
    records something (naive ``.item()``, buffered, coord check).
    """
    cuda = device.type == "cuda"
    timing_note = "quick sizes: not judged" if quick else ""
    rows = []

    def target(name: str, value: float, bound: float, at_most: bool, note: str = "") -> None:
        met = None
        if not note and not math.isnan(value):
            met = bool(value <= bound) if at_most else bool(value >= bound)
        rows.append({"target": name, "value": value, "bound": bound, "met": met, "note": note})

    for threads in sorted(summary.threads.unique()):
        at = f" ({threads} thread{'s' if threads > 1 else ''})"

        def value(workload: str, variant: str, column: str = "ratio", at: int = threads):
            return _value(summary, workload, at, variant, column)

        if "resnet50" in set(summary.workload):
            target(
                "ResNet-50 recorder every step / no hooks" + at,
                value("resnet50", RECORDER),
                1.03 if cuda else 1.05,
                True,
                timing_note,
            )
            target(
                "ResNet-50 weight metrics at weight_every=100 (% of a step)" + at,
                value("resnet50", WEIGHTS_AMORTIZED, "weight_share_pct"),
                1.0,
                True,
                timing_note,
            )
            target(
                "ResNet-50 naive .item() hooks / recorder" + at,
                value("resnet50", ITEM_BASELINE, "median_ms")
                / value("resnet50", RECORDER, "median_ms"),
                1.5,
                False,
                timing_note if cuda else "CUDA target; on a CPU .item() does not wait",
            )
        if "deep_linear" in set(summary.workload):
            recorder = value("deep_linear", RECORDER)
            target(
                "deep linear recorder every step / no hooks" + at,
                recorder,
                LINEAR_BOUND,
                True,
                timing_note,
            )
            cheapest = min(value("deep_linear", v) for v in (ITEM_BASELINE, BUFFERED, COORD_CHECK))
            target(
                "deep linear recorder / cheapest recording peer" + at,
                recorder / cheapest,
                1.0,
                True,
                timing_note,
            )
            target(
                "deep linear empty hooks / no hooks (the floor)" + at,
                value("deep_linear", EMPTY_HOOKS),
                math.nan,
                True,
                "reported",
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
    return pd.DataFrame(rows)


def draw_overhead(summary: pd.DataFrame, out: Path, bounds: dict[str, float]) -> list[Path]:
    """One panel per workload and thread count: paired ratio to no hooks, median with IQR
    whiskers (panel CSV ``overhead_<workload>_<threads>t.csv``)."""
    from stability.experiments.plotting import new_figure, save_figure

    keys = list(dict.fromkeys(zip(summary.workload, summary.threads, strict=True)))
    fig, axes = new_figure(1, len(keys), width=5.6, height=3.8)
    panels = {}
    for ax, (workload, threads) in zip(axes[0], keys, strict=True):
        data = summary[(summary.workload == workload) & (summary.threads == threads)]
        data = data.reset_index(drop=True)
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
        ax.set_title(f"{LABELS.get(workload, workload)}, {threads} thread(s)")
        panels[f"{workload}_{threads}t"] = data
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


def machine_info(device: torch.device) -> dict:
    """Date, CPU, GPU, device, torch threads and versions: where the numbers were measured."""
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
    threads = sorted(summary.threads.unique())
    lines = [
        f"Recorder overhead, {machine['date'][:10]}, {where}, torch {machine['torch']} "
        f"(default threads: {machine['torch_threads']})",
        "",
        "| workload | variant | "
        + " | ".join(f"ms/step, {t} thr | ratio (IQR), {t} thr" for t in threads)
        + " |",
        "|---|---|" + "---:|---:|" * len(threads),
    ]
    for (workload, variant), rows in summary.groupby(["workload", "variant"], sort=False):
        cells = []
        for t in threads:
            row = rows[rows.threads == t]
            if len(row):
                r = row.iloc[0]
                cells += [
                    f"{r.median_ms:.1f}",
                    f"{r.ratio:.3f} ({r.ratio_q1:.3f}-{r.ratio_q3:.3f})",
                ]
            else:
                cells += ["n/a", "n/a"]
        lines.append(
            f"| {LABELS.get(workload, workload)} | {variant} | " + " | ".join(cells) + " |"
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
