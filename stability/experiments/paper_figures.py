#!/usr/bin/env python
"""Regenerate Figures 2, 3 and 4 of Gitman & Ginsburg (2017) from saved training runs.

    python figures/make_figures.py --runs runs/ --out figures/out                  # draw only
    python figures/make_figures.py --runs runs/ --out figures/out --preset smoke   # CPU, minutes
    python figures/make_figures.py --runs runs/ --out figures/out --preset paper   # + GPU commands

Figures (each a PNG plus one CSV per panel holding exactly the numbers drawn):

* ``figure2.png``: cifar10-nv with BN, WN, NormProp, TReLU-WN and no normalization:
  (a) training loss and (b) test top-1 accuracy against the epoch (paper, Figure 2).
* ``figure3.png``: ResNet-50 with BN and WN: (a) train top-1, (b) test top-1,
  (c) train loss, (d) test loss against the epoch (paper, Figure 3).
* ``figure4.png``: WN ResNet-50: (a) the norm of the output of the first and the last
  conv/linear layer (smallest and largest ``layer_idx``, i.e. depth order) over training,
  log scale, and (b) the row coherence of the same layers (paper, Figure 4).

Runs are found by name, ``<runs>/<model>-<norm>-<preset>/`` (what ``analyses/train.py``
writes by default). Figures come from saved files only (history.csv, records.parquet,
divergence.json), never from training inside a plotting function.

* No ``--preset``: each figure is drawn from the ``paper`` runs if all of them exist, else
  from the ``smoke`` runs if all of those exist.
* ``--preset paper``: prints the GPU commands that produce every paper-scale run, then
  draws the figures whose paper runs exist.
* ``--preset smoke``: first trains (in this process) the smoke runs that are missing and
  resumes those that stopped early, then draws from the smoke runs.

A figure whose runs are missing is skipped with a message naming each missing run and
the exact ``analyses/train.py`` command that makes it; the exit status is then 1 (0 when
every figure was drawn, 2 for bad arguments).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stability.experiments.cli import OneLineParser
from stability.experiments.plotting import new_figure, norm_color, norm_label, save_figure
from stability.paper.train import PRESETS, preset_config, run_name, train
from stability.records.runs import CONFIG, DIVERGENCE, HISTORY, RECORDS, read_json

#: Paper-scale ResNet-50 runs: 4 GPUs x 64 images, as in the paper (footnote 4).
GPUS = 4
#: At most this many points per curve in Figure 4 (longer runs are averaged in bins).
MAX_POINTS = 2000
#: One marker per normalization in the epoch curves, so coinciding curves stay visible.
MARKERS = ("o", "s", "^", "D", "v")


# --------------------------------------------------------------------------- figure specs


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its file stem, model, the norms it compares, and its drawing function."""

    name: str
    title: str
    model: str
    norms: tuple[str, ...]
    draw: Callable[..., list[Path]]


@dataclass(frozen=True)
class RunInfo:
    """A saved run as the figures need it."""

    norm: str
    path: Path
    config: Mapping
    history: pd.DataFrame
    divergence: Mapping | None


def run_path(runs: Path, model: str, norm: str, preset: str) -> Path:
    """``<runs>/<model>-<norm>-<preset>``."""
    return runs / run_name(model, norm, preset)


def train_command(runs: Path, model: str, norm: str, preset: str) -> str:
    """The exact command that makes the run ``run_path(runs, model, norm, preset)``."""
    out = shlex.quote(str(run_path(runs, model, norm, preset)))
    args = f"analyses/train.py --model {model} --norm {norm} --preset {preset}"
    if preset == "paper" and model == "resnet50":
        return f"torchrun --standalone --nproc_per_node {GPUS} {args} --out {out}"
    if preset == "paper":
        return f"python {args} --download --out {out}"
    return f"python {args} --out {out}"


def resume_command(path: Path) -> str:
    """The command that continues the run in ``path``."""
    return f"python analyses/train.py --out {shlex.quote(str(path))} --resume"


def load_run(path: Path, norm: str) -> RunInfo | None:
    """The run in ``path`` if it has finished at least one epoch, else None."""
    history_path = path / HISTORY
    if not (path / CONFIG).is_file() or not history_path.is_file():
        return None
    history = pd.read_csv(history_path)
    if history.empty:
        return None
    divergence = read_json(path / DIVERGENCE) if (path / DIVERGENCE).is_file() else None
    return RunInfo(norm, path, read_json(path / CONFIG), history, divergence)


def _is_complete(run: RunInfo) -> bool:
    return run.divergence is not None or len(run.history) >= int(run.config.get("epochs", 0))


def find_runs(
    runs: Path, spec: FigureSpec, presets: Sequence[str]
) -> tuple[str, dict[str, RunInfo] | list[tuple[str, Path]]]:
    """The first preset in ``presets`` for which every run of ``spec`` exists.

    Returns:
        ``(preset, {norm: RunInfo})`` when one is complete; otherwise
        ``(preset, [(norm, path), ...])`` with a list of the runs missing for the preset
        that lacks the fewest (the first of ``presets`` on a tie).
    """
    closest: tuple[str, list[tuple[str, Path]]] | None = None
    for preset in presets:
        found, missing = {}, []
        for norm in spec.norms:
            path = run_path(runs, spec.model, norm, preset)
            run = load_run(path, norm)
            if run is None:
                missing.append((norm, path))
            else:
                found[norm] = run
        if not missing:
            return preset, found
        if closest is None or len(missing) < len(closest[1]):
            closest = (preset, missing)
    return closest


def missing_message(runs: Path, spec: FigureSpec, preset: str, missing) -> str:
    """Names every missing run of a figure and the command that makes it."""
    lines = [f"{spec.name}: skipped, {len(missing)} run(s) missing ({preset} preset):"]
    for norm, path in missing:
        why = "exists but has no finished epoch" if path.exists() else "not found"
        lines.append(f"  {path} ({why}); make it with:")
        lines.append(f"    {train_command(runs, spec.model, norm, preset)}")
        if path.exists() and (path / CONFIG).is_file():
            lines.append(f"    (or continue it: {resume_command(path)})")
    if preset == "paper":
        lines.append("  (or draw a CPU version: make_figures.py --preset smoke)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- drawing


def _label(run: RunInfo) -> str:
    label = norm_label(run.norm)
    if run.divergence is not None:
        label += f" (diverged, epoch {run.divergence.get('epoch')})"
    elif not _is_complete(run):
        label += f" ({len(run.history)}/{run.config.get('epochs')} epochs)"
    return label


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curves(ax, runs: Mapping[str, RunInfo], column: str, ylabel: str, log: bool):
    """Draw ``column`` against the epoch for every run; return the tidy data drawn."""
    frames = []
    for i, (norm, run) in enumerate(runs.items()):
        h = run.history
        marker = MARKERS[i % len(MARKERS)] if len(h) < 30 else None  # overlapping curves
        ax.plot(h["epoch"], h[column], marker=marker, ms=4, mfc="none", color=norm_color(norm),
                label=_label(run))  # fmt: skip
        if run.divergence is not None:
            ax.plot(h["epoch"].iloc[-1], h[column].iloc[-1], "x", color=norm_color(norm), ms=9)
        frames.append(pd.DataFrame({"norm": norm, "epoch": h["epoch"], column: h[column]}))
    positive = all((run.history[column] > 0).all() for run in runs.values())
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


def _subtitle(spec: FigureSpec, preset: str, runs: Mapping[str, RunInfo]) -> str:
    config = next(iter(runs.values())).config
    return f"{spec.title} ({config.get('dataset')}, {preset} preset)"


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


def figure4_data(run: RunInfo, max_points: int = MAX_POINTS) -> dict[str, pd.DataFrame]:
    """Output norm and coherence of the first and last recorded layers, against the epoch."""
    records = run.path / RECORDS
    order = _layer_order(records)
    ends = order.iloc[[0, -1]]
    layers = list(ends["layer"])
    filters = [("metric", "in", ["output_norm", "coherence"]), ("layer", "in", layers)]
    frame = pd.read_parquet(records, filters=filters)
    if "rank" in frame.columns:  # DDP: rank 0's records
        frame = frame[frame["rank"] == 0]
    frame = frame[frame["call_idx"] == 0]
    per_epoch = _steps_per_epoch(run)
    data = {}
    for metric in ("output_norm", "coherence"):
        sub = frame[frame["metric"] == metric][["layer", "layer_idx", "step", "value"]]
        sub = _binned(sub.sort_values(["layer_idx", "step"]), max_points)
        sub = sub.assign(epoch=sub["step"] / per_epoch)
        data[metric] = sub[["layer", "layer_idx", "step", "epoch", "value"]].reset_index(drop=True)
    return data


def draw_figure4(spec, preset, runs, out) -> list[Path]:
    """Figure 4: output norm (log) and row coherence of WN ResNet-50's first and last layers."""
    run = runs["wn"]
    data = figure4_data(run)
    fig, axes = new_figure(1, 2, width=5.4, height=3.9)
    styles = ["-", "--"]
    texts = {
        "output_norm": ("(a) norm of the layer output", r"$\|o\|_2$", True),
        "coherence": ("(b) row coherence of the layer weights", r"$\max_{i\ne j}|\cos(w_i, w_j)|$",
                      False),
    }  # fmt: skip
    for ax, (metric, frame) in zip(axes.flat, data.items(), strict=True):
        title, ylabel, log = texts[metric]
        for i, (_, sub) in enumerate(frame.groupby("layer_idx", sort=True)):
            label = f"{'first' if i == 0 else 'last'} layer ({sub['layer'].iloc[0]})"
            ax.plot(sub["epoch"], sub["value"], styles[i % 2], color=norm_color("wn"),
                    alpha=1.0 if i == 0 else 0.6, lw=1.2, label=label)  # fmt: skip
        if log and (frame["value"] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(_subtitle(spec, preset, runs))
    return save_figure(fig, out / f"{spec.name}.png", data)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("figure2", "Figure 2: cifar10-nv, BN vs WN", "cifar10_nv",
               ("bn", "wn", "np", "trelu", "none"), draw_figure2),
    FigureSpec("figure3", "Figure 3: ResNet-50, BN vs WN", "resnet50", ("bn", "wn"),
               draw_figure3),
    FigureSpec("figure4", "Figure 4: WN ResNet-50, first and last layer", "resnet50", ("wn",),
               draw_figure4),
)  # fmt: skip


def needed_runs(figures: Sequence[FigureSpec] = FIGURES) -> list[tuple[str, str]]:
    """Every ``(model, norm)`` the figures need, once each, in figure order."""
    seen: dict[tuple[str, str], None] = {}
    for spec in figures:
        for norm in spec.norms:
            seen.setdefault((spec.model, norm), None)
    return list(seen)


# --------------------------------------------------------------------------- presets


def print_paper_commands(runs: Path) -> None:
    """The GPU commands for every paper-scale run (existing ones marked)."""
    print("Paper-scale runs (GPU). cifar10-nv downloads CIFAR-10 if it is not found;")
    print("ResNet-50 needs ImageNet (train/ and val/ folders) under $NORMSTAB_DATA/imagenet")
    print(f"or --data-dir DIR, and runs on {GPUS} GPUs (batch 256 = {GPUS} x 64). Add")
    print("--amp bf16 to train in bfloat16 (the paper trained in float32).")
    for model, norm in needed_runs():
        path = run_path(runs, model, norm, "paper")
        done = load_run(path, norm)
        mark = "" if done is None else f"   # exists ({len(done.history)} epochs)"
        print(f"  {train_command(runs, model, norm, 'paper')}{mark}")


def train_smoke_runs(runs: Path, progress: bool = True) -> dict[str, float]:
    """Train the missing smoke runs (resume stopped ones); returns seconds per run made."""
    timings = {}
    for model, norm in needed_runs():
        path = run_path(runs, model, norm, "smoke")
        run = load_run(path, norm)
        if run is not None and _is_complete(run):
            continue
        resume = (path / CONFIG).is_file() and not (path / DIVERGENCE).is_file()
        config = preset_config(model, norm, "smoke", out=str(path))
        print(f"training {path.name} ({'resuming' if resume else 'new'}) ...", flush=True)
        started = time.perf_counter()
        result = train(config, resume=resume, force=not resume, progress=progress)
        timings[path.name] = time.perf_counter() - started
        print(f"  {result.status} after {result.epoch} epochs in {timings[path.name]:.0f} s")
    return timings


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = OneLineParser(description="Regenerate Figures 2-4 of Gitman & Ginsburg (2017).")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="folder of run directories")
    p.add_argument("--out", type=Path, default=Path("figures/out"), help="output folder")
    p.add_argument(
        "--preset", choices=PRESETS, default=None,
        help="smoke: train missing CPU smoke runs first; paper: print the GPU commands",
    )  # fmt: skip
    p.add_argument(
        "--only", choices=[f.name for f in FIGURES], action="append",
        help="draw only this figure (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars while training")
    return p


def draw_figures(
    runs: Path, out: Path, presets: Sequence[str], only: Sequence[str] | None = None
) -> tuple[list[Path], list[str]]:
    """Draw every figure whose runs exist: ``(files written, messages for skipped ones)``."""
    written, skipped = [], []
    for spec in FIGURES:
        if only and spec.name not in only:
            continue
        preset, found = find_runs(runs, spec, presets)
        if isinstance(found, list):
            skipped.append(missing_message(runs, spec, preset, found))
            continue
        for run in found.values():
            if not _is_complete(run):
                print(
                    f"note: {run.path} is incomplete; continue it with: {resume_command(run.path)}"
                )
        written += spec.draw(spec, preset, found, out)
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    if args.preset == "paper":
        print_paper_commands(args.runs)
    if args.preset == "smoke":
        try:
            train_smoke_runs(args.runs, progress=not args.no_progress)
        except (FileNotFoundError, ValueError) as error:  # e.g. Fashion-MNIST not found
            print(f"make_figures.py: error: {error}", file=sys.stderr)
            return 2
    presets = [args.preset] if args.preset else ["paper", "smoke"]
    written, skipped = draw_figures(args.runs, args.out, presets, args.only)
    for path in written:
        print(f"wrote {path}")
    for message in skipped:
        print(message, file=sys.stderr)
    print(f"{len(written)} files in {time.perf_counter() - started:.0f} s")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
