"""Growth-rate fits, divergence onset and early warning on the record table.

Everything here works on the tidy record table written by :class:`stability.Recorder`
(columns ``step, layer, layer_idx, call_idx, metric, value``; one value per row) and
needs only numpy, scipy and pandas.

The model behind the fits is the one of Gitman & Ginsburg (2017), section 5: weight
normalization keeps ``||o|| ~ ||x||`` only approximately, so if each layer multiplies
the norm by a factor ``f`` slightly above one, the norm after ``k`` layers is
``c * f**k``. Taking logarithms turns this into a straight line,

    log v_k = log c + k * log f,

so an ordinary least-squares (OLS) fit of ``log(value)`` against depth gives
``slope = log f`` and the per-layer growth factor ``f = exp(slope)``
(:func:`depth_growth`). The same fit against the optimizer step for one layer gives
the growth rate in time (:func:`time_growth`). :func:`divergence_onset` finds the first
step and the first layer (in depth order) where a value is non-finite or beyond a
threshold, and :func:`early_warning` finds the first step at which the fitted depth
growth factor crosses a threshold, and its lead time over the onset.

Conventions shared by every fit:

* Only finite, strictly positive values enter a fit (the logarithm of anything else
  is undefined or infinite). Excluded values are not an error: a diverging layer
  simply drops out of the fit at that step; use :func:`divergence_onset` to find it.
* A fit with fewer than ``min_layers`` (depth) or ``min_points`` (time) usable values
  returns NaN for every fitted quantity (never less than 3, so that the standard
  error has at least one degree of freedom).
* The OLS estimates are those of :func:`scipy.stats.linregress` (same formulas,
  vectorized over steps), with one deviation: when every ``log(value)`` in a fit is
  identical, linregress reports ``stderr = nan``; here it is 0 (the residuals are
  all zero) and ``r2`` is NaN.
* 95% (by default) confidence intervals on the slope are ``slope +- t * stderr`` with
  ``t`` the two-sided Student-t quantile at ``n - 2`` degrees of freedom, mapped
  through ``exp`` to ``factor_low`` and ``factor_high``. With ``robust=True`` the
  Theil-Sen estimator (:func:`scipy.stats.theilslopes`) replaces OLS; its own
  confidence interval gives ``factor_low`` / ``factor_high``, and ``stderr`` and
  ``r2`` are NaN.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from stability.records.schema import (
    COLUMNS,
    FORWARD_METRICS,
    NOT_DIVERGENCE_METRICS,
    THRESHOLD_METRICS,
)

__all__ = [
    "COLUMNS",
    "THRESHOLD_METRICS",
    "EarlyWarning",
    "Onset",
    "depth_growth",
    "divergence_onset",
    "early_warning",
    "metric_table",
    "time_growth",
]

_FIT_COLUMNS = (
    "slope",
    "intercept",
    "stderr",
    "factor",
    "factor_low",
    "factor_high",
    "r2",
)

# Number of (window x point) cells processed at once by the sliding-window fit.
_CHUNK_CELLS = 1 << 22


# ---------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class EarlyWarning:
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


# ---------------------------------------------------------------------------------
# Validation and selection
# ---------------------------------------------------------------------------------


def _check_frame(frame: pd.DataFrame) -> None:
    """Raise ValueError unless ``frame`` is a non-empty record table."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"record table is missing columns {missing}; expected columns {list(COLUMNS)}"
        )
    if len(frame) == 0:
        raise ValueError("record table is empty (no rows)")


def _metrics_present(frame: pd.DataFrame) -> list[str]:
    return sorted(str(m) for m in pd.unique(frame["metric"]))


def _check_metrics(frame: pd.DataFrame, metrics: Sequence[str]) -> None:
    present = _metrics_present(frame)
    unknown = [m for m in metrics if m not in present]
    if unknown:
        raise ValueError(f"metric(s) {unknown} not in the record table; metrics present: {present}")


def _few(names: Sequence[str], k: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    if len(names) > k:
        shown += f", ... ({len(names) - k} more)"
    return shown


def _layers_in_depth_order(sub: pd.DataFrame) -> list[str]:
    """Layer names of ``sub`` sorted by layer_idx (ties by name)."""
    first = sub.groupby("layer", sort=False, observed=True)["layer_idx"].min()
    order = sorted(zip(first.to_numpy().tolist(), first.index.astype(str), strict=True))
    return [name for _, name in order]


def _select(frame: pd.DataFrame, metric: str, call_idx: int) -> pd.DataFrame:
    """Rows of one metric and one call index, with duplicate rows rejected."""
    _check_frame(frame)
    _check_metrics(frame, [metric])
    by_metric = frame[(frame["metric"] == metric).to_numpy()]
    sub = by_metric[by_metric["call_idx"].to_numpy() == call_idx]
    if len(sub) == 0:
        calls = sorted(int(c) for c in pd.unique(by_metric["call_idx"]))
        raise ValueError(
            f"no rows for metric {metric!r} with call_idx={call_idx}; "
            f"call_idx values present for it: {calls}"
        )
    dup = sub.duplicated(subset=["step", "layer"])
    if bool(dup.any()):
        row = sub[dup.to_numpy()].iloc[0]
        raise ValueError(
            f"record table has more than one row for step={row['step']}, "
            f"layer={row['layer']!r}, call_idx={call_idx}, metric={metric!r}; "
            "a record table holds one value per (step, layer, call_idx, metric)"
        )
    return sub


def _filter_layers(sub: pd.DataFrame, layers: str | Iterable[str] | None) -> pd.DataFrame:
    """Keep the requested layers: a glob pattern (str) or a collection of exact names."""
    if layers is None:
        return sub
    names = pd.unique(sub["layer"]).astype(str)
    if isinstance(layers, str):
        keep = [n for n in names if fnmatch.fnmatchcase(n, layers)]
        if not keep:
            raise ValueError(
                f"layer pattern {layers!r} matches no layer; layers: "
                f"{_few(_layers_in_depth_order(sub))}"
            )
    else:
        keep = list(dict.fromkeys(str(n) for n in layers))
        unknown = [n for n in keep if n not in set(names)]
        if unknown:
            raise ValueError(
                f"unknown layer(s) {unknown}; layers: {_few(_layers_in_depth_order(sub))}"
            )
    return sub[sub["layer"].isin(keep).to_numpy()]


def _log_values(values: np.ndarray) -> np.ndarray:
    """``log(values)`` where finite and > 0, NaN elsewhere."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    out = np.full(v.shape, np.nan)
    np.log(v, out=out, where=ok)
    return out


def _check_min(name: str, value: int) -> None:
    if int(value) < 3:
        raise ValueError(f"{name} must be >= 3 (a fit needs one residual degree of freedom)")


def _t_quantile(confidence: float, df: np.ndarray) -> np.ndarray:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    with np.errstate(invalid="ignore"):
        return stats.t.ppf(0.5 + confidence / 2.0, df)


# ---------------------------------------------------------------------------------
# Closed-form OLS from centred moments (the formulas of scipy.stats.linregress)
# ---------------------------------------------------------------------------------


def _ols_from_moments(
    n: np.ndarray,
    xmean: np.ndarray,
    ymean: np.ndarray,
    sxx: np.ndarray,
    sxy: np.ndarray,
    syy: np.ndarray,
    min_points: int,
    confidence: float,
) -> dict[str, np.ndarray]:
    """Finish an OLS fit from counts, means and centred sums of squares.

    With ``Sxx = sum (x - xbar)^2``, ``Sxy = sum (x - xbar)(y - ybar)`` and
    ``Syy = sum (y - ybar)^2``::

        slope     = Sxy / Sxx
        intercept = ybar - slope * xbar
        r         = Sxy / sqrt(Sxx * Syy)          (clipped to [-1, 1])
        stderr    = sqrt((1 - r^2) * Syy / Sxx / (n - 2))
        factor    = exp(slope)
        factor_low, factor_high = exp(slope -+ t_{n-2} * stderr)

    Fits with ``n < min_points`` are NaN throughout.
    """
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = sxy / sxx
        intercept = ymean - slope * xmean
        degenerate = (sxx == 0) | (syy == 0)
        r = np.where(degenerate, np.nan, sxy / np.sqrt(sxx * syy))
        r = np.clip(r, -1.0, 1.0)
        one_minus_r2 = np.where(syy == 0, 0.0, 1.0 - r**2)
        df = n - 2.0
        stderr = np.sqrt(one_minus_r2 * syy / sxx / df)
        half = _t_quantile(confidence, np.maximum(df, 1.0)) * stderr
        factor = np.exp(slope)
        low = np.exp(slope - half)
        high = np.exp(slope + half)
    bad = n < min_points
    out = {
        "slope": slope,
        "intercept": intercept,
        "stderr": stderr,
        "factor": factor,
        "factor_low": low,
        "factor_high": high,
        "r2": r**2,
    }
    for key, arr in out.items():
        arr = np.array(arr, dtype=np.float64, copy=True)
        arr[bad] = np.nan
        out[key] = arr
    return out


def _ols_grouped(
    codes: np.ndarray,
    n_groups: int,
    x: np.ndarray,
    y: np.ndarray,
    min_points: int,
    confidence: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One OLS fit per group, two-pass (centred) sums via ``np.bincount``.

    Args:
        codes: Group code of each point (0 .. n_groups - 1).
        n_groups: Number of groups.
        x: Abscissae.
        y: Ordinates; NaN marks a point to leave out.
        min_points: Minimum number of points for a fit.
        confidence: Confidence level of the factor interval.

    Returns:
        The fitted columns (see :func:`_ols_from_moments`) and the point count per group.
    """
    ok = ~np.isnan(y)
    c, xv, yv = codes[ok], x[ok], y[ok]
    n = np.bincount(c, minlength=n_groups).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        xmean = np.bincount(c, weights=xv, minlength=n_groups) / n
        ymean = np.bincount(c, weights=yv, minlength=n_groups) / n
    dx = xv - xmean[c]
    dy = yv - ymean[c]
    sxx = np.bincount(c, weights=dx * dx, minlength=n_groups)
    sxy = np.bincount(c, weights=dx * dy, minlength=n_groups)
    syy = np.bincount(c, weights=dy * dy, minlength=n_groups)
    fit = _ols_from_moments(n, xmean, ymean, sxx, sxy, syy, min_points, confidence)
    return fit, n.astype(np.int64)


def _theil_sen(x: np.ndarray, y: np.ndarray, confidence: float) -> dict[str, float]:
    """Theil-Sen fit of y on x (scipy.stats.theilslopes), as factor columns."""
    res = stats.theilslopes(y, x, alpha=confidence)
    return {
        "slope": float(res.slope),
        "intercept": float(res.intercept),
        "stderr": math.nan,
        "factor": math.exp(res.slope),
        "factor_low": math.exp(res.low_slope),
        "factor_high": math.exp(res.high_slope),
        "r2": math.nan,
    }


def _nan_fit(size: int) -> dict[str, np.ndarray]:
    return {k: np.full(size, np.nan) for k in _FIT_COLUMNS}


# ---------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------


def metric_table(
    frame: pd.DataFrame,
    metric: str,
    call_idx: int = 0,
    *,
    layers: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """One metric as a wide table: index ``step``, one column per layer in depth order.

    Args:
        frame: The record table.
        metric: The metric to tabulate, e.g. ``"output_rms"``.
        call_idx: Which call of each module (0 = first call in the step).
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
    call_idx: int = 0,
    layers: str | Iterable[str] | None = None,
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
        call_idx: Which call of each module (0 = first call in the step).
        layers: Optional glob pattern (``"layer4.*"``) or collection of exact layer names.
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
    sub = _filter_layers(_select(frame, metric, call_idx), layers)
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


def _fit_table(
    steps: np.ndarray, fit: dict[str, np.ndarray], count_name: str, counts: np.ndarray
) -> pd.DataFrame:
    """One row per step: the fitted quantities, the number of points fitted, then ``r2``."""
    out = pd.DataFrame({"step": steps})
    for key in ("slope", "intercept", "stderr", "factor", "factor_low", "factor_high"):
        out[key] = fit[key]
    out[count_name] = np.asarray(counts, dtype=np.int64)
    out["r2"] = fit["r2"]
    return out


def _sliding_ols(
    s: np.ndarray, y: np.ndarray, window: int, min_points: int, confidence: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """OLS of y on s over the window ``[s_i - window + 1, s_i]`` ending at each point.

    ``s`` is sorted and unique; NaN in ``y`` marks a point to leave out. Each window is
    gathered into a padded row of at most ``L`` points (``L`` the largest number of
    records in any window) and reduced with exact two-pass (centred) sums, in chunks.
    """
    m = len(s)
    start = np.searchsorted(s, s - (window - 1), side="left")
    count = np.arange(m) - start + 1
    width = int(count.max()) if m else 0
    fit = _nan_fit(m)
    npts = np.zeros(m, dtype=np.int64)
    if m == 0:
        return fit, npts
    sf = s.astype(np.float64)
    valid = ~np.isnan(y)
    y0 = np.where(valid, y, 0.0)
    k = np.arange(width)
    rows = max(1, _CHUNK_CELLS // max(width, 1))
    for a in range(0, m, rows):
        i = np.arange(a, min(a + rows, m))
        idx = i[:, None] - k[None, :]
        inwin = k[None, :] < count[i, None]
        idx = np.where(inwin, idx, 0)
        mask = inwin & valid[idx]
        w = mask.astype(np.float64)
        n = w.sum(axis=1)
        X = sf[idx]
        Y = y0[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            xmean = (X * w).sum(axis=1) / n
            ymean = (Y * w).sum(axis=1) / n
        dx = np.where(mask, X - xmean[:, None], 0.0)
        dy = np.where(mask, Y - ymean[:, None], 0.0)
        part = _ols_from_moments(
            n,
            xmean,
            ymean,
            (dx * dx).sum(axis=1),
            (dx * dy).sum(axis=1),
            (dy * dy).sum(axis=1),
            min_points,
            confidence,
        )
        for key in _FIT_COLUMNS:
            fit[key][i] = part[key]
        npts[i] = n.astype(np.int64)
    return fit, npts


def time_growth(
    frame: pd.DataFrame,
    layer: str,
    metric: str = "output_rms",
    *,
    call_idx: int = 0,
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
        call_idx: Which call of the module (0 = first call in the step).
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


def early_warning(
    frame: pd.DataFrame,
    factor_threshold: float = 1.05,
    *,
    metric: str = "output_rms",
    threshold: float | None = 1e6,
    min_layers: int = 3,
    call_idx: int = 0,
    layers: str | Iterable[str] | None = None,
    onset_metric: str | Sequence[str] | None = None,
) -> EarlyWarning | None:
    """The first step at which the fitted depth growth crosses ``factor_threshold``.

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
        An :class:`EarlyWarning`, or None when the factor never crosses the threshold
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
    return EarlyWarning(
        warn_step=warn_step, factor=float(factor[i]), onset_step=onset_step, lead=lead
    )
