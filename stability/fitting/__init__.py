"""Growth-rate fits, divergence onset and early warning on the record table.

Everything here works on the tidy record table written by :class:`stability.Recorder`
(columns ``step, layer, layer_idx, call_idx, metric, value``; one value per row) and
needs only numpy, scipy and pandas. Rows of the loss (metric ``loss``, layer ``(loss)``)
never enter a depth fit.

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
threshold, and :func:`early_warning` runs the self-calibrating divergence detector
(:mod:`stability.fitting.detector`, the one :class:`stability.Monitor` runs live) over a
saved table and gives its warning and its lead time over the onset.

Modules: :mod:`~stability.fitting.regression` (OLS and Theil-Sen),
:mod:`~stability.fitting.growth` (depth and time growth), :mod:`~stability.fitting.onset`
(the divergence rule), :mod:`~stability.fitting.detector` and
:mod:`~stability.fitting.warning` (the early warning); everything public is re-exported
here.

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

from stability.fitting.detector import (
    REGIMES,
    EarlyWarning,
    StepSignals,
    WarningConfig,
    WarningDetector,
)
from stability.fitting.growth import depth_growth, metric_table, time_growth
from stability.fitting.onset import Onset, divergence_onset
from stability.fitting.warning import (
    FactorCrossing,
    depth_factor_crossing,
    early_warning,
    warning_signals,
)
from stability.records.schema import COLUMNS, THRESHOLD_METRICS

__all__ = [
    "COLUMNS",
    "REGIMES",
    "THRESHOLD_METRICS",
    "EarlyWarning",
    "FactorCrossing",
    "Onset",
    "StepSignals",
    "WarningConfig",
    "WarningDetector",
    "depth_factor_crossing",
    "depth_growth",
    "divergence_onset",
    "early_warning",
    "metric_table",
    "time_growth",
    "warning_signals",
]
