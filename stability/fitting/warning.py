"""The offline door of the early warning: the detector run over a saved record table.

:func:`early_warning` feeds the records of one run, step by step, to the same
:class:`~stability.fitting.detector.WarningDetector` that :class:`stability.Monitor` feeds
live, so both warn at the same step of the same run. :func:`warning_signals` returns what
the detector computed at every step (for plots and for benchmarking thresholds).
:func:`depth_factor_crossing` is the earlier, weaker rule (the depth factor crossing a fixed
threshold), kept as a description of the mechanism.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from stability.fitting.detector import EarlyWarning, StepSignals, WarningConfig, WarningDetector
from stability.fitting.growth import depth_growth
from stability.fitting.onset import divergence_onset
from stability.fitting.table import _check_frame, _select
from stability.records.schema import LOSS_METRIC

_COHERENCE = "coherence"


def _check_config(config: WarningConfig | None) -> WarningConfig:
    if config is None:
        return WarningConfig()
    if not isinstance(config, WarningConfig):
        raise TypeError(
            f"config must be a fitting.WarningConfig, got {config!r}; the depth-factor "
            "threshold rule of earlier versions is fitting.depth_factor_crossing(frame, factor)"
        )
    return config


def _per_step(frame: pd.DataFrame, metric: str, how: str) -> pd.Series:
    """``how`` (first / max) of call-0 rows of ``metric`` per step; empty if absent."""
    rows = frame[(frame["metric"] == metric).to_numpy() & (frame["call_idx"] == 0).to_numpy()]
    if how == "first" and bool(rows.duplicated(subset=["step"]).any()):
        step = int(rows[rows.duplicated(subset=["step"]).to_numpy()]["step"].iloc[0])
        raise ValueError(f"record table has more than one {metric!r} row at step {step}")
    return rows.groupby("step", sort=True)["value"].agg(how)


def _scan(
    frame: pd.DataFrame, config: WarningConfig, call_idx: int
) -> Iterator[tuple[WarningDetector, StepSignals]]:
    """Feed the table to a fresh detector, one recorded step at a time, in step order."""
    _check_frame(frame)
    if "run" in frame.columns and frame["run"].nunique() > 1:
        raise ValueError(
            "record table holds several runs (column 'run'); select one first "
            "(stability.records.io.select_run or frame[frame.run == r])"
        )
    sub = _select(frame, config.metric, call_idx)
    loss = _per_step(frame, LOSS_METRIC, "first")
    if config.loss_ratio is not None and loss.empty:
        raise ValueError(
            "record table has no 'loss' rows: record the loss with Recorder.step(loss=loss), "
            "or use fitting.WarningConfig(loss_ratio=None) to watch the rms jump alone"
        )
    coherence = _per_step(frame, _COHERENCE, "max")
    sub = sub.sort_values(["step", "layer_idx"], kind="stable")
    steps = sub["step"].to_numpy(dtype=np.int64)
    bounds = np.flatnonzero(np.diff(steps)) + 1
    layer_idx = np.split(sub["layer_idx"].to_numpy(dtype=np.int64), bounds)
    layers = np.split(sub["layer"].astype(str).to_numpy(), bounds)
    values = np.split(sub["value"].to_numpy(dtype=np.float64), bounds)
    detector = WarningDetector(config)
    for i, step in enumerate(steps[np.r_[0, bounds]] if len(steps) else []):
        step = int(step)
        signals = detector.observe(
            step,
            layer_idx[i],
            layers[i],
            values[i],
            loss=float(loss[step]) if step in loss.index else None,
            coherence=float(coherence[step]) if step in coherence.index else None,
        )
        yield detector, signals


def warning_signals(
    frame: pd.DataFrame, config: WarningConfig | None = None, *, call_idx: int = 0
) -> pd.DataFrame:
    """The detector's signals at every recorded step of one run.

    Args:
        frame: The record table of one run (with ``loss`` rows unless
            ``config.loss_ratio`` is None).
        config: The detector's parameters (default :class:`WarningConfig`).
        call_idx: Which call of each module the detector watches.

    Returns:
        One row per recorded step: the fields of
        :class:`~stability.fitting.detector.StepSignals` and ``fires`` (the rule holds).

    Raises:
        ValueError: A malformed table, an absent metric or loss, several runs, duplicates.
        TypeError: ``config`` is not a :class:`WarningConfig`.
    """
    config = _check_config(config)
    rows = [asdict(s) | {"fires": d.fires(s)} for d, s in _scan(frame, config, call_idx)]
    return pd.DataFrame(rows)


def early_warning(
    frame: pd.DataFrame,
    config: WarningConfig | None = None,
    *,
    call_idx: int = 0,
    onset_metric: str | Sequence[str] | None = None,
) -> EarlyWarning | None:
    """The detector's first warning on a saved table of one run, and its lead.

    The detector (:mod:`stability.fitting.detector`) warns at the first recorded step, after
    ``config.warmup`` earlier records, where the largest layer ``output_rms`` reaches
    ``config.jump`` times its own trailing median and the loss ``config.loss_ratio`` times
    its trailing median. The onset is :func:`divergence_onset`
    ``(frame, config.threshold, metric=onset_metric)`` and ``lead = onset_step - warn_step``
    in optimizer steps (positive when the warning precedes the divergence). The live
    :class:`stability.Monitor` gives the same ``warn_step`` on the same run.

    Args:
        frame: The record table of one run (with ``loss`` rows unless
            ``config.loss_ratio`` is None).
        config: The detector's parameters (default :class:`WarningConfig`; its defaults and
            the data they were chosen on are documented there).
        call_idx: Which call of each module the detector watches.
        onset_metric: Metric(s) searched for the onset; None = all metrics.

    Returns:
        An :class:`EarlyWarning`, or None when the detector never fires (whether or not the
        run diverged).

    Raises:
        ValueError: A malformed table, an absent metric or loss, several runs, duplicates.
        TypeError: ``config`` is not a :class:`WarningConfig` (e.g. an old factor threshold).
    """
    config = _check_config(config)
    for detector, signals in _scan(frame, config, call_idx):
        if detector.fires(signals):
            warning = detector.warning(signals)
            onset = divergence_onset(frame, config.threshold, metric=onset_metric)
            if onset is None:
                return warning
            return replace(warning, onset_step=onset.step, lead=onset.step - warning.warn_step)
    return None


@dataclass(frozen=True)
class FactorCrossing:
    """The first step at which depth growth crosses a threshold, and its lead time.

    Attributes:
        warn_step: The first step whose fitted per-layer factor is >= the threshold.
        factor: The fitted factor ``exp(slope)`` at ``warn_step``.
        onset_step: The divergence onset step (see :func:`divergence_onset`), or None
            when the run never diverged.
        lead: ``onset_step - warn_step`` in optimizer steps, or None without an onset.
            Negative when the warning comes only after the onset.
    """

    warn_step: int
    factor: float
    onset_step: int | None
    lead: int | None


def depth_factor_crossing(
    frame: pd.DataFrame,
    factor_threshold: float = 1.05,
    *,
    metric: str = "output_rms",
    threshold: float | None = 1e6,
    min_layers: int = 3,
    call_idx: int = 0,
    layers: str | Iterable[str] | None = None,
    onset_metric: str | Sequence[str] | None = None,
) -> FactorCrossing | None:
    """The first step at which the fitted depth growth crosses ``factor_threshold``.

    This was ``early_warning`` before the self-calibrating detector replaced it: a fixed
    factor threshold warns late and misses BN-type divergence, whose depth factor stays flat
    (see :mod:`stability.fitting.detector`); it remains a description of the mechanism.

    The warning step is the smallest step whose :func:`depth_growth` OLS factor
    ``exp(slope)`` is finite and ``>= factor_threshold`` (fits with fewer than
    ``min_layers`` usable layers are NaN and never warn). The onset is
    :func:`divergence_onset` ``(frame, threshold, metric=onset_metric)`` (all metrics
    by default), and ``lead = onset_step - warn_step`` in optimizer steps: positive
    when the warning precedes the divergence.

    Args:
        frame: The record table.
        factor_threshold: Per-layer growth factor that triggers the warning.
        metric: Metric whose depth growth is fitted.
        threshold: Divergence threshold passed to :func:`divergence_onset`.
        min_layers: Minimum number of usable layers for a depth fit (>= 3).
        call_idx: Which call of each module enters the depth fit.
        layers: Optional layer selection for the depth fit (glob or names).
        onset_metric: Metric(s) searched for the onset; None = all metrics.

    Returns:
        A :class:`FactorCrossing`, or None when the factor never crosses the threshold
        (whether or not the run diverged).

    Raises:
        ValueError: As :func:`depth_growth` and :func:`divergence_onset`.
    """
    growth = depth_growth(frame, metric, call_idx=call_idx, layers=layers, min_layers=min_layers)
    factor = growth["factor"].to_numpy()
    crossed = np.isfinite(factor) & (factor >= factor_threshold)
    if not crossed.any():
        return None
    i = int(np.argmax(crossed))
    warn_step = int(growth["step"].iloc[i])
    onset = divergence_onset(frame, threshold, metric=onset_metric)
    onset_step = None if onset is None else onset.step
    lead = None if onset_step is None else onset_step - warn_step
    return FactorCrossing(
        warn_step=warn_step, factor=float(factor[i]), onset_step=onset_step, lead=lead
    )
