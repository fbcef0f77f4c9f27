"""How early and how reliably does the divergence early warning fire? (the warning issue)

``run(BenchmarkConfig(...))`` trains every run of :mod:`.workloads` (learning rates dense
around each divergence edge; tuning seeds and held-out reporting seeds), scans each run
once with the detector (:mod:`.scoring`), chooses the one ``(jump, loss_ratio, warmup)``
triple for every workload on the tuning seeds, and reports the held-out seeds at that
triple, with the ceiling (the best median lead any triple reaches at <= 2% false alarms on
the held-out runs, per workload and regime).

Writes into ``config.out`` (new or empty; default ``runs/warning_benchmark/<timestamp>``):
``config.json``, ``runs.csv`` (every run at the chosen triple), ``grid_tuning.csv`` and
``grid_reporting.csv`` (every triple scored), ``summary.csv``, ``report.md`` (the Markdown
table, the chosen pair and the goals) and ``warning_benchmark.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from stability.experiments.warning_benchmark.config import (
    DEFAULT_PARENT,
    DEFAULT_WORKLOADS,
    EXPERIMENT,
    PRESETS,
    WORKLOADS,
    BenchmarkConfig,
)

__all__ = [
    "DEFAULT_WORKLOADS",
    "PRESETS",
    "WORKLOADS",
    "BenchmarkConfig",
    "BenchmarkResult",
    "run",
]


@dataclass(frozen=True)
class BenchmarkResult:
    """What :func:`run` wrote and found."""

    out: Path
    jump: float
    loss_ratio: float
    warmup: int
    summary: object  # pandas.DataFrame: the held-out table
    table: str  # the Markdown table
    seconds: float


def run(config: BenchmarkConfig, progress=None) -> BenchmarkResult:
    """The whole benchmark (see the package docstring); ``progress(workload)`` if given."""
    import pandas as pd
    import torch

    from stability.experiments.warning_benchmark import report, scoring, workloads
    from stability.paper.data import flat_training_set
    from stability.records.runs import new_output_dir, write_json_atomic

    if config.data_dir is not None and not Path(config.data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {config.data_dir} does not exist (or is not a folder)")
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)
    x, y = flat_training_set("fashion-mnist", config.data_dir, False, config.subset, None)
    out = new_output_dir(config.out, DEFAULT_PARENT)
    write_json_atomic(out / "config.json", {"experiment": EXPERIMENT, **config.to_dict()})
    runs = workloads.all_runs(x, y, config, progress)
    signals = [scoring.run_signals(r, config.threshold) for r in runs]
    tuning = [s for s in signals if s["split"] == "tuning"]
    held_out = [s for s in signals if s["split"] == "reporting"]
    grid_tuning = scoring.grid_scores(tuning)
    grid_reporting = scoring.grid_scores(held_out)
    jump, loss_ratio, warmup = scoring.tune(grid_tuning)
    chosen = scoring.outcomes(signals, jump, loss_ratio, warmup)
    summary = scoring.score(chosen[chosen["split"] == "reporting"])
    summary = summary.merge(scoring.ceiling(grid_reporting), on=["workload", "regime"], how="left")
    table = report.markdown_table(summary)
    goals = report.goals(summary)
    grid_tuning.to_csv(out / "grid_tuning.csv", index=False)
    grid_reporting.to_csv(out / "grid_reporting.csv", index=False)
    chosen.to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    report.draw(summary, out / "warning_benchmark.png")
    seconds = time.perf_counter() - started
    text = (
        f"# Early-warning benchmark ({config.preset})\n\n"
        f"Chosen on the tuning seeds {list(config.tuning_seeds)}: jump = {jump:g}, "
        f"loss_ratio = {loss_ratio:g} (0: no loss condition), warmup = {warmup}. Held-out seeds "
        f"{list(config.reporting_seeds)}:\n\n{table}\n\nGoals (recall >= 95%, false alarms "
        f"<= 2%, median lead >= ceiling - 1):\n\n{goals.to_string(index=False)}\n\n"
        f"Wall time {seconds:.0f} s.\n"
    )
    (out / "report.md").write_text(text)
    pd.DataFrame(goals).to_csv(out / "goals.csv", index=False)
    return BenchmarkResult(out, jump, loss_ratio, warmup, summary, table, seconds)
