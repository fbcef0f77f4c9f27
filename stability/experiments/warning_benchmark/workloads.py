r"""The benchmark's training runs: each one a record table with the loss, one per run.

* ``linear-none`` / ``linear-wn`` / ``linear-bn``: the paper's 50-layer, 64-wide linear net
  (:func:`stability.paper.models.deep_linear`), every (lr, seed) run trained at once as one
  :class:`~stability.paper.stacked.StackedDeepLinear` (runs never mix; a run that diverges
  keeps producing NaN without touching the others).
* ``relu-mlp-wn``: the same stacked layers with a ReLU between them (:class:`StackedReluMLP`),
  ``mlp_depth`` weight-normalized layers.
* ``cifar10-nv-wn``: :func:`stability.paper.models.cifar10_nv` with WN on Fashion-MNIST
  images, narrowed to ``cifar_width`` (0.25: 32 / 64 / 80 channels), at a small batch
  (``cifar_batch``), one run at a time.

Every run is SGD with momentum 0.9 on cross-entropy, seeded by ``seed`` (initialization
and batches); the Recorder records ``output_rms`` and the loss every step and the row
coherence every 10 steps, exactly what a user's ``Recorder`` + ``Monitor`` would see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from stability.experiments.divergence_sweep import batch_indices
from stability.experiments.warning_benchmark.config import BenchmarkConfig
from stability.paper.models import cifar10_nv, deep_linear
from stability.paper.stacked import StackedDeepLinear, StackedSGD
from stability.records.recorder import Recorder

#: What every benchmark run records (coherence at ``weight_every`` steps).
METRICS = ("output_rms", "loss", "coherence")
WEIGHT_EVERY = 10


@dataclass(frozen=True)
class BenchRun:
    """One training run's record table (one run, with ``loss`` rows)."""

    workload: str
    lr: float
    seed: int
    split: str  # "tuning" or "reporting"
    frame: pd.DataFrame


class StackedReluMLP(StackedDeepLinear):
    """Stacked linear layers with a ReLU after every layer but the last."""

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 2)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.norms is not None and i < len(self.norms):
                x = self.norms[i](x)
            if i < last:
                x = F.relu(x)
        return x


def _split(seed: int, config: BenchmarkConfig) -> str:
    return "tuning" if seed in config.tuning_seeds else "reporting"


def _stacked_runs(
    workload: str, x: Tensor, y: Tensor, config: BenchmarkConfig
) -> Iterator[BenchRun]:
    """Train every (lr, seed) run of a stacked workload together; yield one table per run."""
    norm = {"linear-none": "none", "linear-wn": "wn", "linear-bn": "bn"}.get(workload, "wn")
    depth = config.mlp_depth if workload == "relu-mlp-wn" else 50
    seeds = config.tuning_seeds + config.reporting_seeds
    runs = [(lr, seed) for lr in config.lrs(workload) for seed in seeds]
    models = []
    for _, seed in runs:
        torch.manual_seed(seed)
        models.append(deep_linear(depth, 64, x.shape[1], int(y.max()) + 1, norm=norm))
    kind = StackedReluMLP if workload == "relu-mlp-wn" else StackedDeepLinear
    model = kind.from_models(models)
    optimizer = StackedSGD(model.parameters(), torch.tensor([lr for lr, _ in runs]), 0.9)
    indices = torch.stack(
        [batch_indices(len(x), config.batch_size, seed, config.iters) for _, seed in runs], 1
    )
    with Recorder(
        model, run_dim=0, metrics=METRICS, weight_every=WEIGHT_EVERY, flush_every=config.iters
    ) as rec:
        for step in range(config.iters):
            batch = indices[step]
            logits = model(x[batch])
            loss = F.cross_entropy(logits.flatten(0, 1), y[batch].flatten(), reduction="none")
            loss = loss.view(len(runs), -1).mean(dim=1)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # run r's weights get the gradient of loss[r] alone
            optimizer.step()
            rec.step(loss=loss.detach())
    frame = rec.to_frame()
    for r, (lr, seed) in enumerate(runs):
        one = frame[frame["run"].to_numpy() == r].drop(columns="run").reset_index(drop=True)
        yield BenchRun(workload, lr, seed, _split(seed, config), one)


def _cifar_runs(x: Tensor, y: Tensor, config: BenchmarkConfig) -> Iterator[BenchRun]:
    """cifar10-nv with WN, one run per (lr, seed), on 1 x 28 x 28 images."""
    images = x.view(-1, 1, 28, 28)
    for lr in config.lrs("cifar10-nv-wn"):
        for seed in config.tuning_seeds + config.reporting_seeds:
            torch.manual_seed(seed)
            model = cifar10_nv(
                "wn", in_channels=1, num_classes=int(y.max()) + 1, width=config.cifar_width
            )
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            order = batch_indices(len(x), config.cifar_batch, seed, config.cifar_iters)
            with Recorder(
                model, metrics=METRICS, weight_every=WEIGHT_EVERY, flush_every=config.cifar_iters
            ) as rec:
                for step in range(config.cifar_iters):
                    loss = F.cross_entropy(model(images[order[step]]), y[order[step]])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    rec.step(loss=loss.detach())
                    if not torch.isfinite(loss):
                        break  # the rest of a dead run is NaN: nothing more to learn
            yield BenchRun("cifar10-nv-wn", lr, seed, _split(seed, config), rec.to_frame())


def workload_runs(
    workload: str, x: Tensor, y: Tensor, config: BenchmarkConfig
) -> Iterator[BenchRun]:
    """Every run of one workload (see the module docstring)."""
    if workload == "cifar10-nv-wn":
        return _cifar_runs(x, y, config)
    return _stacked_runs(workload, x, y, config)


def all_runs(
    x: Tensor, y: Tensor, config: BenchmarkConfig, progress: Callable[[str], None] | None = None
) -> list[BenchRun]:
    """Every run of every workload of ``config``."""
    runs: list[BenchRun] = []
    for workload in config.workloads:
        if progress is not None:
            progress(workload)
        runs.extend(workload_runs(workload, x, y, config))
    return runs


def lr_table(runs: list[BenchRun]) -> pd.DataFrame:
    """One row per run: workload, lr, seed, split (no records)."""
    return pd.DataFrame(
        [{"workload": r.workload, "lr": r.lr, "seed": r.seed, "split": r.split} for r in runs],
        columns=["workload", "lr", "seed", "split"],
    ).astype({"lr": np.float64})
