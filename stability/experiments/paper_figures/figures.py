"""Drawing the paper's Figures 2, 3 and 4 from saved runs (each a PNG plus one CSV per panel).

* ``figure2.png``: cifar10-nv with BN, WN, NormProp, TReLU-WN and no normalization:
  (a) training loss and (b) test top-1 accuracy against the epoch (paper, Figure 2).
* ``figure3.png``: ResNet-50 with BN and WN: (a) train top-1, (b) test top-1,
  (c) train loss, (d) test loss against the epoch (paper, Figure 3).
* ``figure4.png``: ResNet-50 with WN (the paper's Figure 4) next to BN: (a) the norm of
  the output of the first and the last conv/linear layer (smallest and largest
  ``layer_idx``, i.e. depth order) after the first epoch, relative to its mean over epoch
  1 (the CSV also holds the raw norms), (b) the row coherence of the same layers, and (c)
  every layer's fitted time-growth factor of its output norm per epoch
  (:func:`growth_per_epoch`). A BN network's recorded conv outputs are taken
  *before* its BatchNorm; its last layer, ``fc``, reads BN-normalized features.

With several seeds (the ``mini`` preset), every seed is drawn: seed 0 labelled, the others
thinner in the same colour; Figure 4 shows seed 0.

Figures come from saved files only (history.csv, records.parquet, divergence.json), never
from training inside a drawing function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stability.experiments.paper_figures.runs import FigureSpec, RunInfo, is_complete
from stability.experiments.plotting import new_figure, norm_color, norm_label, save_figure
from stability.records.runs import RECORDS

#: At most this many points per curve in Figure 4 (longer runs are averaged in bins).
MAX_POINTS = 2000
#: Points per curve in Figure 4's panel (a) (geometric means over bins of steps).
PLOT_POINTS = 200
#: One marker per normalization in the epoch curves, so coinciding curves stay visible.
MARKERS = ("o", "s", "^", "D", "v")


def _label(run: RunInfo) -> str:
    label = norm_label(run.norm)
    if run.divergence is not None:
        where = run.divergence
        label += f" (diverged at step {where.get('step')}, epoch {where.get('epoch')})"
    elif not is_complete(run):
        label += f" ({len(run.history)}/{run.config.get('epochs')} epochs)"
    return label


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curves(ax, runs: Mapping[str, RunInfo], column: str, ylabel: str, log: bool):
    """Draw ``column`` against the epoch for every run and seed; return the tidy data drawn."""
    frames = []
    for i, (norm, first) in enumerate(runs.items()):
        for run in first.all_seeds:
            h = run.history
            seed = int(run.config.get("seed", 0))
            marker = MARKERS[i % len(MARKERS)] if len(h) < 30 else None  # overlapping curves
            main = run is first
            ax.plot(h["epoch"], h[column], marker=marker if main else None, ms=4, mfc="none",
                    color=norm_color(norm), lw=1.5 if main else 0.8, alpha=1.0 if main else 0.6,
                    label=_label(run) if main else None)  # fmt: skip
            if run.divergence is not None and len(h):
                ax.plot(h["epoch"].iloc[-1], h[column].iloc[-1], "x", color=norm_color(norm), ms=9)
            frames.append(
                pd.DataFrame({"norm": norm, "seed": seed, "epoch": h["epoch"], column: h[column]})
            )
    others = sorted({int(r.config.get("seed", 0)) for f in runs.values() for r in f.seeds})
    if others:
        ax.plot([], [], color="0.4", lw=0.8, alpha=0.6,
                label=f"thin: seed {', '.join(map(str, others))}")  # fmt: skip
    positive = all((r.history[column] > 0).all() for f in runs.values() for r in f.all_seeds)
    if log and positive:
        ax.set_yscale("log")
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, framealpha=0.6)
    return pd.concat(frames, ignore_index=True)


_PANEL_TEXT = {
    "train_loss": ("training loss", True),
    "test_loss": ("test loss", True),
    "train_top1": ("train top-1 accuracy (%)", False),
    "test_top1": ("test top-1 accuracy (%)", False),
}


def _subtitle(
    spec: FigureSpec, preset: str, runs: Mapping[str, RunInfo], every_seed: bool = True
) -> str:
    first = next(iter(runs.values()))
    seeds = ""
    if first.seeds:
        seeds = f", {len(first.all_seeds)} seeds" if every_seed else ", seed 0"
    return f"{spec.title} ({first.config.get('dataset')}, {preset} preset{seeds})"


def draw_curves(
    spec: FigureSpec, preset: str, runs: Mapping[str, RunInfo], out: Path, panels: Sequence[str]
) -> list[Path]:
    """A figure of history curves, one panel per history column in ``panels``."""
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols, width=5.2, height=3.9)
    data = {}
    for i, (ax, column) in enumerate(zip(axes.flat, panels, strict=False)):
        ylabel, log = _PANEL_TEXT[column]
        data[column] = _curves(ax, runs, column, ylabel, log)
        ax.set_title(f"({'abcd'[i]}) {ylabel}", fontsize=10)
    fig.suptitle(_subtitle(spec, preset, runs))
    return save_figure(fig, out / f"{spec.name}.png", data)


def draw_figure2(spec, preset, runs, out) -> list[Path]:
    """Figure 2: training loss and test top-1 of cifar10-nv per normalization."""
    return draw_curves(spec, preset, runs, out, ["train_loss", "test_top1"])


def draw_figure3(spec, preset, runs, out) -> list[Path]:
    """Figure 3: train/test top-1 and loss of ResNet-50, BN vs WN."""
    return draw_curves(
        spec, preset, runs, out, ["train_top1", "test_top1", "train_loss", "test_loss"]
    )


def _steps_per_epoch(run: RunInfo) -> float:
    meta = run.config.get("meta", {})
    if meta.get("steps_per_epoch"):
        return float(meta["steps_per_epoch"])
    h = run.history
    return float(h["step"].iloc[0] / h["epoch"].iloc[0])


def _layer_order(records: Path) -> pd.DataFrame:
    """``layer, layer_idx`` of every recorded layer, in depth order.

    Read from the first part only (its first step records every layer), so a paper-scale
    record table is not scanned for it.
    """
    parts = sorted(records.glob("part-*.parquet"))
    source = parts[0] if parts else records
    frame = pd.read_parquet(
        source, columns=["layer", "layer_idx"], filters=[("metric", "==", "output_norm")]
    )
    return frame.drop_duplicates().sort_values("layer_idx").reset_index(drop=True)


def _binned(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """At most ``max_points`` points per layer: geometric means over bins of steps."""
    if frame.groupby("layer").size().max() <= max_points:
        return frame
    edges = np.linspace(frame["step"].min(), frame["step"].max() + 1, max_points + 1)
    frame = frame.assign(bin=np.digitize(frame["step"], edges))
    frame = frame[np.isfinite(frame["value"]) & (frame["value"] > 0)]
    grouped = frame.groupby(["layer", "layer_idx", "bin"], as_index=False)
    return grouped.agg(
        step=("step", "mean"), value=("value", lambda v: float(np.exp(np.log(v).mean())))
    ).drop(columns="bin")


def _records(run: RunInfo, metrics: Sequence[str], layers: Sequence[str] | None = None):
    """The run's records of ``metrics`` (of ``layers``), call 0, rank 0 under DDP."""
    filters = [("metric", "in", list(metrics))]
    if layers is not None:
        filters.append(("layer", "in", list(layers)))
    frame = pd.read_parquet(run.path / RECORDS, filters=filters)
    if "rank" in frame.columns:  # DDP: rank 0's records
        frame = frame[frame["rank"] == 0]
    return frame[frame["call_idx"] == 0]


#: Figure 4 measures growth after this many epochs: the first epoch moves every norm by
#: orders of magnitude away from its value at initialization, a transient, not the drift.
SETTLE_EPOCHS = 1


def figure4_data(run: RunInfo, max_points: int = MAX_POINTS) -> dict[str, pd.DataFrame]:
    """Output norm and coherence of the first and last recorded layers, against the epoch.

    ``value`` is the recorded value; ``relative`` is it divided by the layer's geometric
    mean over epoch :data:`SETTLE_EPOCHS` (``[1, 2)``; over the whole run if it is shorter).
    """
    order = _layer_order(run.path / RECORDS)
    layers = list(order.iloc[[0, -1]]["layer"])
    frame = _records(run, ["output_norm", "coherence"], layers)
    per_epoch = _steps_per_epoch(run)
    data = {}
    for metric in ("output_norm", "coherence"):
        sub = frame[frame["metric"] == metric][["layer", "layer_idx", "step", "value"]]
        sub = _binned(sub.sort_values(["layer_idx", "step"]), max_points)
        sub = sub.assign(epoch=sub["step"] / per_epoch)
        window = sub[(sub["epoch"] >= SETTLE_EPOCHS) & (sub["epoch"] < SETTLE_EPOCHS + 1)]
        window = window if len(window) else sub
        base = window.groupby("layer")["value"].apply(lambda v: float(np.exp(np.log(v).mean())))
        sub = sub.assign(relative=sub["value"] / sub["layer"].map(base))
        columns = ["layer", "layer_idx", "step", "epoch", "value", "relative"]
        data[metric] = sub[columns].reset_index(drop=True)
    return data


def growth_per_epoch(run: RunInfo) -> pd.DataFrame:
    r"""Every layer's fitted exponential growth of its output norm after the first epoch.

    :func:`stability.fitting.time_growth` fits :math:`\log \|o_k(t)\| = a_k + b_k t` by
    least squares over every recorded step :math:`t` of layer :math:`k` after
    :data:`SETTLE_EPOCHS` epochs (all steps if the run is shorter); the factor per
    epoch is :math:`\exp(b_k S)`, :math:`S` the optimizer steps per epoch (1: flat; 1.1:
    the norm grows 10 % per epoch). Columns ``layer, layer_idx, factor_per_epoch,
    factor_low, factor_high`` (the 95 % interval), ``r2``, ``n_points``.
    """
    from stability.fitting import time_growth

    frame = _records(run, ["output_norm"])
    per_epoch = _steps_per_epoch(run)
    settled = frame[frame["step"] >= SETTLE_EPOCHS * per_epoch]
    frame = settled if len(settled) else frame
    rows = []
    for (idx, layer), sub in frame.groupby(["layer_idx", "layer"], sort=True):
        fit = time_growth(sub, layer, "output_norm").iloc[0]
        rows.append({
            "layer": layer,
            "layer_idx": int(idx),
            "factor_per_epoch": math.exp(fit["slope"] * per_epoch),
            "factor_low": fit["factor_low"] ** per_epoch,
            "factor_high": fit["factor_high"] ** per_epoch,
            "r2": fit["r2"],
            "n_points": int(fit["n_points"]),
        })  # fmt: skip
    return pd.DataFrame(rows)


_FIGURE4_PANELS = {
    "output_norm": ("(a) norm of the layer output, relative to epoch 1",
                    r"$\|o(t)\|_2 \,/\, \|o(\mathrm{epoch}\ 1)\|_2$", False),
    "coherence": ("(b) row coherence of the layer weights", r"$\max_{i\ne j}|\cos(w_i, w_j)|$",
                  False),
}  # fmt: skip


def draw_figure4(spec, preset, runs, out) -> list[Path]:
    """Figure 4: output norm (log) and row coherence of the first and last layers of WN
    (and BN) ResNet-50 over training, and each layer's growth factor per epoch."""
    fig, axes = new_figure(1, 3, width=5.0, height=3.9)
    data: dict[str, list[pd.DataFrame]] = {"output_norm": [], "coherence": [], "growth": []}
    for norm, run in runs.items():
        color, per_epoch = norm_color(norm), _steps_per_epoch(run)
        for ax, (metric, frame) in zip(axes.flat, figure4_data(run).items(), strict=False):
            for i, (_, sub) in enumerate(frame.groupby("layer_idx", sort=True)):
                where = "first" if i == 0 else "last"
                x, y = sub["epoch"], sub["value"]
                if metric == "output_norm":  # the drift after the first epoch's transient
                    after = sub[sub["epoch"] >= SETTLE_EPOCHS]
                    after = _binned(after.assign(value=after["relative"]), PLOT_POINTS)
                    x, y = (after["step"] / per_epoch, after["value"]) if len(after) else (x, y)
                ax.plot(x, y, ":" if i == 0 else "-", color=color, lw=1.3,
                        label=f"{norm_label(norm)} {where} ({sub['layer'].iloc[0]})")  # fmt: skip
            data[metric].append(frame.assign(norm=norm))
        growth = growth_per_epoch(run)
        axes.flat[2].plot(growth["layer_idx"], growth["factor_per_epoch"], ".-", color=color,
                          ms=4, lw=0.8, label=norm_label(norm))  # fmt: skip
        data["growth"].append(growth.assign(norm=norm))
    for ax, (metric, (title, ylabel, log)) in zip(axes.flat, _FIGURE4_PANELS.items(), strict=False):
        values = pd.concat(data[metric])["value"]
        if log and (values > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    axes.flat[0].axhline(1.0, color="0.5", lw=0.8)
    growth_ax = axes.flat[2]
    growth_ax.axhline(1.0, color="0.5", lw=0.8)
    growth_ax.set_xlabel("layer (depth order)")
    growth_ax.set_ylabel("fitted growth of $\\|o\\|_2$ per epoch")
    growth_ax.set_title("(c) output-norm growth per epoch, by layer", fontsize=10)
    growth_ax.legend(fontsize=8)
    fig.suptitle(_subtitle(spec, preset, runs, every_seed=False))
    frames = {name: pd.concat(parts, ignore_index=True) for name, parts in data.items()}
    return save_figure(fig, out / f"{spec.name}.png", frames)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("figure2", "Figure 2: cifar10-nv, BN vs WN", "cifar10_nv",
               ("bn", "wn", "np", "trelu", "none"), draw_figure2),
    FigureSpec("figure3", "Figure 3: ResNet-50, BN vs WN", "resnet50", ("bn", "wn"),
               draw_figure3),
    FigureSpec("figure4", "Figure 4: ResNet-50 output norms, WN vs BN", "resnet50",
               ("wn", "bn"), draw_figure4),
)  # fmt: skip
