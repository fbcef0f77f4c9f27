"""The four-panel figure of the deep linear divergence experiment, drawn from saved tables.

(a) iterations to divergence vs learning rate, per norm (median and range over seeds; each
    norm has its own marker and line style, so coinciding curves stay visible);
(b) ``output_rms`` vs depth at several iterations, WN at a representative learning rate,
    with the fitted per-layer growth factor in the legend (every iteration when the run is
    short; the onset iteration, where values are non-finite or beyond the threshold and no
    fit exists, is drawn as crosses);
(c) max and mean weight-row coherence vs iteration, per norm (median over layers);
(d) fitted depth-growth factor vs iteration per norm, divergence marked; the factor axis
    is linear up to 1.2 (so 1.00-1.10 is readable) and logarithmic above.

The iteration axis of (c) and (d) is linear from 0 to 10, with a tick at every even
iteration (where the divergences happen), and logarithmic beyond.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from stability import fitting
from stability.experiments.plotting import (
    factor_axis,
    new_figure,
    norm_color,
    norm_label,
    norm_style,
    save_figure,
)

#: The iteration axis of (c) and (d) is linear up to here, logarithmic beyond.
LINEAR_ITERATIONS = 10
#: The factor axis of (d) is linear up to here, logarithmic beyond.
LINEAR_FACTOR = 1.2


def representative_lr(summary: pd.DataFrame, norm: str = "wn") -> float:
    """The learning rate at which ``norm`` diverged latest (longest history to look at).

    Falls back to the largest learning rate when ``norm`` never diverged.
    """
    frame = summary[summary["norm"] == norm]
    if frame.empty:
        frame = summary
    diverged = frame[frame["diverged"]]
    if diverged.empty:
        return float(frame["lr"].max())
    median = diverged.groupby("lr")["iteration"].median()
    return float(median.idxmax())


def panel_iterations(summary: pd.DataFrame) -> pd.DataFrame:
    """(a): median, min and max iterations to divergence per (norm, lr)."""
    grouped = summary.groupby(["norm", "lr"], sort=False)
    return grouped.agg(
        median=("iteration", "median"),
        low=("iteration", "min"),
        high=("iteration", "max"),
        diverged=("diverged", "sum"),
        seeds=("seed", "count"),
    ).reset_index()


def profile_steps(last: int, most: int = 6) -> list[int]:
    """Iterations drawn in (b): every one up to ``last`` when there are at most ``most``,
    else 0, a quarter, half, three quarters, the one before ``last`` and ``last``."""
    if last + 1 <= most:
        return list(range(last + 1))
    return sorted({0, last // 4, last // 2, (3 * last) // 4, last - 1, last})


def panel_depth_profile(records: pd.DataFrame, norm: str, lr: float, seed: int) -> pd.DataFrame:
    """(b): ``output_rms`` per layer at a few iterations, with the fitted factor per iteration."""
    run = records[(records["norm"] == norm) & (records["lr"] == lr) & (records["seed"] == seed)]
    run = run.drop(columns=["norm", "lr", "seed"])
    rms = run[run["metric"] == "output_rms"]
    steps = profile_steps(int(rms["step"].max()))
    growth = fitting.depth_growth(run, "output_rms").set_index("step")
    profile = rms[rms["step"].isin(steps)][["step", "layer_idx", "value"]].copy()
    profile["factor"] = profile["step"].map(growth["factor"])
    profile["intercept"] = profile["step"].map(growth["intercept"])
    return profile.rename(columns={"value": "output_rms"})


def panel_coherence(records: pd.DataFrame, lr: float, seed: int) -> pd.DataFrame:
    """(c): median over layers of max / mean row coherence per (norm, step)."""
    chosen = records[(records["lr"] == lr) & (records["seed"] == seed)]
    chosen = chosen[chosen["metric"].isin(["coherence", "coherence_mean"])]
    table = chosen.groupby(["norm", "metric", "step"])["value"].median().reset_index()
    return table.rename(columns={"value": "median_over_layers"})


def panel_growth(records: pd.DataFrame, summary: pd.DataFrame, lr: float) -> pd.DataFrame:
    """(d): fitted depth-growth factor per (norm, seed, step) at one learning rate."""
    frames = []
    chosen = records[records["lr"] == lr]
    for (norm, seed), run in chosen.groupby(["norm", "seed"], sort=False):
        growth = fitting.depth_growth(run.drop(columns=["norm", "lr", "seed"]), "output_rms")
        frames.append(growth[["step", "factor"]].assign(norm=norm, seed=seed))
    table = pd.concat(frames, ignore_index=True)
    onset = summary[summary["lr"] == lr].set_index(["norm", "seed"])
    keys = list(zip(table["norm"], table["seed"], strict=True))
    diverged = [bool(onset.loc[k, "diverged"]) for k in keys]
    iteration = [int(onset.loc[k, "iteration"]) for k in keys]
    table["onset"] = [it if d else -1 for it, d in zip(iteration, diverged, strict=True)]
    return table[["norm", "seed", "step", "factor", "onset"]]


def iteration_axis(ax, last: int) -> None:
    """Linear 0-10 with a tick at every even iteration (and a minor one at each), log beyond."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("symlog", linthresh=LINEAR_ITERATIONS, linscale=2.0)
    ticks = list(range(0, LINEAR_ITERATIONS + 1, 2))
    ticks += [t for t in (20, 50, 100, 200, 500, 1000, 2000, 5000) if t < 0.8 * last]
    ticks += [last] if last > LINEAR_ITERATIONS else []
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(FixedLocator(range(LINEAR_ITERATIONS + 1)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(-0.3, max(last, LINEAR_ITERATIONS) * 1.05)
    ax.set_xlabel(f"iteration (linear 0-{LINEAR_ITERATIONS}, log beyond)")


def _draw_iterations(ax, a: pd.DataFrame, iters_limit: int) -> None:
    order = sorted(a["norm"].unique(), key=lambda n: n == "none")  # none last, on top
    for norm in order:
        frame = a[a["norm"] == norm]
        c = norm_color(norm)
        ax.fill_between(frame["lr"], frame["low"], frame["high"], color=c, alpha=0.12)
        ax.plot(frame["lr"], frame["median"], color=c, label=norm_label(norm), **norm_style(norm))
    ax.set(xscale="log", xlabel="learning rate", ylabel="iterations to divergence",
           title="(a) divergence vs learning rate")  # fmt: skip
    ax.axhline(iters_limit, color="k", lw=0.8, ls=":")
    ax.text(a["lr"].min(), iters_limit, " censored (no divergence)", va="bottom", fontsize=8)
    ax.legend()


def _draw_profile(ax, b: pd.DataFrame, lr: float, seed: int, onset: int | None) -> None:
    cmap = __import__("matplotlib").colormaps["viridis"]
    steps = sorted(b["step"].unique())
    for i, (step, frame) in enumerate(b.groupby("step")):
        color = cmap(i / max(len(steps) - 1, 1))
        factor, intercept = frame["factor"].iloc[0], frame["intercept"].iloc[0]
        depth = frame["layer_idx"].to_numpy()
        if step == onset:
            ax.plot(depth, frame["output_rms"], "x", color="black", ms=4,
                    label=f"iter {step}: diverged (no fit)")  # fmt: skip
            continue
        ax.plot(depth, frame["output_rms"], ".", color=color, ms=4)
        if np.isfinite(factor):
            ax.plot(depth, np.exp(intercept + np.log(factor) * depth), "-", color=color,
                    label=f"iter {step}: x{factor:.3f}/layer")  # fmt: skip
    shown = "every iteration" if len(steps) == steps[-1] + 1 else "iterations"
    ax.set(yscale="log", xlabel="layer (depth order)", ylabel="output rms")
    ax.set_title(f"(b) WN output rms vs depth, lr={lr:g}, seed {seed}:\n{shown} up to the "
                 "onset", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7)


def _draw_coherence(ax, c: pd.DataFrame, lr: float, last: int) -> None:
    for (norm, metric), frame in c.groupby(["norm", "metric"], sort=False):
        style = "-" if metric == "coherence" else "--"
        label = f"{norm_label(norm)} {'max' if metric == 'coherence' else 'mean'}"
        ax.plot(frame["step"], frame["median_over_layers"], style, color=norm_color(norm),
                label=label)  # fmt: skip
    iteration_axis(ax, last)
    ax.set(ylabel="row coherence (median over layers)", ylim=(0, 1.02),
           title=f"(c) weight-row coherence, lr={lr:g}")  # fmt: skip
    ax.legend(fontsize=7, ncol=2)


def _draw_growth(ax, d: pd.DataFrame, lr: float, seed: int, last: int) -> None:
    for (norm, run_seed), frame in d.groupby(["norm", "seed"], sort=False):
        label = norm_label(norm) if run_seed == seed else None
        style = norm_style(norm)
        ax.plot(frame["step"], frame["factor"], ls=style["ls"], color=norm_color(norm), lw=1.2,
                label=label)  # fmt: skip
        onset = int(frame["onset"].iloc[0])
        at = frame[frame["step"] == onset - 1]
        if onset >= 0 and not at.empty:
            ax.plot(at["step"], at["factor"], "x", color=norm_color(norm), ms=8, mew=2)
    ax.axhline(1.0, color="grey", lw=0.8, zorder=0)
    factors = d["factor"].to_numpy(dtype=np.float64)
    finite = factors[np.isfinite(factors) & (factors > 0)]
    low = min(0.98, float(finite.min())) if len(finite) else 0.98
    factor_axis(ax, low, float(finite.max()) if len(finite) else 1.0, LINEAR_FACTOR)
    iteration_axis(ax, last)
    ax.set(ylabel="fitted growth factor per layer",
           title=f"(d) depth growth, lr={lr:g} (x: last step before divergence)")  # fmt: skip
    ax.legend(loc="upper left")


def draw(records: pd.DataFrame, summary: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """Draw the four panels into ``out/deep_linear_divergence.png`` plus one CSV per panel."""
    fig, axes = new_figure(2, 2, width=5.6, height=4.0)
    (ax_a, ax_b), (ax_c, ax_d) = axes
    iters_limit = int(summary["iteration"].max()) if len(summary) else 0
    lr = representative_lr(summary)
    seed = int(summary["seed"].min())

    a = panel_iterations(summary)
    _draw_iterations(ax_a, a, iters_limit)

    b = panel_depth_profile(records, "wn", lr, seed) if "wn" in set(summary["norm"]) else None
    if b is not None and not b.empty:
        row = summary[(summary["norm"] == "wn") & (summary["lr"] == lr) & (summary["seed"] == seed)]
        onset = (
            int(row["iteration"].iloc[0]) if len(row) and bool(row["diverged"].iloc[0]) else None
        )
        _draw_profile(ax_b, b, lr, seed, onset)

    c = panel_coherence(records, lr, seed)
    _draw_coherence(ax_c, c, lr, iters_limit)
    d = panel_growth(records, summary, lr)
    _draw_growth(ax_d, d, lr, seed, iters_limit)

    panels = {"a_iterations": a, "c_coherence": c, "d_growth": d}
    if b is not None:
        panels["b_depth_profile"] = b
    return save_figure(fig, Path(out) / "deep_linear_divergence.png", panels)
