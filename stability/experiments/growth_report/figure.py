"""Growth report for a recorded run: does the signal grow with depth or time, when does it blow up?

The library half of ``analyses/norm_growth.py``. It reads the record table that
:meth:`stability.Recorder.save` wrote (``records.parquet``), keeps one run, one metric and
one call index, and answers with :mod:`stability.fitting`:

* **depth growth**, per step: the OLS fit ``log v_k = log c + k log f`` over the layers in
  depth order (``k`` the depth rank), giving the per-layer factor ``f = exp(slope)`` with
  its standard error and confidence band (:func:`stability.fitting.depth_growth`);
* **time growth**, per layer: the growth factor per optimizer step over the whole run and
  over a sliding window of ``window`` steps (:func:`stability.fitting.time_growth`);
* **divergence onset**: the first step, and the first layer in depth order at that step,
  with a non-finite value (any metric) or a norm beyond ``threshold``
  (:func:`stability.fitting.divergence_onset`);
* **early warning**: the first step whose fitted depth factor reaches
  ``factor_threshold`` and its lead over the onset
  (:func:`stability.fitting.early_warning`).

:func:`write_report` draws ``growth_report.png`` (four panels, each with the CSV of exactly
the numbers it draws), ``growth_time_window.parquet`` (the sliding time-growth fits, one
row per layer and step) and ``growth_summary.json``.

Reading (:mod:`stability.records.io`) scales to tables of many millions of rows: every
read selects only the columns it needs and pushes the run, step-range and metric filters
down to pyarrow, the ``layer`` and ``metric`` strings are read dictionary-encoded (pandas
categoricals), and the scans that look for the onset or list the runs and metrics go batch
by batch, so the memory held is that of the one metric being reported (plus a row group).

Record tables may carry key columns in addition to the standard ones
(:data:`stability.records.schema.COLUMNS`): the deep linear sweep stores many runs in one file
with ``norm, lr, seed`` columns, and a Recorder with ``run_dim`` adds ``run``. Every such
column is a *run key*; a report covers exactly one run, picked with ``where``
(``"norm=wn,lr=0.1,seed=0"``; values are parsed to the column's type and need only
identify one run).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from stability import fitting
from stability.experiments.plotting import new_figure, save_figure
from stability.records.io import (
    RunSelection,
    categorical,
    find_onset,
    find_records,
    format_run,
    load_metric,
    recorded_metrics,
    select_run,
)
from stability.records.runs import jsonable

__all__ = [
    "MAX_HEATMAP_COLUMNS",
    "PANELS",
    "GrowthReport",
    "ReportConfig",
    "build_report",
    "choose_profile_steps",
    "default_out_dir",
    "format_summary",
    "heatmap_frame",
    "parse_steps",
    "profile_frame",
    "report_files",
    "summarize",
    "write_report",
]

REPORT_PNG = "growth_report.png"
SUMMARY_JSON = "growth_summary.json"
TIME_WINDOW_FILE = "growth_time_window.parquet"
#: Panel names; panel ``p`` of the figure is saved as ``growth_report_<p>.csv``.
PANELS = ("heatmap", "depth_factor", "depth_profile", "coherence")
#: The heatmap bins consecutive recorded steps into at most this many columns.
MAX_HEATMAP_COLUMNS = 400
#: Weight metric drawn in panel (d).
COHERENCE = "coherence"


# ---------------------------------------------------------------------------------
# Configuration and parsing
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportConfig:
    """What to report and how.

    Attributes:
        metric: The metric fitted and drawn (``output_rms``, ``grad_norm``, ``gain``, ...).
        layers: Optional glob on layer names (``"layer4.*"``); applies to every part.
        steps: ``(first, stop)``: keep ``first <= step < stop``; either side may be None.
        where: Run filter ``"key=value,..."`` for tables holding several runs.
        call_idx: Which call of each module (0 = its first call in a step).
        factor_threshold: Per-layer depth factor that raises the early warning.
        threshold: Norm magnitude counted as diverged (None: non-finite values only).
        window: Sliding time-growth window, in optimizer steps (>= 3).
        min_layers: Minimum usable layers for a depth fit (>= 3).
        onset_metrics: Metrics searched for the onset; None = every recorded metric.
    """

    metric: str = "output_rms"
    layers: str | None = None
    steps: tuple[int | None, int | None] = (None, None)
    where: str | None = None
    call_idx: int = 0
    factor_threshold: float = 1.05
    threshold: float | None = 1e6
    window: int = 20
    min_layers: int = 3
    onset_metrics: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.window < 3:
            raise ValueError(f"window must be >= 3 steps, got {self.window}")
        if self.min_layers < 3:
            raise ValueError(f"min_layers must be >= 3, got {self.min_layers}")
        if self.call_idx < 0:
            raise ValueError(f"call_idx must be >= 0, got {self.call_idx}")
        if not self.factor_threshold > 0:
            raise ValueError(f"factor threshold must be > 0, got {self.factor_threshold}")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"divergence threshold must be > 0, got {self.threshold}")
        first, stop = self.steps
        if first is not None and stop is not None and stop <= first:
            raise ValueError(f"empty step range {first}:{stop} (the range is first <= step < stop)")


def parse_steps(text: str | None) -> tuple[int | None, int | None]:
    """Parse ``"A:B"``, ``"A:"``, ``":B"`` (``A <= step < B``) or ``"A"`` (one step).

    Raises:
        ValueError: On anything else.
    """
    if text is None or text.strip() in ("", ":"):
        return (None, None)
    parts = text.split(":")
    try:
        if len(parts) == 1:
            step = int(parts[0])
            return (step, step + 1)
        if len(parts) == 2:
            first, stop = (int(p) if p.strip() else None for p in parts)
            return (first, stop)
    except ValueError:
        pass
    raise ValueError(f"steps must look like A:B, A: or :B (integers), got {text!r}")


# ---------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------


@dataclass
class GrowthReport:
    """Everything a growth report shows, before it is drawn.

    Attributes:
        selection: The run and step range reported.
        config: The options used.
        recorded: Metrics recorded for the run.
        frame: The record-table rows of the metric (after the layer filter).
        layers: Layer names in depth order.
        growth: Depth growth per step (:func:`stability.fitting.depth_growth`).
        time_whole: Time growth per layer over the whole selection, depth order.
        time_window: Sliding time growth: one row per (layer, step), depth order.
        onset: Divergence onset or None.
        warning: Early warning or None; its ``onset_step``/``lead`` refer to ``onset``.
        coherence: ``step, layer, layer_idx, value`` of row coherence for the first,
            middle and last layers (empty when coherence was not recorded).
    """

    selection: RunSelection
    config: ReportConfig
    recorded: list[str]
    frame: pd.DataFrame
    layers: list[str]
    growth: pd.DataFrame
    time_whole: pd.DataFrame
    time_window: pd.DataFrame
    onset: fitting.Onset | None
    warning: fitting.FactorCrossing | None
    coherence: pd.DataFrame


def _time_growth(
    frame: pd.DataFrame, layers: Sequence[str], config: ReportConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole-run and sliding-window time growth of every layer, in depth order."""
    whole, window = [], []
    groups = dict(list(frame.groupby("layer", observed=True, sort=False)))
    for layer in layers:
        sub = groups[layer]
        args = (sub, layer, config.metric)
        whole.append(fitting.time_growth(*args, call_idx=config.call_idx))
        fits = fitting.time_growth(*args, call_idx=config.call_idx, window=config.window)
        fits.insert(1, "layer", layer)
        fits.insert(2, "layer_idx", int(sub["layer_idx"].min()))
        window.append(fits)
    whole_df = pd.concat(whole, ignore_index=True)
    whole_df.insert(1, "layer_idx", [int(groups[name]["layer_idx"].min()) for name in layers])
    return whole_df, pd.concat(window, ignore_index=True)


def _warning(
    frame: pd.DataFrame, config: ReportConfig, onset: fitting.Onset | None
) -> fitting.FactorCrossing | None:
    """The early warning, with its lead measured against the report's onset."""
    warning = fitting.depth_factor_crossing(
        frame,
        config.factor_threshold,
        metric=config.metric,
        threshold=config.threshold,
        min_layers=config.min_layers,
        call_idx=config.call_idx,
    )
    if warning is None:
        return None
    onset_step = None if onset is None else onset.step
    lead = None if onset_step is None else onset_step - warning.warn_step
    return replace(warning, onset_step=onset_step, lead=lead)


def _ends_and_middle(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]])) if names else []


def _coherence(
    selection: RunSelection, layers: Sequence[str], recorded: Sequence[str]
) -> pd.DataFrame:
    """Row coherence of the first, middle and last reported layers that have it."""
    columns = ["step", "layer", "layer_idx", "value"]
    if COHERENCE not in recorded:
        return pd.DataFrame(columns=columns)
    expr = (ds.field("metric") == COHERENCE) & (ds.field("call_idx") == 0)
    rows = selection.read(columns, expr).astype({"layer": str})
    present = set(rows["layer"])
    chosen = _ends_and_middle([name for name in layers if name in present])
    rows = rows[rows["layer"].isin(chosen).to_numpy()]
    rank = rows["layer"].map({name: i for i, name in enumerate(chosen)})
    order = np.lexsort((rows["step"].to_numpy(), rank.to_numpy()))
    return rows.iloc[order][columns].reset_index(drop=True)


def build_report(source: str | os.PathLike, config: ReportConfig | None = None) -> GrowthReport:
    """Read a run and compute every fit of the growth report.

    Args:
        source: A run directory holding ``records.parquet``, or a parquet record table.
        config: Options (defaults: ``output_rms``, every layer and step, call 0).

    Returns:
        The :class:`GrowthReport` (nothing is written).

    Raises:
        FileNotFoundError: When no record table is found.
        ValueError: On a malformed table, an ambiguous or unmatched run filter, a metric
            that was not recorded, a layer glob matching no layer, an empty step range.
    """
    config = ReportConfig() if config is None else config
    selection = select_run(find_records(source), config.where, config.steps)
    recorded = recorded_metrics(selection)
    onset_metrics = config.onset_metrics
    if onset_metrics is not None:
        unknown = [m for m in onset_metrics if m not in recorded]
        if unknown:
            raise ValueError(f"onset metric(s) {unknown} not recorded; recorded: {recorded}")
    frame = load_metric(selection, config.metric, config.call_idx, recorded)
    wide = fitting.metric_table(frame, config.metric, config.call_idx, layers=config.layers)
    layers = [str(name) for name in wide.columns]
    if config.layers is not None:
        frame = frame[frame["layer"].isin(layers).to_numpy()].copy()
        frame["layer"] = categorical(frame["layer"])
    growth = fitting.depth_growth(
        frame, config.metric, call_idx=config.call_idx, min_layers=config.min_layers
    )
    time_whole, time_window = _time_growth(frame, layers, config)
    onset = find_onset(selection, config.threshold, metrics=onset_metrics, layers=config.layers)
    return GrowthReport(
        selection=selection,
        config=config,
        recorded=recorded,
        frame=frame,
        layers=layers,
        growth=growth,
        time_whole=time_whole,
        time_window=time_window,
        onset=onset,
        warning=_warning(frame, config, onset),
        coherence=_coherence(selection, layers, recorded),
    )


# ---------------------------------------------------------------------------------
# Panel data
# ---------------------------------------------------------------------------------


def _depth_rank(layer_idx: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rank of each ``layer_idx`` among the distinct values of ``reference`` (as fitted)."""
    return np.searchsorted(np.unique(reference), layer_idx)


def heatmap_frame(
    frame: pd.DataFrame, layers: Sequence[str], max_columns: int = MAX_HEATMAP_COLUMNS
) -> pd.DataFrame:
    """Panel (a): mean ``log10(value)`` per (step column, layer).

    The recorded steps, in order, are cut into consecutive bins of ``steps_per_column``
    recorded steps (1 unless there are more than ``max_columns`` steps), one heatmap
    column each. Values that are non-finite or <= 0 have no logarithm; they are counted
    in ``n_nonfinite`` (the cell is marked when it holds any) and left out of the mean.

    Returns:
        Columns ``column, step_first, step_last, steps_per_column, layer, layer_idx,
        depth, log10_mean, n_values, n_nonfinite`` (one row per non-empty cell).
    """
    steps = np.unique(frame["step"].to_numpy())
    size = max(1, math.ceil(len(steps) / max_columns))
    column = np.searchsorted(steps, frame["step"].to_numpy()) // size
    values = frame["value"].to_numpy(dtype=np.float64)
    ok = np.isfinite(values) & (values > 0)
    log10 = np.full(len(values), np.nan)
    np.log10(values, out=log10, where=ok)
    depth = pd.Categorical(frame["layer"], categories=list(layers)).codes
    cells = (
        pd.DataFrame({"column": column, "depth": depth, "log10": log10, "bad": ~ok})
        .groupby(["column", "depth"], as_index=False)
        .agg(log10_mean=("log10", "mean"), n_values=("bad", "size"), n_nonfinite=("bad", "sum"))
    )
    col = cells["column"].to_numpy()
    first_idx = frame.groupby("layer", observed=True)["layer_idx"].min()
    layer_idx = np.array([first_idx[name] for name in layers], dtype=np.int64)
    d = cells["depth"].to_numpy()
    out = pd.DataFrame(
        {
            "column": col,
            "step_first": steps[col * size],
            "step_last": steps[np.minimum((col + 1) * size, len(steps)) - 1],
            "steps_per_column": size,
            "layer": np.asarray(layers, dtype=object)[d],
            "layer_idx": layer_idx[d],
            "depth": d,
            "log10_mean": cells["log10_mean"].to_numpy(),
            "n_values": cells["n_values"].to_numpy(),
            "n_nonfinite": cells["n_nonfinite"].to_numpy(dtype=np.int64),
        }
    )
    return out


def choose_profile_steps(
    growth: pd.DataFrame,
    warning: fitting.FactorCrossing | None = None,
    onset: fitting.Onset | None = None,
    count: int = 4,
) -> list[int]:
    """Steps for panel (c), sorted: the first fitted step, the warning step, the last fitted
    step before the onset (the last fitted step without an onset), topped up with evenly
    spaced fitted steps to ``count``.

    Steps with a finite fitted factor are preferred; without any, all steps are used.
    """
    fitted = growth["step"].to_numpy()[np.isfinite(growth["factor"].to_numpy())]
    pool = fitted if len(fitted) else growth["step"].to_numpy()
    if len(pool) == 0:
        return []
    before = pool if onset is None else pool[pool < onset.step]
    spread = before if len(before) else pool
    marked = [pool[0], spread[-1]]
    if warning is not None:
        marked.append(warning.warn_step)
    chosen = dict.fromkeys(int(s) for s in marked)
    for i in np.linspace(0, len(spread) - 1, count).round().astype(np.int64):
        if len(chosen) >= count:
            break
        chosen.setdefault(int(spread[i]))
    return sorted(chosen)


def profile_frame(frame: pd.DataFrame, growth: pd.DataFrame, steps: Sequence[int]) -> pd.DataFrame:
    """Panel (c): the metric against depth at ``steps``, with the fitted line.

    ``depth`` is the rank of ``layer_idx`` among the reported layers (the abscissa of
    :func:`stability.fitting.depth_growth`) and ``fitted = exp(intercept + slope * depth)``
    at that step (NaN where the step has no fit).

    Returns:
        Columns ``step, layer, layer_idx, depth, value, fitted, factor``.
    """
    sub = frame[frame["step"].isin(list(steps)).to_numpy()]
    depth = _depth_rank(sub["layer_idx"].to_numpy(), frame["layer_idx"].to_numpy())
    fit = growth.set_index("step").reindex(sub["step"].to_numpy())
    slope, intercept = fit["slope"].to_numpy(), fit["intercept"].to_numpy()
    out = pd.DataFrame(
        {
            "step": sub["step"].to_numpy(),
            "layer": sub["layer"].astype(str).to_numpy(),
            "layer_idx": sub["layer_idx"].to_numpy(),
            "depth": depth,
            "value": sub["value"].to_numpy(dtype=np.float64),
            "fitted": np.exp(intercept + slope * depth),
            "factor": fit["factor"].to_numpy(),
        }
    )
    return out.sort_values(["step", "depth"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------


def _layer_ticks(ax, layers: Sequence[str], axis: str = "y", most: int = 14) -> None:
    """Label up to ``most`` evenly spaced layers on ``axis``."""
    ticks = np.unique(np.linspace(0, len(layers) - 1, min(most, len(layers))).round().astype(int))
    labels = [layers[i] for i in ticks]
    if axis == "y":
        ax.set_yticks(ticks, labels, fontsize=7)
    else:
        ax.set_xticks(ticks, labels, fontsize=7, rotation=60, ha="right")


def _step_axis(ax, label: str = "step") -> None:
    """Label the x axis as optimizer steps, with integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


def _draw_heatmap(ax, cells: pd.DataFrame, layers: Sequence[str], metric: str) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n_cols = int(cells["column"].max()) + 1
    shape = (len(layers), n_cols)
    image = np.full(shape, np.nan)
    bad = np.zeros(shape, dtype=bool)
    d, c = cells["depth"].to_numpy(), cells["column"].to_numpy()
    image[d, c] = cells["log10_mean"].to_numpy()
    bad[d, c] = cells["n_nonfinite"].to_numpy() > 0
    starts = cells.groupby("column")["step_first"].min().reindex(range(n_cols)).to_numpy()
    ends = cells.groupby("column")["step_last"].max().reindex(range(n_cols)).to_numpy()
    edges = np.append(starts, ends[-1] + 1).astype(np.float64)
    y_edges = np.arange(len(layers) + 1) - 0.5
    mesh = ax.pcolormesh(
        edges, y_edges, np.ma.masked_where(bad | np.isnan(image), image), cmap="viridis"
    )
    ax.figure.colorbar(mesh, ax=ax, label=f"log10 {metric}", pad=0.01)
    if bad.any():
        ax.pcolormesh(
            edges, y_edges, np.ma.masked_where(~bad, bad), cmap=ListedColormap(["#ff00aa"])
        )
        ax.legend(
            handles=[Patch(color="#ff00aa", label="non-finite or <= 0")],
            loc="upper left",
            fontsize=7,
            framealpha=0.8,
        )
    ax.grid(False)
    ax.set_facecolor("#eeeeee")
    _layer_ticks(ax, layers)
    size = int(cells["steps_per_column"].iloc[0])
    _step_axis(ax, "step" + (f" (columns of {size} recorded steps)" if size > 1 else ""))
    ax.set_ylabel("layer (depth order)")
    ax.set_title(f"(a) log10 {metric} over step and depth")


def _event_lines(ax, warning: fitting.FactorCrossing | None, onset: fitting.Onset | None) -> None:
    if warning is not None:
        ax.axvline(warning.warn_step, color="#ff7f0e", ls="--", lw=1.2, label="early warning")
    if onset is not None:
        ax.axvline(onset.step, color="black", ls=":", lw=1.4, label="divergence onset")


def _draw_factor(ax, report: GrowthReport) -> None:
    g = report.growth
    steps, factor = g["step"].to_numpy(), g["factor"].to_numpy()
    ax.fill_between(
        steps, g["factor_low"], g["factor_high"], color="#1f77b4", alpha=0.25, lw=0, label="95% CI"
    )
    ax.plot(steps, factor, color="#1f77b4", lw=1.2, label="fitted factor exp(slope)")
    ax.axhline(1.0, color="grey", lw=0.8)
    thr = report.config.factor_threshold
    ax.axhline(thr, color="#d62728", ls="--", lw=1.0, label=f"warning threshold {thr:g}")
    _event_lines(ax, report.warning, report.onset)
    finite = factor[np.isfinite(factor)]
    if len(finite):
        lo, hi = min(finite.min(), 1.0, thr), max(finite.max(), thr)
        pad = 0.08 * (hi - lo) or 0.01
        ax.set_ylim(lo - pad, hi + pad)
    _step_axis(ax)
    ax.set_ylabel("per-layer growth factor")
    ax.set_title(f"(b) depth growth of {report.config.metric}")
    ax.legend(fontsize=7, loc="best")


def _draw_profile(ax, data: pd.DataFrame, metric: str, layers: Sequence[str]) -> None:
    import seaborn as sns

    steps = list(dict.fromkeys(data["step"].tolist()))
    colors = sns.color_palette("rocket_r", n_colors=max(len(steps), 2) + 1)[1:]
    for color, step in zip(colors, steps, strict=False):
        rows = data[data["step"] == step]
        ok = np.isfinite(rows["value"]) & (rows["value"] > 0)
        factor = rows["factor"].iloc[0]
        label = f"step {step}" + (f": x{factor:.4g}/layer" if np.isfinite(factor) else "")
        ax.plot(rows["depth"][ok], rows["value"][ok], "o", ms=3, color=color, label=label)
        ax.plot(rows["depth"], rows["fitted"], "-", lw=1.0, color=color)
    ax.set_yscale("log")
    ax.set_xlabel("depth (layer rank)")
    ax.set_ylabel(metric)
    ax.set_title(f"(c) {metric} vs depth, fitted c*f^k")
    ax.legend(fontsize=7, loc="best")
    if len(layers) <= 16:
        _layer_ticks(ax, layers, axis="x")


def _draw_coherence(ax, report: GrowthReport) -> None:
    data = report.coherence
    ax.set_title("(d) weight-row coherence")
    if data.empty:
        ax.text(
            0.5, 0.5, "coherence not recorded", ha="center", va="center", transform=ax.transAxes
        )
        ax.set_xticks([])
        ax.set_yticks([])
        return
    for layer in dict.fromkeys(data["layer"]):
        rows = data[data["layer"] == layer]
        ax.plot(
            rows["step"],
            rows["value"],
            lw=1.2,
            marker="." if len(rows) < 60 else None,
            label=f"layer {layer}",
        )
    _event_lines(ax, None, report.onset)
    ax.set_ylim(0, 1.02)
    _step_axis(ax)
    ax.set_ylabel("max |cos| between rows")
    ax.legend(fontsize=7, loc="best")


# ---------------------------------------------------------------------------------
# Summary and output
# ---------------------------------------------------------------------------------


def _factor_stats(growth: pd.DataFrame, factor_threshold: float) -> dict[str, Any]:
    fitted = growth[np.isfinite(growth["factor"].to_numpy())]
    stats: dict[str, Any] = {"n_steps": len(growth), "n_fitted": len(fitted)}
    if fitted.empty:
        return stats
    factor = fitted["factor"].to_numpy()
    steps = fitted["step"].to_numpy()
    stats.update(
        median=float(np.median(factor)),
        mean=float(factor.mean()),
        min=float(factor.min()),
        min_step=int(steps[factor.argmin()]),
        max=float(factor.max()),
        max_step=int(steps[factor.argmax()]),
        first={"step": int(steps[0]), "factor": float(factor[0])},
        last={"step": int(steps[-1]), "factor": float(factor[-1])},
        fraction_at_or_above_threshold=float(np.mean(factor >= factor_threshold)),
    )
    return stats


def _time_summary(report: GrowthReport) -> list[dict[str, Any]]:
    out = []
    window = report.time_window
    for row in report.time_whole.to_dict("records"):
        fits = window[(window["layer"] == row["layer"]).to_numpy()]
        factor = fits["factor"].to_numpy()
        best = int(np.nanargmax(factor)) if np.isfinite(factor).any() else None
        out.append(
            {
                "layer": row["layer"],
                "layer_idx": row["layer_idx"],
                "factor_per_step": row["factor"],
                "factor_low": row["factor_low"],
                "factor_high": row["factor_high"],
                "doubling_steps": row["doubling_steps"],
                "n_points": row["n_points"],
                "window_max_factor": None if best is None else factor[best],
                "window_max_step": None if best is None else fits["step"].iloc[best],
            }
        )
    return out


def _onset_dict(onset: fitting.Onset | None) -> dict[str, Any] | None:
    if onset is None:
        return None
    return {**asdict(onset), "value_text": repr(onset.value)}


def summarize(report: GrowthReport, files: Sequence[Path] = ()) -> dict[str, Any]:
    """The numbers of the report as a JSON-ready dict (NaN and infinities become null)."""
    cfg = report.config
    steps = report.frame["step"].to_numpy()
    summary = {
        "input": str(report.selection.path.resolve()),
        "filter": {
            "run": dict(report.selection.run),
            "steps": list(cfg.steps),
            "layers": cfg.layers,
            "call_idx": cfg.call_idx,
        },
        "metric": cfg.metric,
        "recorded_metrics": report.recorded,
        "n_rows": len(report.frame),
        "n_steps": int(len(np.unique(steps))),
        "n_layers": len(report.layers),
        "step_first": int(steps.min()),
        "step_last": int(steps.max()),
        "layers": report.layers,
        "settings": {
            "factor_threshold": cfg.factor_threshold,
            "divergence_threshold": cfg.threshold,
            "window": cfg.window,
            "min_layers": cfg.min_layers,
            "onset_metrics": None if cfg.onset_metrics is None else list(cfg.onset_metrics),
        },
        "depth_growth": _factor_stats(report.growth, cfg.factor_threshold),
        "onset": _onset_dict(report.onset),
        "warning": None if report.warning is None else asdict(report.warning),
        "time_growth": _time_summary(report),
        "coherence_recorded": COHERENCE in report.recorded,
        "files": [str(p) for p in files],
    }
    return jsonable(summary)


def format_summary(report: GrowthReport) -> str:
    """A short terminal table of the report's headline numbers."""
    s = summarize(report)
    dg = s["depth_growth"]
    run = s["filter"]["run"]
    rows = [
        ("input", s["input"] + (f" [{format_run(run)}]" if run else "")),
        ("metric", f"{s['metric']}: {s['n_layers']} layers x {s['n_steps']} steps"),
        ("steps fitted", f"{dg['n_fitted']} / {dg['n_steps']}"),
    ]
    if dg["n_fitted"]:
        rows += [
            ("median factor", f"{dg['median']:.4f} per layer"),
            ("max factor", f"{dg['max']:.4f} at step {dg['max_step']}"),
        ]
    onset, warning = report.onset, report.warning
    rows.append(
        (
            "onset",
            "none"
            if onset is None
            else f"step {onset.step}, layer {onset.layer!r} (idx {onset.layer_idx}), "
            f"{onset.metric} = {onset.value:.3g} ({onset.reason})",
        )
    )
    if warning is None:
        rows.append(("warning", f"none (factor never >= {report.config.factor_threshold:g})"))
    else:
        lead = "no onset" if warning.lead is None else f"lead {warning.lead} steps"
        rows.append(("warning", f"step {warning.warn_step} (factor {warning.factor:.4f}), {lead}"))
    fast = [t for t in s["time_growth"] if t["factor_per_step"] is not None]
    if fast:
        top = max(fast, key=lambda t: t["factor_per_step"])
        rows.append(
            ("fastest in time", f"layer {top['layer']!r}: x{top['factor_per_step']:.4f}/step")
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def report_files(out: str | os.PathLike) -> list[Path]:
    """Every file :func:`write_report` writes into ``out``, PNG first."""
    png = Path(out) / REPORT_PNG
    csvs = [png.with_name(f"{png.stem}_{panel}.csv") for panel in PANELS]
    return [png, *csvs, png.with_name(TIME_WINDOW_FILE), png.with_name(SUMMARY_JSON)]


def default_out_dir(report: GrowthReport) -> Path:
    """``<run dir>/growth_report``, plus ``key=value_...`` when the table holds run keys."""
    out = report.selection.path.parent / "growth_report"
    run = report.selection.run
    return out / "_".join(f"{k}={v}" for k, v in run.items()) if run else out


def write_report(
    report: GrowthReport, out: str | os.PathLike | None = None, *, force: bool = False
) -> list[Path]:
    """Draw the figure and write its CSVs, the sliding time-growth fits and the summary.

    Args:
        report: From :func:`build_report`.
        out: Output directory (created); default :func:`default_out_dir`.
        force: Overwrite existing report files.

    Returns:
        The files written (see :func:`report_files`).

    Raises:
        FileExistsError: When a report file exists in ``out`` and ``force`` is False.
    """
    out = default_out_dir(report) if out is None else Path(out)
    files = report_files(out)
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; use --force (force=True) to overwrite")
    cfg = report.config
    cells = heatmap_frame(report.frame, report.layers)
    steps = choose_profile_steps(report.growth, report.warning, report.onset)
    profile = profile_frame(report.frame, report.growth, steps)
    fig, axes = new_figure(2, 2, width=6.2, height=4.4)
    _draw_heatmap(axes[0, 0], cells, report.layers, cfg.metric)
    _draw_factor(axes[0, 1], report)
    _draw_profile(axes[1, 0], profile, cfg.metric, report.layers)
    _draw_coherence(axes[1, 1], report)
    title = f"Growth report: {cfg.metric}, {report.selection.describe()}"
    fig.suptitle(title if len(title) < 120 else "Growth report: " + cfg.metric, fontsize=10)
    panels = dict(zip(PANELS, [cells, report.growth, profile, report.coherence], strict=True))
    save_figure(fig, files[0], panels)
    report.time_window.to_parquet(files[-2], index=False)
    with open(files[-1], "w") as fh:
        json.dump(summarize(report, files), fh, indent=2, allow_nan=False)
        fh.write("\n")
    return files
