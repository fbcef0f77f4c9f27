"""Finding the saved runs the paper's figures need, and the commands that make missing ones.

Runs are found by name, ``<runs>/<model>-<norm>-<preset>[-seed<N>]/`` (what
``analyses/train.py`` writes by default); a run counts once it has finished at least one
epoch or diverged. The ``mini`` preset has one run per seed of
:data:`~stability.paper.train.MINI_SEEDS` (the figures draw every seed, the summary reports
their spread); the other presets, seed 0.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from stability.paper.train import MINI_SEEDS, run_name
from stability.records.runs import CONFIG, DIVERGENCE, HISTORY, HISTORY_COLUMNS, read_json

#: Paper-scale ResNet-50 runs: 4 GPUs x 64 images, as in the paper (footnote 4).
GPUS = 4


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
    """A saved run as the figures need it; ``seeds`` holds the runs of the preset's other
    seeds (same model, norm and preset), in seed order."""

    norm: str
    path: Path
    config: Mapping
    history: pd.DataFrame
    divergence: Mapping | None
    seeds: tuple[RunInfo, ...] = ()

    @property
    def all_seeds(self) -> tuple[RunInfo, ...]:
        """This run and its other seeds."""
        return (self, *self.seeds)


def preset_seeds(preset: str) -> tuple[int, ...]:
    """The seeds a preset's figures need: :data:`MINI_SEEDS` for ``mini``, else ``(0,)``."""
    return MINI_SEEDS if preset == "mini" else (0,)


def run_path(runs: Path, model: str, norm: str, preset: str, seed: int = 0) -> Path:
    """``<runs>/<model>-<norm>-<preset>`` (``-seed<N>`` appended for a seed other than 0)."""
    return runs / run_name(model, norm, preset, seed)


def train_command(runs: Path, model: str, norm: str, preset: str, seed: int = 0) -> str:
    """The exact command that makes the run ``run_path(runs, model, norm, preset, seed)``."""
    out = shlex.quote(str(run_path(runs, model, norm, preset, seed)))
    args = f"analyses/train.py --model {model} --norm {norm} --preset {preset}"
    if seed:
        args += f" --seed {seed}"
    if preset == "paper" and model == "resnet50":
        return f"torchrun --standalone --nproc_per_node {GPUS} {args} --out {out}"
    if preset == "paper":
        return f"python {args} --download --out {out}"
    return f"python {args} --out {out}"


def resume_command(path: Path) -> str:
    """The command that continues the run in ``path``."""
    return f"python analyses/train.py --out {shlex.quote(str(path))} --resume"


def load_run(path: Path, norm: str) -> RunInfo | None:
    """The run in ``path`` if it has finished at least one epoch or diverged (a run that
    diverged in its first epoch has an empty history), else None."""
    history_path = path / HISTORY
    if not (path / CONFIG).is_file():
        return None
    divergence = read_json(path / DIVERGENCE) if (path / DIVERGENCE).is_file() else None
    history = pd.read_csv(history_path) if history_path.is_file() else pd.DataFrame()
    if history.empty and divergence is None:
        return None
    if history.empty:  # diverged within its first epoch: a result, with no curve to draw
        history = pd.DataFrame(columns=HISTORY_COLUMNS)
    return RunInfo(norm, path, read_json(path / CONFIG), history, divergence)


def is_complete(run: RunInfo) -> bool:
    """True once the run diverged or finished every epoch its config asks for."""
    return run.divergence is not None or len(run.history) >= int(run.config.get("epochs", 0))


def steps_per_epoch(run: RunInfo) -> float:
    """Optimizer steps per epoch of a run (its config's meta, else its history)."""
    meta = run.config.get("meta", {})
    if meta.get("steps_per_epoch"):
        return float(meta["steps_per_epoch"])
    h = run.history
    return float(h["step"].iloc[0] / h["epoch"].iloc[0])


def subtitle(
    spec: FigureSpec, preset: str, runs: Mapping[str, RunInfo], every_seed: bool = True
) -> str:
    """The figure's title line: its title, data set, preset and seeds drawn."""
    first = next(iter(runs.values()))
    seeds = ""
    if first.seeds:
        seeds = f", {len(first.all_seeds)} seeds" if every_seed else ", seed 0"
    return f"{spec.title} ({first.config.get('dataset')}, {preset} preset{seeds})"


def find_runs(
    runs: Path, spec: FigureSpec, presets: Sequence[str]
) -> tuple[str, dict[str, RunInfo] | list[tuple[str, int, Path]]]:
    """The first preset in ``presets`` for which every run of ``spec`` (every seed of
    :func:`preset_seeds`) exists.

    Returns:
        ``(preset, {norm: RunInfo})`` (seed 0's run, the others in its ``seeds``) when one
        is complete; otherwise ``(preset, [(norm, seed, path), ...])`` with the runs
        missing for the preset closest to complete (the most runs found, then the fewest
        missing, then the first of ``presets``).
    """
    closest: tuple[tuple[int, int], str, list[tuple[str, int, Path]]] | None = None
    for preset in presets:
        found, missing, present = {}, [], 0
        for norm in spec.norms:
            seeds = []
            for seed in preset_seeds(preset):
                path = run_path(runs, spec.model, norm, preset, seed)
                run = load_run(path, norm)
                if run is None:
                    missing.append((norm, seed, path))
                else:
                    seeds.append(run)
                    present += 1
            if len(seeds) == len(preset_seeds(preset)):
                found[norm] = replace(seeds[0], seeds=tuple(seeds[1:]))
        if not missing:
            return preset, found
        rank = (-present, len(missing))
        if closest is None or rank < closest[0]:
            closest = (rank, preset, missing)
    return closest[1:]


def missing_message(runs: Path, spec: FigureSpec, preset: str, missing) -> str:
    """Names every missing run of a figure and the command that makes it."""
    lines = [f"{spec.name}: skipped, {len(missing)} run(s) missing ({preset} preset):"]
    for norm, seed, path in missing:
        why = "exists but has no finished epoch" if path.exists() else "not found"
        lines.append(f"  {path} ({why}); make it with:")
        lines.append(f"    {train_command(runs, spec.model, norm, preset, seed)}")
        if path.exists() and (path / CONFIG).is_file():
            lines.append(f"    (or continue it: {resume_command(path)})")
    if preset == "paper":
        lines.append("  (or draw a CPU version: make_figures.py --preset mini, or smoke)")
    return "\n".join(lines)


def needed_runs(figures: Sequence[FigureSpec]) -> list[tuple[str, str]]:
    """Every ``(model, norm)`` the figures need, once each, in figure order."""
    seen: dict[tuple[str, str], None] = {}
    for spec in figures:
        for norm in spec.norms:
            seen.setdefault((spec.model, norm), None)
    return list(seen)


def paper_commands(runs: Path, figures: Sequence[FigureSpec]) -> list[str]:
    """The GPU commands for every paper-scale run (existing ones marked), with a preamble."""
    lines = [
        "Paper-scale runs (GPU). cifar10-nv downloads CIFAR-10 if it is not found;",
        "ResNet-50 needs ImageNet (train/ and val/ folders) under $NORMSTAB_DATA/imagenet",
        f"or --data-dir DIR, and runs on {GPUS} GPUs (batch 256 = {GPUS} x 64). Add",
        "--amp bf16 to train in bfloat16 (the paper trained in float32).",
    ]
    for model, norm in needed_runs(figures):
        path = run_path(runs, model, norm, "paper")
        done = load_run(path, norm)
        mark = "" if done is None else f"   # exists ({len(done.history)} epochs)"
        lines.append(f"  {train_command(runs, model, norm, 'paper')}{mark}")
    return lines


class NoRunsError(FileNotFoundError):
    """``--runs`` is missing or holds none of the runs the figures need.

    ``str(error)`` is the one-line message; ``hints`` are the lines that say how to make
    the runs.
    """

    def __init__(self, message: str, hints: Sequence[str]) -> None:
        super().__init__(message)
        self.hints = list(hints)


def check_runs_folder(
    runs: Path, figures: Sequence[FigureSpec], presets: Sequence[str], out: Path
) -> None:
    """Raise :class:`NoRunsError` when ``runs`` holds no run directory any figure needs.

    A figure with some runs missing is not an error here (it is skipped with a message);
    a folder with none of them means nothing can be drawn at all.
    """
    wanted = [
        run_path(runs, m, n, p, seed)
        for m, n in needed_runs(figures)
        for p in presets
        for seed in preset_seeds(p)
    ]
    if any(path.is_dir() for path in wanted):
        return
    why = "does not exist" if not runs.exists() else (
        "is not a folder" if not runs.is_dir() else "holds none of the runs the figures need"
    )  # fmt: skip
    message = f"--runs {runs} {why} ({' or '.join(presets)} preset); nothing to draw"
    script = f"python figures/make_figures.py --runs {shlex.quote(str(runs))} " \
             f"--out {shlex.quote(str(out))}"  # fmt: skip
    hints = [
        "make the runs with:",
        f"  {script} --preset smoke   # trains the CPU smoke runs (minutes), then draws",
        f"  {script} --preset mini    # the paper's claims at CPU scale (about an hour)",
        f"  {script} --preset paper   # prints the GPU commands of the paper-scale runs",
    ]
    if presets == ["paper"]:
        hints = paper_commands(runs, figures)
    raise NoRunsError(message, hints)
