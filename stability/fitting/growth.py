"""Exponential growth of a metric across depth (per step) and over optimizer steps (per layer).

:func:`depth_growth` fits ``log v(t, k) = intercept(t) + slope(t) * k`` at every step
``t`` (``k`` the depth rank), :func:`time_growth` fits ``log v(t) = intercept + slope * t``
for one layer, over the whole run or in sliding windows; :func:`metric_table` is one
metric as a step x layer table. ``factor = exp(slope)`` is the growth per layer or per step.
Each fit reads one call of every module per step: call 0 by default, the step's first
training forward (:func:`~stability.fitting.table._select`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from stability.fitting.regression import (
    _FIT_COLUMNS,
    _fit_table,
    _nan_fit,
    _ols_grouped,
    _sliding_ols,
    _theil_sen,
)
from stability.fitting.table import (
    TRAINING_CALL,
    _check_min,
    _few,
    _filter_layers,
    _filter_main_path,
    _layers_in_depth_order,
    _log_values,
    _select,
)
from stability.records.schema import LOSS_METRIC


def metric_table(
    frame: pd.DataFrame,
    metric: str,
    call_idx: int = TRAINING_CALL,
    *,
    layers: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """One metric as a wide table: index ``step``, one column per layer in depth order.

    Args:
        frame: The record table.
        metric: The metric to tabulate, e.g. ``"output_rms"``.
        call_idx: Which call of each module in the step (:data:`TRAINING_CALL`, 0, the
            default: its first training forward, the first micro-batch under gradient
            accumulation; evaluation forwards are no calls, see :func:`_select`).
        layers: Optional glob pattern (``"layer4.*"``) or collection of exact layer names.

    Returns:
        A DataFrame of values (NaN where a layer has no record at a step), columns
        ordered by ``layer_idx``.

    Raises:
        ValueError: On a malformed or empty table, an absent metric or call index,
            unknown layers, or duplicate rows.
    """
    sub = _filter_layers(_select(frame, metric, call_idx), layers)
    order = _layers_in_depth_order(sub)
    wide = sub.pivot(index="step", columns="layer", values="value")
    wide = wide.reindex(columns=order).sort_index()
    wide.columns.name = "layer"
    return wide


def depth_growth(
    frame: pd.DataFrame,
    metric: str = "output_rms",
    *,
    call_idx: int = TRAINING_CALL,
    layers: str | Iterable[str] | None = None,
    main_path: bool = True,
    robust: bool = False,
    steps: Iterable[int] | None = None,
    min_layers: int = 3,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per-step exponential growth of a metric across depth.

    At every step ``t`` the fit is

        log v(t, k) = intercept(t) + slope(t) * k + noise,

    where ``k = 0, 1, ...`` is the rank of the layer's ``layer_idx`` among the selected
    layers (so gaps in ``layer_idx``, e.g. from layers left out by ``layers=``, do not
    matter: the factor is per *selected* layer). The rank is taken over the selected
    layers across all steps, so a layer excluded at one step (non-finite or
    non-positive value there) leaves a gap in ``k`` rather than shifting deeper layers.
    ``factor = exp(slope)`` is the per-layer growth factor, ``exp(intercept)`` the
    fitted value at the first selected layer.

    OLS (``robust=False``) gives exactly :func:`scipy.stats.linregress` per step
    (computed for all steps at once); ``stderr`` is the slope's standard error and
    ``factor_low``/``factor_high = exp(slope -+ t_{n-2, (1+confidence)/2} * stderr)``.
    ``robust=True`` uses :func:`scipy.stats.theilslopes` per step (a Python loop over
    steps): ``slope``, ``intercept`` and the slope's confidence interval come from it;
    ``stderr`` and ``r2`` are NaN.

    Args:
        frame: The record table.
        metric: The metric to fit (``output_rms`` is batch-size free).
        call_idx: Which call of each module in the step (:data:`TRAINING_CALL`, 0, the
            default: its first training forward, the first micro-batch under gradient
            accumulation; evaluation forwards are no calls, see :func:`_select`).
        layers: Optional glob pattern (``"layer4.*"``) or collection of exact layer names.
        main_path: Fit only the layers on the model's main path: a layer nested in another
            recorded layer (``q_proj.lora_A.default`` inside a peft wrapper ``q_proj``) is
            left out (:func:`~stability.fitting.table.main_path_layers`). Applied after
            ``layers``; False fits every selected layer.
        robust: Use the Theil-Sen estimator instead of OLS.
        steps: Optional steps to fit (others are dropped; absent ones are ignored).
        min_layers: Minimum number of usable layers for a fit (>= 3); steps with fewer
            get NaN.
        confidence: Confidence level of ``factor_low``/``factor_high``.

    Returns:
        One row per step present in the selection, sorted by step, with columns
        ``step, slope, intercept, stderr, factor, factor_low, factor_high, n_layers,
        r2``; ``n_layers`` counts the layers that entered the fit at that step.

    Raises:
        ValueError: On a malformed or empty table, an absent metric or call index,
            unknown layers, duplicate rows, or ``min_layers < 3``.
    """
    _check_min("min_layers", min_layers)
    if metric == LOSS_METRIC:
        raise ValueError(
            f"{LOSS_METRIC!r} is one value per step, not a per-layer metric; fit a per-layer "
            "metric across depth, e.g. 'output_rms'"
        )
    sub = _filter_layers(_select(frame, metric, call_idx), layers)
    if main_path:
        sub = _filter_main_path(sub)
    if steps is not None:
        wanted = np.unique(np.asarray(list(steps), dtype=np.int64))
        sub = sub[np.isin(sub["step"].to_numpy(), wanted)]

    step_arr = sub["step"].to_numpy(dtype=np.int64)
    lidx = sub["layer_idx"].to_numpy(dtype=np.int64)
    _, depth = np.unique(lidx, return_inverse=True)
    x = depth.astype(np.float64)
    y = _log_values(sub["value"].to_numpy())
    step_u, codes = np.unique(step_arr, return_inverse=True)

    if not robust:
        fit, n = _ols_grouped(codes, len(step_u), x, y, min_layers, confidence)
    else:
        fit = _nan_fit(len(step_u))
        ok = ~np.isnan(y)
        n = np.bincount(codes[ok], minlength=len(step_u))
        order = np.argsort(codes[ok], kind="stable")
        cs, xs, ys = codes[ok][order], x[ok][order], y[ok][order]
        bounds = np.searchsorted(cs, np.arange(len(step_u) + 1))
        for g in np.flatnonzero(n >= min_layers):
            lo, hi = bounds[g], bounds[g + 1]
            for key, val in _theil_sen(xs[lo:hi], ys[lo:hi], confidence).items():
                fit[key][g] = val

    return _fit_table(step_u, fit, "n_layers", n)


def time_growth(
    frame: pd.DataFrame,
    layer: str,
    metric: str = "output_rms",
    *,
    call_idx: int = TRAINING_CALL,
    window: int | None = None,
    robust: bool = False,
    min_points: int = 3,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Exponential growth of one layer's metric over optimizer steps.

    The fit is ``log v(t) = intercept + slope * t`` with ``t`` the optimizer step, so
    ``factor = exp(slope)`` is the growth factor *per step* and, for ``slope > 0``, the
    value doubles every ``doubling_steps = ln 2 / slope`` steps (``inf`` when
    ``slope <= 0``: it never doubles). Non-finite and non-positive values are left out.

    Args:
        frame: The record table.
        layer: The layer's qualified name.
        metric: The metric to fit.
        call_idx: Which call of the module in the step (:data:`TRAINING_CALL`, 0, the
            default: its first training forward; see :func:`_select`).
        window: None for one fit over all recorded steps; an integer ``W`` for a
            sliding fit at every recorded step ``s`` over the records with step in
            ``[s - W + 1, s]`` (``W`` is in optimizer steps, not records; with
            sparse records a window holds fewer than ``W`` points).
        robust: Use :func:`scipy.stats.theilslopes` instead of OLS (``stderr`` and
            ``r2`` are then NaN). With ``window`` this loops over windows in Python.
        min_points: Minimum number of usable records in a fit (>= 3); fewer gives NaN.
        confidence: Confidence level of ``factor_low``/``factor_high``.

    Returns:
        With ``window=None``, a single row: ``layer, n_points, step_first, step_last,
        slope, intercept, stderr, factor, factor_low, factor_high, r2,
        doubling_steps``. With a window, one row per recorded step: ``step, slope,
        intercept, stderr, factor, factor_low, factor_high, n_points, r2``
        (``n_points`` = usable records in the window).

    Raises:
        ValueError: On a malformed or empty table, an absent metric or call index, an
            unknown layer (the message lists some available ones), duplicate rows,
            ``window < min_points`` or ``min_points < 3``.
    """
    _check_min("min_points", min_points)
    sel = _select(frame, metric, call_idx)
    sub = sel[(sel["layer"] == layer).to_numpy()]
    if len(sub) == 0:
        names = _layers_in_depth_order(sel)
        raise ValueError(
            f"layer {layer!r} has no {metric!r} records (call_idx={call_idx}); "
            f"available layers: {_few(names)}"
        )
    sub = sub.sort_values("step", kind="stable")
    s = sub["step"].to_numpy(dtype=np.int64)
    y = _log_values(sub["value"].to_numpy())

    if window is None:
        ok = ~np.isnan(y)
        if robust:
            if int(ok.sum()) >= min_points:
                fit = _theil_sen(s[ok].astype(np.float64), y[ok], confidence)
            else:
                fit = {k: math.nan for k in _FIT_COLUMNS}
        else:
            arr, _ = _ols_grouped(
                np.zeros(len(s), dtype=np.int64),
                1,
                s.astype(np.float64),
                y,
                min_points,
                confidence,
            )
            fit = {k: float(v[0]) for k, v in arr.items()}
        slope = fit["slope"]
        if math.isnan(slope):
            doubling = math.nan
        elif slope > 0:
            doubling = math.log(2.0) / slope
        else:
            doubling = math.inf
        row = {
            "layer": layer,
            "n_points": int(ok.sum()),
            "step_first": int(s[0]),
            "step_last": int(s[-1]),
            **{k: fit[k] for k in _FIT_COLUMNS},
            "doubling_steps": doubling,
        }
        return pd.DataFrame([row])

    window = int(window)
    if window < min_points:
        raise ValueError(f"window={window} steps can never hold min_points={min_points} records")
    if not robust:
        fit, npts = _sliding_ols(s, y, window, min_points, confidence)
    else:
        fit = _nan_fit(len(s))
        ok = ~np.isnan(y)
        cum = np.concatenate([[0], np.cumsum(ok)])
        start = np.searchsorted(s, s - (window - 1), side="left")
        npts = cum[np.arange(len(s)) + 1] - cum[start]
        sf = s.astype(np.float64)
        for i in np.flatnonzero(npts >= min_points):
            sl = slice(start[i], i + 1)
            keep = ok[sl]
            for key, val in _theil_sen(sf[sl][keep], y[sl][keep], confidence).items():
                fit[key][i] = val
    return _fit_table(s, fit, "n_points", npts)
