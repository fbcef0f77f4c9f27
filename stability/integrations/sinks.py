"""What the dashboard sinks share: the Recorder's flushed rows as one value per step and layer.

A sink only reads values the Recorder has already copied to the host, so it adds no
host-device synchronisation: :meth:`Sink.update` looks at the table only right after a
``Recorder.step()`` that flushed (the step count is a multiple of ``flush_every``), when
:meth:`~stability.records.recorder.Recorder.to_frame` has nothing left to copy, and
:meth:`Sink.close` takes the rest once the Recorder is closed. Each look writes the rows of
the steps not written before.

Use in a plain loop::

    rec = Recorder(model)
    sink = TensorBoardSink("runs/tb").attach(rec)
    for batch in loader:
        ...  # forward, backward, optimizer step
        rec.step()
        sink.update()
    rec.close()
    sink.close()

The callbacks of :mod:`stability.integrations.lightning` and :mod:`~.hf` do the same for
every sink passed as ``sinks=[...]``.

Cost: the Recorder's public API gives the whole table, so each look rebuilds
``to_frame()`` (linear in the rows recorded so far) and keeps the new steps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stability.records.recorder import Recorder
from stability.records.schema import METRICS

#: How the calls of one layer within one step (micro-batches of gradient accumulation, a
#: module used twice) become one value: ``max`` ``max_c v_c``, ``mean`` ``(1/C) sum_c v_c``,
#: ``first`` ``v_0``.
CALL_REDUCTIONS: tuple[str, ...] = ("max", "mean", "first")


def reduce_calls(rows: pd.DataFrame, how: str = "max") -> pd.DataFrame:
    """One value per ``(step, [run,] metric, layer)``: the layer's calls reduced by ``how``.

    NaN propagates (the max or mean of calls holding a NaN is NaN), so a non-finite
    micro-batch is never hidden behind a finite one.

    Args:
        rows: records with the columns of :data:`~stability.records.schema.COLUMNS` (and
            ``run`` for a Recorder with ``run_dim``).
        how: one of :data:`CALL_REDUCTIONS`.

    Returns:
        Columns ``step, [run,] metric, layer, layer_idx, value``, sorted by step, metric
        and depth.
    """
    if how not in CALL_REDUCTIONS:
        raise ValueError(f"calls must be one of {list(CALL_REDUCTIONS)}, got {how!r}")
    keys = ["step", "run", "metric", "layer"] if "run" in rows else ["step", "metric", "layer"]
    if rows.empty:
        return pd.DataFrame({c: [] for c in [*keys, "layer_idx", "value"]})
    order = [*keys[:-1], "layer_idx", "layer", "call_idx"]
    frame = rows.sort_values(order, kind="stable").reset_index(drop=True)
    key_values = frame[keys].to_numpy()
    starts = np.flatnonzero(
        np.concatenate([[True], (key_values[1:] != key_values[:-1]).any(axis=1)])
    )
    values = frame["value"].to_numpy(dtype=np.float64)
    if how == "max":
        reduced = np.maximum.reduceat(values, starts)
    elif how == "mean":
        reduced = np.add.reduceat(values, starts) / np.diff(np.append(starts, len(values)))
    else:
        reduced = values[starts]
    out = frame.loc[starts, [*keys, "layer_idx"]].reset_index(drop=True)
    out["value"] = reduced
    return out


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """``metrics`` as a tuple of known metric names (one name may be given as a string)."""
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    return metrics


class Sink:
    """Base of the dashboard sinks: feeds a Recorder's new rows to :meth:`_write`.

    Subclasses implement ``_open(log_dir)``, ``_write(scalars)`` (the frame of
    :func:`reduce_calls`), ``_warn(step, message)`` and ``_close()``.

    Args:
        prefix: put in front of every name, e.g. ``normstab_output_rms/fc1``; the part
            before the first ``/`` is the dashboard's group, one per metric.
        calls: how the calls of a layer within a step become one value
            (:data:`CALL_REDUCTIONS`).
        metrics: the metrics to write (default: all the Recorder records); writing costs
            per value, so a dashboard may take fewer than the table holds.
    """

    def __init__(
        self,
        *,
        prefix: str = "normstab_",
        calls: str = "max",
        metrics: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(prefix, str) or "/" in prefix:
            raise ValueError(f"prefix must be a string without '/', got {prefix!r}")
        if calls not in CALL_REDUCTIONS:
            raise ValueError(f"calls must be one of {list(CALL_REDUCTIONS)}, got {calls!r}")
        self.prefix, self.calls = prefix, calls
        self.metrics = None if metrics is None else check_metrics(metrics)
        self._recorder: Recorder | None = None
        self._next_step = 0
        self._closed = False

    def attach(self, recorder: Recorder, log_dir: str | os.PathLike | None = None) -> Sink:
        """Feed from ``recorder``; ``log_dir`` is where to write when the sink was built
        without a destination of its own (the callbacks pass the run's log directory)."""
        if not isinstance(recorder, Recorder):
            raise TypeError(f"a sink attaches to a Recorder, got {type(recorder).__name__}")
        if self._recorder is not None and self._recorder is not recorder:
            raise RuntimeError(f"{type(self).__name__} already feeds from another Recorder")
        if self._recorder is None:
            self._recorder = recorder
            self._open(None if log_dir is None else Path(log_dir))
        return self

    def update(self) -> None:
        """Write the steps the Recorder flushed at its last ``step()`` (else do nothing)."""
        rec = self._attached()
        count = rec.step_count
        if count % rec.flush_every == 0 and count > self._next_step:
            self._emit(rec.to_frame())

    def warn(self, step: int, message: str) -> None:
        """Write a monitor's warning at ``step``."""
        self._attached()
        self._warn(int(step), str(message))

    def close(self) -> None:
        """Write the steps not written yet (flushing the Recorder) and close (idempotent)."""
        if self._closed or self._recorder is None:
            return
        self._emit(self._recorder.to_frame())
        self._close()
        self._closed = True

    def tag(self, metric: str, layer: str, run: int | None = None) -> str:
        """The dashboard name of one series: ``{prefix}{metric}/{layer}[/run{run}]``."""
        return f"{self.prefix}{metric}/{layer}" + ("" if run is None else f"/run{run}")

    def _attached(self) -> Recorder:
        if self._recorder is None:
            raise RuntimeError(f"{type(self).__name__} is not attached: call attach(recorder)")
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        return self._recorder

    def _emit(self, frame: pd.DataFrame) -> None:
        rows = frame[frame["step"] >= self._next_step]
        if rows.empty:
            return
        self._next_step = int(rows["step"].max()) + 1
        if self.metrics is not None:
            rows = rows[rows["metric"].isin(self.metrics)]
        self._write(reduce_calls(rows, self.calls))

    # ------------------------------------------------------------------ per sink
    def _open(self, log_dir: Path | None) -> None:
        raise NotImplementedError

    def _write(self, scalars: pd.DataFrame) -> None:
        raise NotImplementedError

    def _warn(self, step: int, message: str) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError
