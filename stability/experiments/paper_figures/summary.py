"""The measured numbers behind Figures 2-4, every seed, next to what the paper reports.

:func:`write_summary` writes ``summary.csv`` (one row per run: the final epoch's train and
test top-1 and loss, the train loss after the first epoch, the best test top-1) and
``summary.md`` (per figure and normalization: the mean over seeds and the spread,
``[min, max]``; for Figure 4 the fitted output-norm growth per epoch of the first and the
last layer and its median over all layers, :func:`~.figure4.growth_per_epoch`).

The paper's column quotes the paper's own statement for the same quantity (section 4;
it gives numbers only for ResNet-50's test accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from stability.experiments.paper_figures.figure4 import growth_per_epoch
from stability.experiments.paper_figures.runs import FigureSpec, RunInfo, find_runs
from stability.experiments.plotting import norm_label

#: What the paper reports for each figure and normalization (section 4, Figures 2-4).
PAPER: Mapping[str, Mapping[str, str]] = {
    "figure2": {
        "bn": "reference",
        "wn": "lower final test accuracy than the other WN kinds",
        "np": "converges faster than BN, higher final test accuracy",
        "trelu": "converges faster than BN, higher final test accuracy",
        "none": "final accuracy comparable to the normalized networks",
    },
    "figure3": {
        "bn": "test top-1 ~73 %; lower train accuracy than WN",
        "wn": "test top-1 ~67 %; faster convergence, higher train accuracy than BN",
    },
    "figure4": {
        "wn": "output norm of the last layer grows during training",
        "bn": "(not shown: BN fixes the normalized outputs)",
    },
}


def run_rows(spec: FigureSpec, runs: Mapping[str, RunInfo]) -> pd.DataFrame:
    """One row per run (every seed) of a figure: its final and early numbers."""
    rows = []
    for norm, first in runs.items():
        for run in first.all_seeds:
            h = run.history.astype(float)
            last = h.iloc[-1] if len(h) else pd.Series(math.nan, index=h.columns)
            rows.append({
                "figure": spec.name,
                "model": spec.model,
                "norm": norm,
                "seed": int(run.config.get("seed", 0)),
                "epochs": len(h),
                "diverged": run.divergence is not None,
                "diverged_step": (run.divergence or {}).get("step"),
                "train_loss_epoch1": h["train_loss"].iloc[0] if len(h) else math.nan,
                "final_train_loss": last["train_loss"],
                "final_train_top1": last["train_top1"],
                "final_test_top1": last["test_top1"],
                "best_test_top1": h["test_top1"].max(),
            })  # fmt: skip
    return pd.DataFrame(rows)


def _spread(values: pd.Series, digits: int = 1) -> str:
    """``mean [min, max]`` of one quantity over the seeds that have it (a run that diverged
    in its first epoch has none: counted apart)."""
    finite = values.dropna()
    lost = f"{len(values) - len(finite)} without" if len(finite) < len(values) else ""
    if finite.empty:
        return "-"
    if len(finite) == 1:
        text = f"{finite.iloc[0]:.{digits}f}"
    else:
        text = f"{finite.mean():.{digits}f} [{finite.min():.{digits}f}, {finite.max():.{digits}f}]"
    return f"{text}, {lost}" if lost else text


def curves_table(name: str, rows: pd.DataFrame) -> list[str]:
    """Markdown rows of Figures 2 and 3: mean [min, max] over seeds per normalization."""
    lines = [
        "| norm | seeds | test top-1 | train top-1 | train - test | "
        "train loss, epoch 1 | final train loss | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for norm, sub in rows.groupby("norm", sort=False):
        gap = sub["final_train_top1"] - sub["final_test_top1"]
        steps = ", ".join(str(int(v)) for v in sub["diverged_step"].dropna())
        diverged = f" (diverged at step {steps})" if steps else ""
        lines.append(
            f"| {norm_label(norm)}{diverged} | {len(sub)} | {_spread(sub['final_test_top1'])} | "
            f"{_spread(sub['final_train_top1'])} | {_spread(gap)} | "
            f"{_spread(sub['train_loss_epoch1'], 3)} | {_spread(sub['final_train_loss'], 3)} | "
            f"{PAPER.get(name, {}).get(norm, '')} |"
        )
    return lines


def growth_table(name: str, runs: Mapping[str, RunInfo]) -> tuple[list[str], pd.DataFrame]:
    """Markdown rows of Figure 4 (seed 0) and the per-layer fits behind them."""
    lines = [
        "| norm | first layer | last layer | median over layers | layers > 1.01 | paper |",
        "|---|---|---|---|---|---|",
    ]
    fits = []
    for norm, run in runs.items():
        growth = growth_per_epoch(run)
        first, last = growth.iloc[0], growth.iloc[-1]
        rising = int((growth["factor_low"] > 1.01).sum())
        lines.append(
            f"| {norm_label(norm)} | {first['factor_per_epoch']:.3f} ({first['layer']}) | "
            f"{last['factor_per_epoch']:.3f} ({last['layer']}) | "
            f"{growth['factor_per_epoch'].median():.3f} | {rising} of {len(growth)} | "
            f"{PAPER.get(name, {}).get(norm, '')} |"
        )
        fits.append(growth.assign(norm=norm))
    return lines, pd.concat(fits, ignore_index=True)


def write_summary(runs: Path, out: Path, figures: Sequence[FigureSpec], preset: str) -> list[Path]:
    """Write ``summary.csv``, ``growth.csv`` and ``summary.md`` for the figures' runs of
    ``preset`` (figures whose runs are missing are left out); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    tables, markdown = [], [f"# Measured numbers ({preset} preset)", ""]
    growth_fits = []
    for spec in figures:
        _, found = find_runs(runs, spec, [preset])
        if isinstance(found, list):
            continue
        markdown += [f"## {spec.title}", ""]
        if spec.name == "figure4":
            lines, fits = growth_table(spec.name, found)
            markdown += ["Fitted growth factor of the output norm per epoch (seed 0; the",
                         "95 % interval's lower end above 1.01 counts as rising).", ""]  # fmt: skip
            growth_fits.append(fits)
        else:
            rows = run_rows(spec, found)
            tables.append(rows)
            lines = curves_table(spec.name, rows)
            markdown += ["Final epoch; mean over seeds [min, max]; accuracies in %.", ""]
        markdown += lines + [""]
    written = []
    if tables:
        path = out / "summary.csv"
        pd.concat(tables, ignore_index=True).to_csv(path, index=False)
        written.append(path)
    if growth_fits:
        path = out / "growth.csv"
        pd.concat(growth_fits, ignore_index=True).to_csv(path, index=False)
        written.append(path)
    path = out / "summary.md"
    path.write_text("\n".join(markdown))
    return [*written, path]
