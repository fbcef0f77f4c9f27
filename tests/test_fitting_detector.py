"""The early-warning detector against a numpy brute force of its documented formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stability.fitting.detector import WarningConfig, WarningDetector, regime_of


def _brute(values: np.ndarray, loss: np.ndarray, window: int):
    """J(t), L(t) and the depth factor by the module docstring's formulas, step by step."""
    jumps, ratios, factors = [], [], []
    for t in range(len(values)):
        past = values[max(0, t - window) : t]
        if len(past):
            med = np.median(past, axis=0)
            jumps.append(float(np.max(values[t] / med)))
            ratios.append(float(loss[t] / np.median(loss[max(0, t - window) : t])))
        else:
            jumps.append(math.nan)
            ratios.append(math.nan)
        slope = np.polyfit(np.arange(values.shape[1]), np.log(values[t]), 1)[0]
        factors.append(math.exp(slope))
    return np.array(jumps), np.array(ratios), np.array(factors)


def test_signals_match_the_brute_force():
    rng = np.random.default_rng(0)
    values = np.exp(rng.normal(size=(40, 5)).cumsum(0) * 0.1)
    loss = np.exp(rng.normal(size=40) * 0.2) + 1
    detector = WarningDetector(WarningConfig(window=7, warmup=3))
    got = [
        detector.observe(t, range(5), [f"l{i}" for i in range(5)], values[t], loss[t])
        for t in range(40)
    ]
    jumps, ratios, factors = _brute(values, loss, 7)
    np.testing.assert_allclose([s.jump for s in got], jumps, rtol=1e-12)
    np.testing.assert_allclose([s.loss_ratio for s in got], ratios, rtol=1e-12)
    np.testing.assert_allclose([s.factor for s in got], factors, rtol=1e-9)
    assert [s.ready for s in got] == [t >= 3 for t in range(40)]
    top = [
        int(np.argmax(values[t] / np.median(values[max(0, t - 7) : t], 0))) for t in range(1, 40)
    ]
    assert [s.layer for s in got[1:]] == [f"l{i}" for i in top]


def test_fires_only_when_both_ratios_pass_and_after_warmup():
    detector = WarningDetector(WarningConfig(jump=4, loss_ratio=2, window=5, warmup=5))
    names = ["a", "b", "c"]
    fired = []
    for t in range(12):
        big = 10.0 if t in (3, 8, 10) else 1.0  # step 3 is inside the warmup
        loss = 5.0 if t in (3, 10) else 1.0  # step 8: rms jump alone, no loss jump
        s = detector.observe(t, [0, 1, 2], names, [1.0, 1.0, big], loss)
        fired.append(detector.fires(s))
    assert [t for t, f in enumerate(fired) if f] == [10]


def test_nonfinite_values_count_as_infinite_jumps_with_no_steps_left():
    detector = WarningDetector(WarningConfig(warmup=2, window=3))
    for t in range(3):
        detector.observe(t, [0, 1, 2], ["a", "b", "c"], [1.0, 2.0, 4.0], 1.0)
    s = detector.observe(3, [0, 1, 2], ["a", "b", "c"], [1.0, math.nan, 4.0], math.inf)
    assert s.jump == math.inf and s.layer == "b" and s.loss_ratio == math.inf
    assert s.steps_left_lower_bound == 0 and detector.fires(s)


def test_steps_left_is_the_fastest_growth_extrapolated_to_the_threshold():
    cfg = WarningConfig(warmup=1, window=4, threshold=1e6)
    detector = WarningDetector(cfg)
    for t, v in enumerate([1.0, 2.0, 4.0, 10.0]):  # growth 2, 2, 2.5
        s = detector.observe(t, [0, 1, 2], ["a", "b", "c"], [1.0, 1.0, v], 1.0)
    assert s.steps_left_lower_bound == math.floor(math.log(1e6 / 10) / math.log(2.5)) + 1


def test_regime_and_config_errors():
    assert regime_of(0.1, 0.05) == "abrupt" and regime_of(0.0, 0.05) == "slow"
    assert regime_of(math.nan, 0.05) == "unknown"
    for bad in (
        {"jump": 1.0},
        {"window": 0},
        {"metric": "loss"},
        {"loss_ratio": -1.0},
        {"min_layers": 2},
        {"warmup": True},
    ):
        with pytest.raises(ValueError, match="WarningConfig"):
            WarningConfig(**bad)


def test_a_warning_reads_as_one_line_with_its_step():
    detector = WarningDetector(WarningConfig(warmup=1, window=3))
    for t, v in enumerate([1.0, 1.0, 1.0, 50.0]):
        s = detector.observe(t, [0, 1, 2], ["a", "b", "c"], [1.0, 1.0, v], 1.0 + 9 * (t == 3))
    warning = detector.warning(s)
    assert warning.step == warning.warn_step == 3 and str(warning) == warning.describe()
    assert "\n" not in str(warning) and "c at 50x" in str(warning)
