r"""The paper's section-5 experiment: a deep linear network trained over a learning-rate sweep.

"We trained a simple *linear* (with no bias) 50-layer fully-connected network ... Each
layer except for the first and last was 64 neurons. With a wide range of learning rates
the network completely diverged in less than a hundred iterations due to the broken
orthogonality assumptions." (Gitman & Ginsburg 2017, section 5.)

For each normalization kind, every (learning rate, seed) pair is one independent run; the
runs of one kind are trained together as a :class:`stability.paper.stacked.StackedDeepLinear`
(SGD with momentum 0.9, one learning rate per run) and recorded by one
:class:`stability.Recorder` (``run_dim=0``), every layer every step, weights included.
A run's initial weights and its mini-batch order depend on its seed only, so every
learning rate starts from the same network.

Divergence of a run at step ``t`` (0-based; ``t`` updates had been applied): the first step
where some recorded value is non-finite or some layer's ``output_rms`` exceeds ``threshold``
(:func:`stability.fitting.divergence_onset`, the rule every entry point uses), or its loss
is non-finite. A run that never diverges is censored at the iteration limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from stability import fitting
from stability.paper.models import deep_linear
from stability.paper.stacked import StackedDeepLinear, StackedSGD, keep_runs
from stability.records.recorder import Recorder
from stability.records.schema import COLUMNS

RUN_KEYS = ("norm", "lr", "seed")


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep (written next to every result as ``config.json``)."""

    norms: tuple[str, ...] = ("none", "wn", "bn")
    lrs: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4, 0, 9))
    seeds: tuple[int, ...] = (0, 1, 2)
    iters: int = 100
    depth: int = 50
    width: int = 64
    batch_size: int = 256
    momentum: float = 0.9
    threshold: float = 1e6
    warning_factor: float = 1.05
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    subset: int | None = None
    image_size: int | None = None
    device: str = "cpu"
    threads: int | None = 1  # see run(): one thread is the robust choice on a shared CPU
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def batch_indices(n_samples: int, batch_size: int, seed: int, iters: int) -> torch.Tensor:
    """Mini-batch indices ``(iters, batch_size)``: successive random permutations of the data.

    Depends only on ``seed`` (a private generator), so every learning rate of one seed sees
    the same batches.
    """
    if batch_size > n_samples:
        raise ValueError(f"batch size {batch_size} exceeds the {n_samples} training samples")
    generator = torch.Generator().manual_seed(seed)
    per_epoch = n_samples // batch_size
    epochs = math.ceil(iters / per_epoch)
    order = [torch.randperm(n_samples, generator=generator) for _ in range(epochs)]
    batches = [p[: per_epoch * batch_size].view(per_epoch, batch_size) for p in order]
    return torch.cat(batches)[:iters]


def initial_models(norm: str, seeds: Sequence[int], config: SweepConfig, shape: tuple[int, int]):
    """One unbatched :func:`deep_linear` per seed (seeded init), for stacking or as twins."""
    in_features, num_classes = shape
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(
            deep_linear(config.depth, config.width, in_features, num_classes, norm=norm, bias=False)
        )
    return models


@dataclass
class NormSweep:
    """The raw result of one normalization kind: per-run records and losses."""

    norm: str
    runs: list[tuple[float, int]]
    records: pd.DataFrame  # Recorder table with a ``run`` column
    losses: np.ndarray  # (runs, steps trained)


def train_norm(
    norm: str,
    x: torch.Tensor,
    y: torch.Tensor,
    config: SweepConfig,
    progress: Callable[[int], None] | None = None,
) -> NormSweep:
    """Train every (lr, seed) run of one normalization kind together; record everything.

    After each step the runs that diverged (non-finite loss, or last-layer output rms
    beyond the threshold: both divergences by definition) are removed from the stacked
    model, so the remaining runs train at the cost of the survivors only. Each stretch of
    steps between removals has its own Recorder; the tables are joined with global run
    indices and steps. Reading the loss on the host every step is a synchronisation that
    this experiment accepts (it needs the loss on the host to decide which runs to keep).
    """
    runs = [(lr, seed) for lr in config.lrs for seed in config.seeds]
    num_classes = int(y.max()) + 1
    models = initial_models(norm, [seed for _, seed in runs], config, (x.shape[1], num_classes))
    device = torch.device(config.device)
    model = StackedDeepLinear.from_models(models).to(device)
    optimizer = StackedSGD(
        model.parameters(), torch.tensor([lr for lr, _ in runs]), config.momentum
    )
    indices = torch.stack(
        [batch_indices(len(x), config.batch_size, seed, config.iters) for _, seed in runs], dim=1
    ).to(device)
    x, y = x.to(device), y.to(device)
    losses = np.full((len(runs), config.iters), np.nan)
    active = np.arange(len(runs))
    frames, step = [], 0
    while step < config.iters and len(active):
        start = step
        with Recorder(model, run_dim=0, weight_every=1, flush_every=config.iters) as recorder:
            while step < config.iters:
                batch = indices[step, torch.as_tensor(active, device=device)]
                logits = model(x[batch])
                per_sample = F.cross_entropy(
                    logits.flatten(0, 1), y[batch].flatten(), reduction="none"
                )
                loss = per_sample.view(len(active), -1).mean(dim=1)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
                recorder.step()
                losses[active, step] = loss.detach().cpu().numpy()
                converging = _still_converging(loss.detach(), logits.detach(), config.threshold)
                step += 1
                if progress is not None:
                    progress(1)
                if not converging.all():
                    break
        frame = recorder.to_frame()
        frame["step"] += start
        frame["run"] = active[frame["run"].to_numpy()]
        frames.append(frame)
        keep = np.flatnonzero(converging)
        active = active[keep]
        optimizer = keep_runs(model, optimizer, torch.as_tensor(keep, device=device))
    if progress is not None:
        progress(config.iters - step)
    return NormSweep(norm, runs, pd.concat(frames, ignore_index=True), losses)


def _still_converging(loss: torch.Tensor, logits: torch.Tensor, threshold: float) -> np.ndarray:
    """Runs whose loss is finite and whose last layer's output rms is within ``threshold``.

    Either failure is a divergence by definition (the last layer's ``output_rms`` is one of
    the recorded values), so a run flagged here has already reached its onset.
    """
    rms = logits.float().square().mean(dim=(1, 2)).sqrt()
    return (torch.isfinite(loss) & torch.isfinite(rms) & (rms <= threshold)).cpu().numpy()


def run_onset(records: pd.DataFrame, losses: np.ndarray, threshold: float) -> int | None:
    """Divergence step of one run: the project's one rule
    (:func:`stability.fitting.divergence_onset` over every recorded metric), or the first
    non-finite loss if that comes earlier; None if neither happens.

    A non-finite loss implies non-finite logits, which the rule sees in the last layer's
    ``output_rms`` at the same step; the loss check only guards tables recorded without it.
    """
    found = fitting.divergence_onset(records, threshold) if len(records) else None
    bad_loss = np.flatnonzero(~np.isfinite(losses))
    candidates = [found.step if found else None, bad_loss[0] if len(bad_loss) else None]
    steps = [int(step) for step in candidates if step is not None]
    return min(steps) if steps else None


def _layer_stat(frame: pd.DataFrame, metric: str, step: int, how: str) -> float:
    """``how`` (max / mean) over layers of ``metric`` at ``step``; NaN if not recorded."""
    values = frame.loc[(frame["metric"] == metric) & (frame["step"] == step), "value"]
    return float(getattr(values, how)()) if len(values) else math.nan


def summarize_run(
    records: pd.DataFrame, losses: np.ndarray, config: SweepConfig
) -> tuple[dict, pd.DataFrame]:
    """One run's summary row and its records truncated after the onset.

    ``before`` is the last step before the onset (the last step for a censored run); the
    onset step itself is kept in the records, since it shows what diverged.
    """
    onset = run_onset(records, losses, config.threshold)
    before = max((onset - 1) if onset is not None else int(records["step"].max()), 0)
    records = records[records["step"] <= (onset if onset is not None else before)]
    growth = fitting.depth_growth(records, "output_rms").set_index("step")["factor"]
    warning = fitting.depth_factor_crossing(
        records, config.warning_factor, threshold=config.threshold
    )
    row = {
        "diverged": onset is not None,
        "iteration": onset if onset is not None else config.iters,
        "final_loss": float(losses[before]),
        "growth_factor_start": float(growth.get(0, math.nan)),
        "growth_factor_before": float(growth.get(before, math.nan)),
        "growth_factor_max_before": float(growth.loc[:before].max()),
        "coherence_max_start": _layer_stat(records, "coherence", 0, "max"),
        "coherence_mean_start": _layer_stat(records, "coherence_mean", 0, "mean"),
        "coherence_max_before": _layer_stat(records, "coherence", before, "max"),
        "coherence_mean_before": _layer_stat(records, "coherence_mean", before, "mean"),
        "warning_step": warning.warn_step if warning else None,
        "warning_lead": warning.lead if warning and onset is not None else None,
    }
    return row, records


def summarize(sweep: NormSweep, config: SweepConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run summary rows and the tidy records truncated at each run's onset.

    Returns:
        ``(summary, records)``: ``summary`` has one row per run (``norm, lr, seed`` then
        the columns of :func:`summarize_run`); ``records`` has ``norm, lr, seed`` instead of
        ``run`` and keeps, for a diverged run, the steps up to and including the onset.
    """
    rows, kept = [], []
    for run, frame in sweep.records.groupby("run", sort=True):
        lr, seed = sweep.runs[run]
        keys = {"norm": sweep.norm, "lr": lr, "seed": seed}
        row, records = summarize_run(frame.drop(columns="run"), sweep.losses[run], config)
        rows.append(keys | row)
        kept.append(records.assign(**keys))
    records = pd.concat(kept, ignore_index=True)
    return pd.DataFrame(rows), records[list(RUN_KEYS) + list(COLUMNS)]


def loss_table(sweep: NormSweep) -> pd.DataFrame:
    """Training loss per (norm, lr, seed, step)."""
    runs, steps = sweep.losses.shape
    return pd.DataFrame(
        {
            "norm": sweep.norm,
            "lr": np.repeat([lr for lr, _ in sweep.runs], steps),
            "seed": np.repeat([seed for _, seed in sweep.runs], steps),
            "step": np.tile(np.arange(steps), runs),
            "loss": sweep.losses.reshape(-1),
        }
    )


def verdict(summary: pd.DataFrame, iters: int) -> str:
    """One line on the paper's claim: at how many learning rates each norm diverged.

    A learning rate counts as diverged when the median over seeds of iterations-to-
    divergence is below the iteration limit (i.e. most seeds diverged).
    """
    parts = []
    for norm, frame in summary.groupby("norm", sort=False):
        per_lr = frame.groupby("lr")["diverged"].mean()
        parts.append(
            f"{norm.upper() if norm != 'none' else 'none'} at {int((per_lr > 0.5).sum())}"
            f"/{len(per_lr)}"
        )
    return f"Diverged within {iters} iterations (most seeds) at learning rates: " + ", ".join(parts)


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run` produced: the per-run summary, the output folder and timings (s)."""

    summary: pd.DataFrame
    out: Path
    train_seconds: float
    total_seconds: float


def run(config: SweepConfig, out: str | Path | None = None) -> SweepResult:
    """The whole experiment: load the data, train every norm, summarize, write, draw.

    Writes into ``out`` (a new or empty folder, default ``runs/deep_linear/<timestamp>``;
    see :func:`stability.records.runs.new_output_dir`): ``config.json``,
    ``records.parquet``, ``losses.csv``, ``summary.csv`` and the figure with its CSVs.

    Threads: ``config.threads`` intra-op threads (default 1). The results do not depend on
    it (every reduction has a fixed order, see :class:`StackedBatchNorm1d`), the speed does:
    on 2 idle cores 2 threads are ~1.4x faster, but on a loaded machine every small
    parallel op waits for the slowest thread's time slice and 2 threads were up to 30x
    slower than 1 (README, "The 50-layer linear network").

    Raises:
        FileNotFoundError: the data set is not where the config says.
        FileExistsError, NotADirectoryError: ``out`` cannot be a new output folder.
        ValueError: a batch larger than the training set.
    """
    from tqdm import tqdm

    from stability.experiments.divergence_figure import draw
    from stability.paper.data import flat_training_set
    from stability.records.runs import new_output_dir, write_json_atomic

    if config.data_dir is not None and not Path(config.data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {config.data_dir} does not exist (or is not a folder)")
    if config.threads is not None:  # None: torch's choice (one per core)
        torch.set_num_threads(config.threads)
    x, y = flat_training_set(
        config.dataset, config.data_dir, config.download, config.subset, config.image_size
    )
    if config.batch_size > len(x):
        raise ValueError(f"--batch-size {config.batch_size} exceeds the {len(x)} training samples")
    out = new_output_dir(out, "runs/deep_linear")
    write_json_atomic(out / "config.json", config.to_dict())
    torch.set_flush_denormal(True)  # tiny values near divergence must not slow the CPU down
    started = time.perf_counter()
    summaries, records, losses = [], [], []
    total = len(config.norms) * config.iters
    with tqdm(total=total, desc="sweep", unit="step", disable=not config.progress) as bar:
        for norm in config.norms:
            bar.set_postfix_str(f"{norm}: {len(config.lrs) * len(config.seeds)} runs")
            sweep = train_norm(norm, x, y, config, progress=bar.update)
            summary, kept = summarize(sweep, config)
            summaries.append(summary)
            records.append(kept)
            losses.append(loss_table(sweep))
    summary = pd.concat(summaries, ignore_index=True)
    table = pd.concat(records, ignore_index=True)
    table.to_parquet(out / "records.parquet", index=False)
    pd.concat(losses, ignore_index=True).to_csv(out / "losses.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    trained = time.perf_counter() - started
    draw(table, summary, out)
    return SweepResult(summary, out, trained, time.perf_counter() - started)


def format_table(summary: pd.DataFrame) -> str:
    """Iterations to divergence: one row per learning rate, one column per norm."""
    by = summary.groupby(["lr", "norm"], sort=False)
    median = by["iteration"].median().unstack("norm")
    diverged = by["diverged"].sum().unstack("norm")
    seeds = by["seed"].count().unstack("norm")
    norms = list(median.columns)
    lines = ["median iterations to divergence (diverged seeds / seeds)"]
    lines.append(f"{'lr':>10} " + " ".join(f"{n:>14}" for n in norms))
    for lr in median.index:
        cells = [
            f"{median.loc[lr, n]:>6.0f} ({diverged.loc[lr, n]}/{seeds.loc[lr, n]})" for n in norms
        ]
        lines.append(f"{lr:>10.2g} " + " ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)
