"""The four-panel figure of the deep linear divergence experiment, drawn from saved tables.

(a) iterations to divergence vs learning rate, per norm (median and range over seeds);
(b) ``output_rms`` vs depth at several iterations, WN at a representative learning rate,
    with the fitted per-layer growth factor in the legend;
(c) max and mean weight-row coherence vs iteration, per norm (median over layers);
(d) fitted depth-growth factor vs iteration per norm, divergence marked.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from stability import fitting
from stability.experiments.plotting import new_figure, norm_color, norm_label, save_figure


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


def panel_depth_profile(records: pd.DataFrame, norm: str, lr: float, seed: int) -> pd.DataFrame:
    """(b): ``output_rms`` per layer at a few iterations, with the fitted factor per iteration."""
    run = records[(records["norm"] == norm) & (records["lr"] == lr) & (records["seed"] == seed)]
    run = run.drop(columns=["norm", "lr", "seed"])
    rms = run[run["metric"] == "output_rms"]
    last = int(rms["step"].max())
    steps = sorted({0, last // 4, last // 2, (3 * last) // 4, last})
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


def draw(records: pd.DataFrame, summary: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """Draw the four panels into ``out/deep_linear_divergence.png`` plus one CSV per panel."""
    fig, axes = new_figure(2, 2, width=5.6, height=4.0)
    (ax_a, ax_b), (ax_c, ax_d) = axes
    iters_limit = int(summary["iteration"].max()) if len(summary) else 0
    lr = representative_lr(summary)
    seed = int(summary["seed"].min())

    a = panel_iterations(summary)
    for norm, frame in a.groupby("norm", sort=False):
        c = norm_color(norm)
        ax_a.fill_between(frame["lr"], frame["low"], frame["high"], color=c, alpha=0.15)
        ax_a.plot(frame["lr"], frame["median"], "o-", color=c, label=norm_label(norm))
    ax_a.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="iterations to divergence",
        title="(a) divergence vs learning rate",
    )
    ax_a.axhline(iters_limit, color="k", lw=0.8, ls=":")
    ax_a.text(a["lr"].min(), iters_limit, " censored (no divergence)", va="bottom", fontsize=8)
    ax_a.legend()

    b = panel_depth_profile(records, "wn", lr, seed) if "wn" in set(summary["norm"]) else None
    if b is not None and not b.empty:
        cmap = __import__("matplotlib").colormaps["viridis"]
        steps = sorted(b["step"].unique())
        for i, (step, frame) in enumerate(b.groupby("step")):
            color = cmap(i / max(len(steps) - 1, 1))
            ax_b.plot(frame["layer_idx"], frame["output_rms"], ".", color=color, ms=4)
            factor, intercept = frame["factor"].iloc[0], frame["intercept"].iloc[0]
            if np.isfinite(factor):
                depth = frame["layer_idx"].to_numpy()
                ax_b.plot(
                    depth,
                    np.exp(intercept + np.log(factor) * depth),
                    "-",
                    color=color,
                    label=f"iter {step}: x{factor:.3f}/layer",
                )
        ax_b.set(
            yscale="log",
            xlabel="layer (depth order)",
            ylabel="output rms",
            title=f"(b) WN output rms vs depth, lr={lr:g}, seed {seed}",
        )
        ax_b.legend(fontsize=7)

    c = panel_coherence(records, lr, seed)
    for (norm, metric), frame in c.groupby(["norm", "metric"], sort=False):
        style = "-" if metric == "coherence" else "--"
        label = f"{norm_label(norm)} {'max' if metric == 'coherence' else 'mean'}"
        ax_c.plot(
            frame["step"], frame["median_over_layers"], style, color=norm_color(norm), label=label
        )
    ax_c.set_xscale("symlog", linthresh=10)
    ax_c.set(
        xlabel="iteration (linear to 10, then log)",
        ylabel="row coherence (median over layers)",
        ylim=(0, 1.02),
        title=f"(c) weight-row coherence, lr={lr:g}",
    )
    ax_c.legend(fontsize=7, ncol=2)

    d = panel_growth(records, summary, lr)
    for (norm, run_seed), frame in d.groupby(["norm", "seed"], sort=False):
        label = norm_label(norm) if run_seed == seed else None
        ax_d.plot(frame["step"], frame["factor"], "-", color=norm_color(norm), lw=1, label=label)
        onset = int(frame["onset"].iloc[0])
        at = frame[frame["step"] == onset - 1]
        if onset >= 0 and not at.empty:
            ax_d.plot(at["step"], at["factor"], "x", color=norm_color(norm), ms=8, mew=2)
    ax_d.axhline(1.0, color="k", lw=0.8)
    ax_d.set_xscale("symlog", linthresh=10)
    ax_d.set(
        yscale="log",
        xlabel="iteration (linear to 10, then log)",
        ylabel="fitted growth factor per layer",
        title=f"(d) depth growth, lr={lr:g} (x: last step before divergence)",
    )
    ax_d.legend()

    panels = {"a_iterations": a, "c_coherence": c, "d_growth": d}
    if b is not None:
        panels["b_depth_profile"] = b
    return save_figure(fig, Path(out) / "deep_linear_divergence.png", panels)
