"""``--preset smoke``: train (in this process) the smoke runs the figures lack.

Runs that stopped early are resumed, missing ones are made from the preset's config
(:func:`stability.paper.train.preset_config`); finished or diverged runs are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from stability.experiments.paper_figures.runs import (
    FigureSpec,
    is_complete,
    load_run,
    needed_runs,
    run_path,
)
from stability.paper.train import preset_config, train
from stability.records.runs import CONFIG, DIVERGENCE


def train_smoke_runs(
    runs: Path, figures: Sequence[FigureSpec], progress: bool = True
) -> dict[str, float]:
    """Train the missing smoke runs (resume stopped ones); returns seconds per run made."""
    timings = {}
    for model, norm in needed_runs(figures):
        path = run_path(runs, model, norm, "smoke")
        run = load_run(path, norm)
        if run is not None and is_complete(run):
            continue
        resume = (path / CONFIG).is_file() and not (path / DIVERGENCE).is_file()
        config = preset_config(model, norm, "smoke", out=str(path))
        print(f"training {path.name} ({'resuming' if resume else 'new'}) ...", flush=True)
        started = time.perf_counter()
        result = train(config, resume=resume, force=not resume, progress=progress)
        timings[path.name] = time.perf_counter() - started
        print(f"  {result.status} after {result.epoch} epochs in {timings[path.name]:.0f} s")
    return timings
