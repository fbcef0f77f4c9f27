"""The divergence rule: the first step and the first layer where a recorded value offends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stability.fitting.table import _check_frame, _check_metrics
from stability.records.schema import (
    FORWARD_METRICS,
    NOT_DIVERGENCE_METRICS,
    THRESHOLD_METRICS,
)


@dataclass(frozen=True)
class Onset:
    """Where divergence begins.

    Attributes:
        step: The first optimizer step with an offending value.
        layer: The earliest layer (smallest ``layer_idx``) offending at that step.
        layer_idx: Its depth index.
        metric: The offending metric.
        value: The offending value (``nan``, ``inf``, ``-inf`` or a large number).
        reason: ``"non-finite"`` or ``"threshold"``.
        call_idx: Which call of the layer within the step.
    """

    step: int
    layer: str
    layer_idx: int
    metric: str
    value: float
    reason: str
    call_idx: int = 0


def divergence_onset(
    frame: pd.DataFrame,
    threshold: float | None = 1e6,
    *,
    metric: str | Sequence[str] | None = None,
) -> Onset | None:
    """The first step and the first layer (in depth order) where training diverges.

    This is the project's one divergence rule; every entry point (the linear sweep, the
    growth report, training) uses it. A row *offends* when its value is non-finite
    (``nan``, ``+-inf``; any metric) or, for the metrics in :data:`THRESHOLD_METRICS`
    (``output_rms``, the batch- and size-free norm), when ``|value| > threshold``. Every
    other metric is checked for non-finite values only (see :data:`THRESHOLD_METRICS`
    for why).

    By default ``coherence``/``coherence_mean`` are not considered (see
    :data:`NOT_DIVERGENCE_METRICS`); naming them in ``metric`` checks them.

    The onset is the offending row with the smallest ``step``; within that step forward
    metrics (:data:`FORWARD_METRICS`) come before gradient and weight metrics, because a
    forward NaN in layer L makes the gradients of all earlier layers NaN in the same
    step. Further ties are broken by the smallest ``layer_idx`` (the earliest layer in
    depth order), then the smallest ``call_idx``, then non-finite before threshold, then
    metric name. Weight metrics exist only every ``weight_every`` steps, so they can only
    report an onset at those steps.

    Args:
        frame: The record table.
        threshold: Magnitude beyond which a norm counts as diverged; None checks
            non-finite values only.
        metric: Restrict the search to one metric or a collection of metrics.

    Returns:
        An :class:`Onset`, or None when no row offends.

    Raises:
        ValueError: On a malformed or empty table or an absent metric.
    """
    _check_frame(frame)
    if metric is None:
        sub = frame[~frame["metric"].isin(list(NOT_DIVERGENCE_METRICS)).to_numpy()]
    else:
        wanted = [metric] if isinstance(metric, str) else list(metric)
        _check_metrics(frame, wanted)
        sub = frame[frame["metric"].isin(wanted).to_numpy()]
    values = sub["value"].to_numpy(dtype=np.float64)
    nonfinite = ~np.isfinite(values)
    offend = nonfinite.copy()
    if threshold is not None:
        is_norm = sub["metric"].isin(list(THRESHOLD_METRICS)).to_numpy()
        with np.errstate(invalid="ignore"):
            offend |= is_norm & (np.abs(values) > float(threshold))
    if not offend.any():
        return None
    hits = sub[offend]
    reason_rank = (~nonfinite[offend]).astype(np.int64)  # 0 = non-finite first
    backward_rank = (~hits["metric"].isin(list(FORWARD_METRICS))).to_numpy().astype(np.int64)
    order = np.lexsort(
        (
            hits["metric"].astype(str).to_numpy(),
            reason_rank,
            hits["call_idx"].to_numpy(dtype=np.int64),
            hits["layer_idx"].to_numpy(dtype=np.int64),
            backward_rank,
            hits["step"].to_numpy(dtype=np.int64),
        )
    )
    first = int(order[0])
    row = hits.iloc[first]
    return Onset(
        step=int(row["step"]),
        layer=str(row["layer"]),
        layer_idx=int(row["layer_idx"]),
        metric=str(row["metric"]),
        value=float(row["value"]),
        reason="non-finite" if reason_rank[first] == 0 else "threshold",
        call_idx=int(row["call_idx"]),
    )
