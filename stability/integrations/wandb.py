"""Weights & Biases sink: per-layer metrics and the monitor's warnings in a W&B run.

Needs the ``wandb`` extra (``pip install normstab[wandb]``).

Each recorded step becomes one ``run.log`` row holding ``normstab_step`` (the Recorder's
step) and one key per (metric, layer), ``normstab_<metric>/<layer>`` (W&B groups the
panels by the part before the ``/``, one section per metric). The rows reach W&B a flush
after they were recorded, so they are not logged at W&B's own ``step`` (which must only
grow, and belongs to the user's logging); instead ``define_metric`` makes
``normstab_step`` their x axis. A monitor's warning is a row with ``normstab_warning``.

The run is the one given, else the active ``wandb.run`` (e.g. started by Lightning's
``WandbLogger`` or HF's ``report_to="wandb"``), else one this sink starts with
``wandb.init(dir=<log dir>, **init_kwargs)`` and finishes at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from stability.integrations import missing_extra

try:
    import wandb
except ImportError as error:
    raise missing_extra("wandb", error) from None

from stability.integrations.sinks import Sink

__all__ = ["WandbSink"]


class WandbSink(Sink):
    """Log a Recorder's flushed rows to a W&B run.

    Args:
        run: the run to log into; None: ``wandb.run``, or a new one.
        prefix: put in front of every key.
        calls: how the calls of a layer within a step become one value (max, mean, first).
        metrics: the metrics to log (default: all that are recorded).
        **init_kwargs: for ``wandb.init`` when this sink starts the run (e.g.
            ``project=``, ``mode="offline"``).
    """

    def __init__(
        self,
        run: Any = None,
        *,
        prefix: str = "normstab_",
        calls: str = "max",
        metrics: Sequence[str] | None = None,
        **init_kwargs: Any,
    ) -> None:
        super().__init__(prefix=prefix, calls=calls, metrics=metrics)
        if run is not None and init_kwargs:
            raise ValueError(f"init options {sorted(init_kwargs)} need run=None")
        self.run = run
        self.init_kwargs = init_kwargs
        self._owns_run = False
        self.step_key = f"{prefix}step"

    def _open(self, log_dir: Path | None) -> None:
        if self.run is None:
            self.run = wandb.run
        if self.run is None:
            options = dict(self.init_kwargs)
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                options.setdefault("dir", str(log_dir))
            self.run = wandb.init(**options)
            self._owns_run = True
        self.run.define_metric(self.step_key)
        self.run.define_metric(f"{self.prefix}*", step_metric=self.step_key)

    def _write(self, scalars: pd.DataFrame) -> None:
        runs = scalars["run"].to_numpy() if "run" in scalars else None
        row: dict[str, Any] = {}
        current = None
        for i, (step, metric, layer, value) in enumerate(
            zip(scalars["step"], scalars["metric"], scalars["layer"], scalars["value"], strict=True)
        ):
            if step != current:
                if row:
                    self.run.log(row)
                current, row = step, {self.step_key: int(step)}
            row[self.tag(metric, layer, None if runs is None else int(runs[i]))] = float(value)
        if row:
            self.run.log(row)

    def _warn(self, step: int, message: str) -> None:
        self.run.log({self.step_key: step, f"{self.prefix}warning": message})

    def _close(self) -> None:
        if self._owns_run:
            self.run.finish()
