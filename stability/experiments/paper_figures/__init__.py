"""Regenerate Figures 2, 3 and 4 of Gitman & Ginsburg (2017) from saved training runs.

The library half of ``figures/make_figures.py``: :func:`run` takes a :class:`FiguresConfig`.

* ``preset=None``: each figure is drawn from the ``paper`` runs if all of them exist, else
  from the ``mini`` runs, else from the ``smoke`` runs.
* ``preset="paper"``: the result carries the GPU commands that produce every paper-scale
  run; the figures whose paper runs exist are drawn.
* ``preset="smoke"`` / ``"mini"``: first trains the runs of that preset that are missing
  (``jobs`` at a time) and resumes those that stopped early, then draws from them. ``mini``
  also writes ``summary.csv`` / ``summary.md``, the measured numbers next to the paper's
  (:mod:`.summary`).

A figure whose runs are missing is skipped with a message naming each missing run and the
exact ``analyses/train.py`` command that makes it. A ``runs`` folder that is missing or
holds none of the runs raises :class:`NoRunsError` before anything is written.

Modules: :mod:`.runs` (finding runs, the commands for missing ones), :mod:`.figures`
(Figures 2, 3 and the registry of all three), :mod:`.figure4`, :mod:`.train_missing`
(``--preset smoke`` / ``mini``), :mod:`.summary` (the table of final numbers, every seed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stability.experiments.paper_figures.figure4 import MAX_POINTS, figure4_data
from stability.experiments.paper_figures.figures import FIGURES
from stability.experiments.paper_figures.runs import (
    GPUS,
    FigureSpec,
    NoRunsError,
    RunInfo,
    check_runs_folder,
    find_runs,
    is_complete,
    load_run,
    missing_message,
    paper_commands,
    resume_command,
    run_path,
    train_command,
)
from stability.experiments.paper_figures.runs import needed_runs as _needed_runs
from stability.experiments.paper_figures.summary import write_summary
from stability.paper.train import PRESETS

#: Presets whose missing runs :func:`run` trains itself (CPU scale).
TRAINED_HERE = ("smoke", "mini")

__all__ = [
    "FIGURES",
    "GPUS",
    "MAX_POINTS",
    "FigureSpec",
    "FiguresConfig",
    "FiguresResult",
    "NoRunsError",
    "RunInfo",
    "draw_figures",
    "figure4_data",
    "find_runs",
    "is_complete",
    "load_run",
    "missing_message",
    "needed_runs",
    "paper_commands",
    "resume_command",
    "run",
    "run_path",
    "train_command",
]


def needed_runs(figures: Sequence[FigureSpec] = FIGURES) -> list[tuple[str, str]]:
    """Every ``(model, norm)`` the figures (default: all three) need, in figure order."""
    return _needed_runs(figures)


@dataclass(frozen=True)
class FiguresConfig:
    """What to draw, from where.

    Attributes:
        runs: Folder of run directories ``<model>-<norm>-<preset>``.
        out: Output folder of the PNGs and CSVs.
        preset: None (paper runs, else mini, else smoke runs), ``"paper"``, ``"mini"`` or
            ``"smoke"``.
        only: Names of the figures to draw (None: all).
        progress: Progress bars while training (one run at a time only).
        jobs: Runs trained at once by ``smoke`` / ``mini`` (each with one thread when > 1).
    """

    runs: Path = Path("runs")
    out: Path = Path("figures/out")
    preset: str | None = None
    only: tuple[str, ...] | None = None
    progress: bool = True
    jobs: int = 1

    def __post_init__(self) -> None:
        known = [spec.name for spec in FIGURES]
        unknown = sorted(set(self.only or ()) - set(known))
        if unknown:
            raise ValueError(f"unknown figure(s) {unknown}; choose from {known}")
        if self.preset not in (None, *PRESETS):
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be a positive integer, got {self.jobs!r}")

    def figures(self) -> list[FigureSpec]:
        """The figures to draw, in order."""
        return [spec for spec in FIGURES if not self.only or spec.name in self.only]

    def presets(self) -> list[str]:
        """The presets whose runs are drawn, in order of preference."""
        return [self.preset] if self.preset else ["paper", "mini", "smoke"]


@dataclass(frozen=True)
class FiguresResult:
    """What :func:`run` did.

    Attributes:
        written: Files written (each figure's PNG, then its CSVs).
        skipped: One message per figure skipped for missing runs (names each run and the
            command that makes it).
        notes: Runs drawn although incomplete, with the command that continues each.
        commands: The paper-scale GPU commands (``preset="paper"`` only).
        trained: Seconds per run trained (``preset="smoke"`` / ``"mini"`` only).
        seconds: Wall time of the whole call.
    """

    written: list[Path]
    skipped: list[str]
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    trained: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def draw_figures(
    runs: Path, out: Path, presets: Sequence[str], figures: Sequence[FigureSpec] = FIGURES
) -> tuple[list[Path], list[str], list[str]]:
    """Draw every figure whose runs exist: ``(files written, skip messages, notes)``."""
    written, skipped, notes = [], [], []
    for spec in figures:
        preset, found = find_runs(runs, spec, presets)
        if isinstance(found, list):
            skipped.append(missing_message(runs, spec, preset, found))
            continue
        for info in found.values():
            if not is_complete(info):
                notes.append(
                    f"note: {info.path} is incomplete; continue it with: "
                    f"{resume_command(info.path)}"
                )
        written += spec.draw(spec, preset, found, out)
    return written, skipped, notes


def run(config: FiguresConfig) -> FiguresResult:
    """Train what ``config.preset`` (``smoke`` / ``mini``) asks for, then draw every figure
    possible, and for ``mini`` the summary table.

    Raises:
        NoRunsError: ``config.runs`` is missing or holds none of the runs (not with
            ``smoke`` / ``mini``, which make them); nothing is written then.
        FileNotFoundError, ValueError: While training (e.g. data not found).
    """
    started = time.perf_counter()
    figures, presets = config.figures(), config.presets()
    commands = paper_commands(config.runs, figures) if config.preset == "paper" else []
    trained = {}
    if config.preset in TRAINED_HERE:
        from stability.experiments.paper_figures import train_missing  # torch: only here

        trained = train_missing.train_preset_runs(
            config.runs, figures, config.preset, config.progress, config.jobs
        )
    else:
        check_runs_folder(config.runs, figures, presets, config.out)
    written, skipped, notes = draw_figures(config.runs, config.out, presets, figures)
    if config.preset == "mini" and not skipped:
        written += write_summary(config.runs, config.out, figures, "mini")
    return FiguresResult(written, skipped, notes, commands, trained, time.perf_counter() - started)
