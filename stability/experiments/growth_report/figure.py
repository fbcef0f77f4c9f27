"""The growth-report figure: four panels, each saved with the CSV of the numbers drawn.

(a) heatmap of ``log10`` of the metric over step and depth (non-finite cells marked);
(b) the fitted per-layer depth factor with its confidence band, on an axis linear up to
    1.2 (so 1.00-1.10 is readable) and logarithmic above (the blow-up still fits; see
    :func:`stability.experiments.plotting.factor_axis`), with the detector's warning, the
    factor crossing and the onset marked;
(c) the metric against depth at a few steps, with the fitted line ``c * f**k``;
(d) the row coherence of the first, middle and last layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stability.experiments.growth_report.build import GrowthReport
from stability.experiments.growth_report.config import PANELS
from stability.experiments.growth_report.panels import (
    choose_profile_steps,
    heatmap_frame,
    profile_frame,
)
from stability.experiments.plotting import factor_axis, new_figure, save_figure

#: Colours and styles of the event lines, shared by panels (b) and (d).
DETECTOR_STYLE = {"color": "#ff7f0e", "ls": "--", "lw": 1.4}
CROSSING_STYLE = {"color": "#d62728", "ls": "-.", "lw": 1.1}
ONSET_STYLE = {"color": "black", "ls": ":", "lw": 1.6}


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


def _lead(lead: int | None) -> str:
    return "" if lead is None else f", {lead} before onset"


def _event_lines(ax, report: GrowthReport, crossing: bool = True) -> None:
    """Vertical lines: the detector's warning, the factor crossing, the onset."""
    if report.warning is not None:
        w = report.warning
        ax.axvline(w.warn_step, **DETECTOR_STYLE, label=f"detector warning, step {w.warn_step}"
                   f"{_lead(w.lead)}")  # fmt: skip
    if crossing and report.crossing is not None:
        c = report.crossing
        thr = report.config.factor_threshold
        ax.axvline(c.warn_step, **CROSSING_STYLE, label=f"factor >= {thr:g}, step {c.warn_step}"
                   f"{_lead(c.lead)}")  # fmt: skip
    if report.onset is not None:
        ax.axvline(report.onset.step, **ONSET_STYLE, label=f"divergence onset, step "
                   f"{report.onset.step}")  # fmt: skip


def factor_floor(growth: pd.DataFrame, threshold: float) -> float:
    """The bottom of panel (b): below 1 and the threshold, and low enough for the 2nd
    percentile of the band's lower edge (a few wild fits do not stretch the axis)."""
    low = growth["factor_low"].to_numpy(dtype=np.float64)
    low = low[np.isfinite(low)]
    floor = min(0.98, threshold - 0.02, float(np.quantile(low, 0.02)) if len(low) else 1.0)
    return max(floor, 0.0)


def _below_scale(ax, steps: np.ndarray, factor: np.ndarray, floor: float) -> None:
    """Triangles on the bottom edge for factors below ``floor``, with the lowest written."""
    below = factor < floor
    if not below.any():
        return
    ax.plot(steps[below], np.full(below.sum(), floor), "v", color="#1f77b4", ms=5,
            clip_on=False, label="fit below the axis")  # fmt: skip
    i = int(np.nanargmin(np.where(below, factor, np.nan)))
    ax.annotate(f"{factor[i]:.3g} at step {int(steps[i])}", (steps[i], floor), xytext=(-4, 4),
                textcoords="offset points", ha="right", fontsize=7, color="#1f77b4")  # fmt: skip


def _draw_factor(ax, report: GrowthReport) -> None:
    g = report.growth
    steps, factor = g["step"].to_numpy(), g["factor"].to_numpy(dtype=np.float64)
    thr = report.config.factor_threshold
    floor = factor_floor(g, thr)
    high = g["factor_high"].to_numpy(dtype=np.float64)
    top = float(np.nanmax(high[np.isfinite(high)])) if np.isfinite(high).any() else 1.0
    band_low = np.maximum(g["factor_low"].to_numpy(dtype=np.float64), floor)
    ax.fill_between(steps, band_low, high, color="#1f77b4", alpha=0.25, lw=0, label="95% CI")
    ax.plot(steps, np.maximum(factor, floor), color="#1f77b4", lw=1.2,
            marker="." if len(steps) <= 60 else None, label="fitted factor exp(slope)")  # fmt: skip
    _below_scale(ax, steps, factor, floor)
    ax.axhline(1.0, color="grey", lw=0.8, zorder=0)
    ax.axhline(thr, color=CROSSING_STYLE["color"], ls="--", lw=0.8, alpha=0.7,
               label=f"factor threshold {thr:g}")  # fmt: skip
    _event_lines(ax, report)
    if report.warning is None:
        ax.plot([], [], " ", label="no detector warning")
    factor_axis(ax, floor, top, split=max(1.2, 1 + 3 * (thr - 1)))
    _step_axis(ax)
    ax.set_ylabel("per-layer growth factor (1 = flat)")
    ax.set_title(f"(b) depth growth of {report.config.metric}")
    ax.legend(fontsize=7, loc="upper left", framealpha=0.85)


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


def _position(i: int, n: int) -> str:
    return "first" if i == 0 else ("last" if i == n - 1 else "middle")


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
    chosen = list(dict.fromkeys(data["layer"]))
    for i, layer in enumerate(chosen):
        rows = data[data["layer"] == layer]
        ax.plot(
            rows["step"],
            rows["value"],
            lw=1.2,
            marker="." if len(rows) < 60 else None,
            label=f"{layer} ({_position(i, len(chosen))} layer)",
        )
    _event_lines(ax, report, crossing=False)
    ax.set_ylim(0, 1.02)
    _step_axis(ax)
    ax.set_ylabel("max |cos| between rows")
    ax.legend(fontsize=7, loc="best")


def draw_report(report: GrowthReport, png: str | Path) -> list[Path]:
    """Draw the four panels into ``png`` and save one CSV per panel beside it."""
    cfg = report.config
    cells = heatmap_frame(report.frame, report.layers)
    marked = report.warning if report.warning is not None else report.crossing
    steps = choose_profile_steps(report.growth, marked, report.onset)
    profile = profile_frame(report.frame, report.growth, steps)
    fig, axes = new_figure(2, 2, width=6.2, height=4.4)
    _draw_heatmap(axes[0, 0], cells, report.layers, cfg.metric)
    _draw_factor(axes[0, 1], report)
    _draw_profile(axes[1, 0], profile, cfg.metric, report.layers)
    _draw_coherence(axes[1, 1], report)
    title = f"Growth report: {cfg.metric}, {report.selection.describe()}"
    fig.suptitle(title if len(title) < 120 else "Growth report: " + cfg.metric, fontsize=10)
    panels = dict(zip(PANELS, [cells, report.growth, profile, report.coherence], strict=True))
    return save_figure(fig, png, panels)
