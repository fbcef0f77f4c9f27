"""Least-squares and Theil-Sen line fits, vectorized over groups and sliding windows.

Every fit here is of ``y`` on ``x`` (``y`` a logarithm, ``x`` a depth rank or a step). The
OLS estimates are those of :func:`scipy.stats.linregress`, computed from centred moments
for many fits at once (:func:`_ols_grouped` for one fit per group, :func:`_sliding_ols`
for one fit per window); :func:`_theil_sen` wraps :func:`scipy.stats.theilslopes`. Each
returns the columns ``slope, intercept, stderr, factor, factor_low, factor_high, r2`` with
``factor = exp(slope)`` (see :mod:`stability.fitting` for the shared conventions).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

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
