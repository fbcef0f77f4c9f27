r"""Figure 4 from saved runs: the output norms of ResNet-50's layers over training, WN
(the paper's Figure 4) beside BN, each a PNG plus one CSV per panel.

* (a) the norm of the output of the first and the last conv/linear layer (smallest and
  largest ``layer_idx``, i.e. depth order) after the first epoch, relative to its mean
  over epoch 1 (the CSV also holds the raw norms);
* (b) the row coherence of the same layers;
* (c) every layer's fitted time-growth factor of its output norm per epoch
  (:func:`growth_per_epoch`);
* (d), (e) every layer's output norm per epoch relative to epoch 1, WN and BN, as a
  layer x epoch map of :math:`\log_2`, from epoch 1 on (:func:`layer_norms_by_epoch`);
* (f) the same at the last epoch against depth, WN and BN.

A BN network's recorded conv outputs are taken *before* its BatchNorm; its last layer,
``fc``, reads BN-normalized features. Seed 0 of each norm is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stability.experiments.paper_figures.runs import RunInfo, steps_per_epoch, subtitle
from stability.experiments.plotting import new_figure, norm_color, norm_label, save_figure
from stability.records.runs import RECORDS

#: At most this many points per curve in the CSVs (longer runs are averaged in bins).
MAX_POINTS = 2000
#: Points per curve in panel (a) (geometric means over bins of steps).
PLOT_POINTS = 200
#: The colour scale of the maps (d), (e): log2 of the relative norm in [-LOG2_RANGE, +].
LOG2_RANGE = 1.0


def _geometric_mean(values: pd.Series) -> float:
    return float(np.exp(np.log(values).mean()))


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
    return grouped.agg(step=("step", "mean"), value=("value", _geometric_mean)).drop(columns="bin")


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
    per_epoch = steps_per_epoch(run)
    data = {}
    for metric in ("output_norm", "coherence"):
        sub = frame[frame["metric"] == metric][["layer", "layer_idx", "step", "value"]]
        sub = _binned(sub.sort_values(["layer_idx", "step"]), max_points)
        sub = sub.assign(epoch=sub["step"] / per_epoch)
        window = sub[(sub["epoch"] >= SETTLE_EPOCHS) & (sub["epoch"] < SETTLE_EPOCHS + 1)]
        window = window if len(window) else sub
        base = window.groupby("layer")["value"].apply(_geometric_mean)
        sub = sub.assign(relative=sub["value"] / sub["layer"].map(base))
        columns = ["layer", "layer_idx", "step", "epoch", "value", "relative"]
        data[metric] = sub[columns].reset_index(drop=True)
    return data


def growth_per_epoch(run: RunInfo, norms: pd.DataFrame | None = None) -> pd.DataFrame:
    r"""Every layer's fitted exponential growth of its output norm after the first epoch.

    :func:`stability.fitting.time_growth` fits :math:`\log \|o_k(t)\| = a_k + b_k t` by
    least squares over every recorded step :math:`t` of layer :math:`k` after
    :data:`SETTLE_EPOCHS` epochs (all steps if the run is shorter); the factor per
    epoch is :math:`\exp(b_k S)`, :math:`S` the optimizer steps per epoch (1: flat; 1.1:
    the norm grows 10 % per epoch). Columns ``layer, layer_idx, factor_per_epoch,
    factor_low, factor_high`` (the 95 % interval), ``r2``, ``n_points``. ``norms``: the
    run's ``output_norm`` records if already read (:func:`_records`).
    """
    from stability.fitting import time_growth

    frame = _records(run, ["output_norm"]) if norms is None else norms
    per_epoch = steps_per_epoch(run)
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


def layer_norms_by_epoch(run: RunInfo, norms: pd.DataFrame | None = None) -> pd.DataFrame:
    r"""Every layer's output norm per epoch relative to epoch :data:`SETTLE_EPOCHS`.

    ``relative(k, e)`` is the geometric mean of :math:`\|o_k(t)\|` over the steps of
    epoch ``e`` (``[e S, (e + 1) S)``, ``S`` steps per epoch) divided by the same over epoch
    1 (epoch 0 for a one-epoch run). Columns ``layer, layer_idx, epoch, norm_mean,
    relative``; non-finite and non-positive norms are left out. ``norms`` as in
    :func:`growth_per_epoch`.
    """
    frame = _records(run, ["output_norm"]) if norms is None else norms
    frame = frame[np.isfinite(frame["value"]) & (frame["value"] > 0)]
    per_epoch = steps_per_epoch(run)
    frame = frame.assign(epoch=(frame["step"] // per_epoch).astype(int))
    means = frame.groupby(["layer_idx", "layer", "epoch"], as_index=False)["value"].agg(
        _geometric_mean
    )
    reference = SETTLE_EPOCHS if (means["epoch"] == SETTLE_EPOCHS).any() else 0
    base = means[means["epoch"] == reference].set_index("layer")["value"]
    means = means.rename(columns={"value": "norm_mean"})
    return means.assign(relative=means["norm_mean"] / means["layer"].map(base))


def _draw_map(ax, table: pd.DataFrame, norm: str, letter: str):
    """Panel of :func:`layer_norms_by_epoch`: log2(relative) over layer (y) x epoch (x)."""
    settled = table[table["epoch"] >= SETTLE_EPOCHS]  # the first epoch is a transient
    grid = (settled if len(settled) else table).pivot(
        index="layer_idx", columns="epoch", values="relative"
    )
    image = ax.pcolormesh(grid.columns, grid.index, np.log2(grid.to_numpy()), cmap="RdBu_r",
                          vmin=-LOG2_RANGE, vmax=LOG2_RANGE, shading="nearest")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer (depth order)")
    ax.set_title(f"({letter}) {norm_label(norm)}: every layer's norm vs epoch 1", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(False)
    return image


_LINE_PANELS = {
    "output_norm": ("(a) norm of the layer output, relative to epoch 1",
                    r"$\|o(t)\|_2 \,/\, \|o(\mathrm{epoch}\ 1)\|_2$"),
    "coherence": ("(b) row coherence of the layer weights", r"$\max_{i\ne j}|\cos(w_i, w_j)|$"),
}  # fmt: skip


def _draw_lines(ax, frame: pd.DataFrame, metric: str, norm: str, per_epoch: float) -> None:
    """Panels (a), (b): the first (dotted) and last (solid) layer of one norm."""
    for i, (_, sub) in enumerate(frame.groupby("layer_idx", sort=True)):
        x, y = sub["epoch"], sub["value"]
        if metric == "output_norm":  # the drift after the first epoch's transient
            after = sub[sub["epoch"] >= SETTLE_EPOCHS]
            after = _binned(after.assign(value=after["relative"]), PLOT_POINTS)
            x, y = (after["step"] / per_epoch, after["value"]) if len(after) else (x, y)
        where = "first" if i == 0 else "last"
        ax.plot(x, y, ":" if i == 0 else "-", color=norm_color(norm), lw=1.3,
                label=f"{norm_label(norm)} {where} ({sub['layer'].iloc[0]})")  # fmt: skip


def draw_figure4(spec, preset, runs, out) -> list[Path]:
    """Figure 4 (see the module docstring) for the runs of ``spec.norms`` (WN, BN)."""
    fig, axes = new_figure(2, 3, width=5.0, height=3.9)
    (line_a, line_b, growth_ax), (map_d, map_e, last_ax) = axes
    data: dict[str, list[pd.DataFrame]] = {
        "output_norm": [], "coherence": [], "growth": [], "layers": []
    }  # fmt: skip
    image = None
    for n, (norm, run) in enumerate(runs.items()):
        color, per_epoch = norm_color(norm), steps_per_epoch(run)
        for ax, (metric, frame) in zip((line_a, line_b), figure4_data(run).items(), strict=True):
            _draw_lines(ax, frame, metric, norm, per_epoch)
            data[metric].append(frame.assign(norm=norm))
        norms = _records(run, ["output_norm"])  # every layer's, read once for (c)-(f)
        growth = growth_per_epoch(run, norms)
        growth_ax.plot(growth["layer_idx"], growth["factor_per_epoch"], ".-", color=color, ms=4,
                       lw=0.8, label=norm_label(norm))  # fmt: skip
        data["growth"].append(growth.assign(norm=norm))
        layers = layer_norms_by_epoch(run, norms)
        data["layers"].append(layers.assign(norm=norm))
        if n < 2:
            image = _draw_map((map_d, map_e)[n], layers, norm, "de"[n])
        last = layers[layers["epoch"] == layers["epoch"].max()]
        last_ax.plot(last["layer_idx"], last["relative"], ".-", color=color, ms=4, lw=0.8,
                     label=norm_label(norm))  # fmt: skip
    for ax, (title, ylabel) in zip((line_a, line_b), _LINE_PANELS.values(), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    line_a.axhline(1.0, color="0.5", lw=0.8)
    for ax in (growth_ax, last_ax):
        ax.axhline(1.0, color="0.5", lw=0.8)
        ax.set_xlabel("layer (depth order)")
        ax.legend(fontsize=8)
    growth_ax.set_ylabel("fitted growth of $\\|o\\|_2$ per epoch")
    growth_ax.set_title("(c) output-norm growth per epoch, by layer", fontsize=10)
    last_ax.set_yscale("log", base=2)
    last_ax.set_ylabel("last epoch / epoch 1")
    last_ax.set_title("(f) every layer's norm at the last epoch vs epoch 1", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=[map_d, map_e], label="log2 (norm / norm in epoch 1)")
    fig.suptitle(subtitle(spec, preset, runs, every_seed=False))
    frames = {name: pd.concat(parts, ignore_index=True) for name, parts in data.items()}
    return save_figure(fig, out / f"{spec.name}.png", frames)
