"""``--preset smoke`` / ``--preset mini``: train the runs the figures lack.

Runs that stopped early are resumed, missing ones are made from the preset's config
(:func:`stability.paper.train.preset_config`, one per seed of
:func:`~stability.experiments.paper_figures.runs.preset_seeds`); finished or diverged runs
are left alone. ``jobs > 1`` trains that many runs at once, each in its own process with
one intra-op thread (on a 2-core machine two 1-thread runs finish sooner than one
2-thread run after another: these networks are too small to keep two threads busy).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from stability.experiments.paper_figures.runs import (
    FigureSpec,
    is_complete,
    load_run,
    needed_runs,
    preset_seeds,
    run_path,
)
from stability.paper.train import TrainConfig, preset_config, train
from stability.records.runs import CONFIG, DIVERGENCE


def runs_to_train(
    runs: Path, figures: Sequence[FigureSpec], preset: str
) -> list[tuple[TrainConfig, bool]]:
    """``(config, resume)`` of every run of ``preset`` the figures need that is not done."""
    todo = []
    for model, norm in needed_runs(figures):
        for seed in preset_seeds(preset):
            path = run_path(runs, model, norm, preset, seed)
            run = load_run(path, norm)
            if run is not None and is_complete(run):
                continue
            resume = (path / CONFIG).is_file() and not (path / DIVERGENCE).is_file()
            todo.append((preset_config(model, norm, preset, seed=seed, out=str(path)), resume))
    return todo


def _train_one(config: TrainConfig, resume: bool, progress: bool) -> tuple[str, float, int]:
    """Train one run; ``(status, seconds, epochs done)``."""
    started = time.perf_counter()
    result = train(config, resume=resume, force=not resume, progress=progress)
    return result.status, time.perf_counter() - started, result.epoch


def train_preset_runs(
    runs: Path,
    figures: Sequence[FigureSpec],
    preset: str,
    progress: bool = True,
    jobs: int = 1,
) -> dict[str, float]:
    """Train the missing runs of ``preset`` (resume stopped ones), ``jobs`` at a time.

    Returns:
        Seconds per run trained, by run directory name.

    Raises:
        ValueError: ``jobs`` below 1.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs!r}")
    todo = runs_to_train(runs, figures, preset)
    timings: dict[str, float] = {}

    def report(config: TrainConfig, outcome: tuple[str, float, int]) -> None:
        status, seconds, epochs = outcome
        name = Path(config.out).name
        timings[name] = seconds
        print(f"  {name}: {status} after {epochs} epochs in {seconds:.0f} s", flush=True)

    for config, resume in todo:
        what = "resuming" if resume else "new"
        print(f"training {Path(config.out).name} ({what}) ...", flush=True)
    if jobs == 1:
        for config, resume in todo:
            report(config, _train_one(config, resume, progress))
        return timings
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [
            (config, pool.submit(_train_one, replace(config, threads=1), resume, False))
            for config, resume in todo
        ]
        for config, future in futures:
            report(config, future.result())
    return timings
