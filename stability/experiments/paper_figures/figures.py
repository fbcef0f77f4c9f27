"""The paper's Figures 2 and 3 from saved runs, and the registry of Figures 2-4 (each a PNG
plus one CSV per panel).

* ``figure2.png``: cifar10-nv with BN, WN, NormProp, TReLU-WN and no normalization:
  (a) training loss and (b) test top-1 accuracy against the epoch (paper, Figure 2).
* ``figure3.png``: ResNet-50 with BN and WN: (a) train top-1, (b) test top-1,
  (c) train loss, (d) test loss against the epoch (paper, Figure 3).
* ``figure4.png``: ResNet-50's output norms, WN beside BN (:mod:`.figure4`).

With several seeds (the ``mini`` preset), every seed is drawn: seed 0 labelled, the others
thinner in the same colour. :data:`FIGURES` is the registry of the three.

Figures come from saved files only (history.csv, records.parquet, divergence.json), never
from training inside a drawing function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from stability.experiments.paper_figures.figure4 import draw_figure4
from stability.experiments.paper_figures.runs import FigureSpec, RunInfo, is_complete, subtitle
from stability.experiments.plotting import new_figure, norm_color, norm_label, save_figure

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
    fig.suptitle(subtitle(spec, preset, runs))
    return save_figure(fig, out / f"{spec.name}.png", data)


def draw_figure2(spec, preset, runs, out) -> list[Path]:
    """Figure 2: training loss and test top-1 of cifar10-nv per normalization."""
    return draw_curves(spec, preset, runs, out, ["train_loss", "test_top1"])


def draw_figure3(spec, preset, runs, out) -> list[Path]:
    """Figure 3: train/test top-1 and loss of ResNet-50, BN vs WN."""
    return draw_curves(
        spec, preset, runs, out, ["train_top1", "test_top1", "train_loss", "test_loss"]
    )


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("figure2", "Figure 2: cifar10-nv, BN vs WN", "cifar10_nv",
               ("bn", "wn", "np", "trelu", "none"), draw_figure2),
    FigureSpec("figure3", "Figure 3: ResNet-50, BN vs WN", "resnet50", ("bn", "wn"),
               draw_figure3),
    FigureSpec("figure4", "Figure 4: ResNet-50 output norms, WN vs BN", "resnet50",
               ("wn", "bn"), draw_figure4),
)  # fmt: skip
