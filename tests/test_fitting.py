"""Tests for stability.fitting against scipy references on synthetic record tables.

Every frame here is built with plain numpy/pandas (no Recorder), with a known growth
law, so each fitted quantity has an independent reference: the generating constant,
``scipy.stats.linregress`` / ``scipy.stats.theilslopes`` on the same points, or the
position where a value was injected.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stability import fitting

COLUMNS = ["step", "layer", "layer_idx", "call_idx", "metric", "value"]


def make_frame(
    values: np.ndarray,
    *,
    metric: str = "output_rms",
    steps: np.ndarray | None = None,
    layer_idx: np.ndarray | None = None,
    names: list[str] | None = None,
    call_idx: int = 0,
) -> pd.DataFrame:
    """A record table from a (n_steps, n_layers) array of values."""
    n_steps, n_layers = values.shape
    steps = np.arange(n_steps) if steps is None else np.asarray(steps)
    layer_idx = np.arange(n_layers) if layer_idx is None else np.asarray(layer_idx)
    names = [f"block{j}.conv" for j in range(n_layers)] if names is None else names
    return pd.DataFrame(
        {
            "step": np.repeat(steps, n_layers).astype(np.int64),
            "layer": np.tile(np.asarray(names, dtype=object), n_steps),
            "layer_idx": np.tile(layer_idx, n_steps).astype(np.int64),
            "call_idx": np.full(n_steps * n_layers, call_idx, dtype=np.int64),
            "metric": metric,
            "value": values.reshape(-1).astype(np.float64),
        },
        columns=COLUMNS,
    )


def geometric_values(
    n_steps: int, n_layers: int, f: float, *, c: float = 0.8, sigma: float = 0.05, seed: int = 0
) -> np.ndarray:
    """``c * f**k * noise`` with log-normal noise of log-scale ``sigma``."""
    rng = np.random.default_rng(seed)
    k = np.arange(n_layers)
    return c * f ** k[None, :] * np.exp(sigma * rng.standard_normal((n_steps, n_layers)))


def assert_matches_linregress(row: pd.Series, x: np.ndarray, y: np.ndarray) -> None:
    ref = stats.linregress(x, y)
    np.testing.assert_allclose(row["slope"], ref.slope, rtol=1e-10)
    np.testing.assert_allclose(row["intercept"], ref.intercept, rtol=1e-10)
    np.testing.assert_allclose(row["stderr"], ref.stderr, rtol=1e-10)
    np.testing.assert_allclose(row["r2"], ref.rvalue**2, rtol=1e-10)
    np.testing.assert_allclose(row["factor"], math.exp(ref.slope), rtol=1e-10)
    half = stats.t.ppf(0.975, len(x) - 2) * ref.stderr
    np.testing.assert_allclose(row["factor_low"], math.exp(ref.slope - half), rtol=1e-10)
    np.testing.assert_allclose(row["factor_high"], math.exp(ref.slope + half), rtol=1e-10)


# ---------------------------------------------------------------------------------
# depth_growth
# ---------------------------------------------------------------------------------


def test_depth_growth_recovers_known_factor():
    f, sigma, n_layers = 1.07, 0.05, 40
    frame = make_frame(geometric_values(20, n_layers, f, sigma=sigma))
    out = fitting.depth_growth(frame)
    assert list(out.columns) == [
        "step",
        "slope",
        "intercept",
        "stderr",
        "factor",
        "factor_low",
        "factor_high",
        "n_layers",
        "r2",
    ]
    assert out["step"].tolist() == list(range(20))
    assert (out["n_layers"] == n_layers).all()
    # Theory: sd(slope) = sigma / sqrt(Sxx), Sxx = L (L^2 - 1) / 12 (about 6.8e-4 here).
    # Each of the 20 estimates must lie within 5 sd of log f (a 1-in-3e6 event each).
    sd = sigma / math.sqrt(n_layers * (n_layers**2 - 1) / 12)
    assert np.all(np.abs(out["slope"] - math.log(f)) < 5 * sd)
    # The estimated stderr estimates that sd (chi distribution, 38 df: ~11% relative sd).
    assert np.all(np.abs(out["stderr"] / sd - 1) < 0.5)
    assert np.all(out["factor_low"] < out["factor"])
    assert np.all(out["factor"] < out["factor_high"])
    np.testing.assert_allclose(out["intercept"], math.log(0.8), atol=10 * sigma)


def test_depth_growth_ols_equals_linregress_per_step():
    values = geometric_values(12, 9, 1.03, sigma=0.2, seed=1)
    # Excluded points: nan, inf, zero and a negative value at different steps.
    values[2, 4] = np.nan
    values[3, 0] = np.inf
    values[5, 8] = 0.0
    values[7, 3] = -1.0
    frame = make_frame(values)
    out = fitting.depth_growth(frame).set_index("step")
    for t in range(values.shape[0]):
        ok = np.isfinite(values[t]) & (values[t] > 0)
        x = np.arange(values.shape[1])[ok].astype(float)  # gaps keep the global rank
        assert out.loc[t, "n_layers"] == ok.sum()
        assert_matches_linregress(out.loc[t], x, np.log(values[t][ok]))


def test_depth_growth_too_few_layers_gives_nan():
    values = geometric_values(3, 5, 1.1, seed=2)
    values[1, :3] = np.nan  # two usable layers left at step 1
    out = fitting.depth_growth(make_frame(values)).set_index("step")
    assert out.loc[1, "n_layers"] == 2
    assert out.loc[[1], ["slope", "stderr", "factor", "factor_low", "r2"]].isna().all(axis=None)
    assert np.isfinite(out.loc[[0, 2], "factor"]).all()
    with pytest.raises(ValueError, match="min_layers"):
        fitting.depth_growth(make_frame(values), min_layers=2)


def test_depth_growth_constant_values_zero_stderr():
    out = fitting.depth_growth(make_frame(np.ones((2, 6))))
    np.testing.assert_array_equal(out["slope"], 0.0)
    np.testing.assert_array_equal(out["stderr"], 0.0)
    np.testing.assert_array_equal(out["factor_low"], 1.0)


def test_depth_growth_robust_equals_theilslopes():
    values = geometric_values(6, 15, 1.05, sigma=0.1, seed=3)
    values[:, 14] *= 50.0  # an outlier at the deepest layer: drags OLS, not Theil-Sen
    values[4, 2] = np.nan
    out = fitting.depth_growth(make_frame(values), robust=True).set_index("step")
    for t in range(values.shape[0]):
        ok = np.isfinite(values[t])
        x = np.arange(15)[ok].astype(float)
        ref = stats.theilslopes(np.log(values[t][ok]), x, alpha=0.95)
        row = out.loc[t]
        np.testing.assert_allclose(row["slope"], ref.slope, rtol=1e-12)
        np.testing.assert_allclose(row["intercept"], ref.intercept, rtol=1e-12)
        np.testing.assert_allclose(row["factor_low"], math.exp(ref.low_slope), rtol=1e-12)
        np.testing.assert_allclose(row["factor_high"], math.exp(ref.high_slope), rtol=1e-12)
        assert math.isnan(row["stderr"])
        assert row["n_layers"] == ok.sum()
    # The outlier drags OLS but not Theil-Sen.
    ols = fitting.depth_growth(make_frame(values))
    truth = math.log(1.05)
    assert np.all(np.abs(out["slope"] - truth) < np.abs(ols["slope"].to_numpy() - truth))


def test_depth_growth_invariant_to_row_order_and_layer_idx_gaps():
    values = geometric_values(8, 10, 1.04, sigma=0.1, seed=4)
    base = fitting.depth_growth(make_frame(values))
    gappy = make_frame(values, layer_idx=np.array([0, 3, 4, 9, 10, 20, 21, 22, 40, 41]))
    # Other metrics and another call of the same modules interleaved, rows shuffled.
    noise = make_frame(np.full(values.shape, np.inf), metric="gain")
    second_call = make_frame(values * 1e3, call_idx=1)
    mixed = pd.concat([gappy, noise, second_call], ignore_index=True)
    mixed = mixed.sample(frac=1.0, random_state=0).reset_index(drop=True)
    got = fitting.depth_growth(mixed)
    pd.testing.assert_frame_equal(got, base, rtol=1e-12)
    # Selecting layers re-ranks among the selection: every other layer -> factor f**2.
    names = [f"block{j}.conv" for j in range(0, 10, 2)]
    sel = fitting.depth_growth(mixed, layers=names)
    for t in range(values.shape[0]):
        y = np.log(values[t, ::2])
        assert_matches_linregress(sel.iloc[t], np.arange(5.0), y)
    # Glob selection.
    glob = fitting.depth_growth(mixed, layers="block[0-4].conv")
    assert (glob["n_layers"] == 5).all()
    # The steps argument restricts the output.
    assert fitting.depth_growth(mixed, steps=[1, 5, 99])["step"].tolist() == [1, 5]


# ---------------------------------------------------------------------------------
# time_growth
# ---------------------------------------------------------------------------------


def test_time_growth_recovers_rate_and_equals_linregress():
    r, a, sigma = 1.01, 2.0, 0.02
    rng = np.random.default_rng(5)
    steps = np.arange(0, 600, 2)
    v = a * r**steps * np.exp(sigma * rng.standard_normal(len(steps)))
    frame = make_frame(v[:, None], steps=steps, names=["fc"])
    out = fitting.time_growth(frame, "fc")
    assert len(out) == 1
    row = out.iloc[0]
    assert_matches_linregress(row, steps.astype(float), np.log(v))
    # sd(slope) = sigma / sqrt(Sxx) ~ 1.3e-5; 5 sd tolerance.
    sd = sigma / math.sqrt(np.sum((steps - steps.mean()) ** 2))
    assert abs(row["slope"] - math.log(r)) < 5 * sd
    assert row["doubling_steps"] == pytest.approx(math.log(2) / math.log(r), rel=0.01)
    assert row["n_points"] == len(steps)
    assert (row["step_first"], row["step_last"]) == (0, 598)
    # Robust single fit = theilslopes; a decaying series never doubles.
    rob = fitting.time_growth(frame, "fc", robust=True).iloc[0]
    ref = stats.theilslopes(np.log(v), steps.astype(float), alpha=0.95)
    np.testing.assert_allclose(rob["slope"], ref.slope, rtol=1e-12)
    decay = make_frame((0.9 ** np.arange(10.0))[:, None], names=["fc"])
    assert fitting.time_growth(decay, "fc").iloc[0]["doubling_steps"] == math.inf


def test_time_growth_sliding_window_equals_linregress_on_window():
    rng = np.random.default_rng(6)
    steps = np.array([0, 1, 2, 4, 5, 9, 10, 11, 12, 13, 20, 21, 25, 26, 27, 28, 30])
    v = 3.0 * 1.05**steps * np.exp(0.1 * rng.standard_normal(len(steps)))
    v[8] = np.nan  # step 12 excluded from every window holding it
    v[14] = np.inf
    other = geometric_values(len(steps), 1, 1.0, seed=7)
    frame = make_frame(np.column_stack([other[:, 0], v]), steps=steps, names=["a", "b"])
    window = 6
    out = fitting.time_growth(frame, "b", window=window)
    assert out["step"].tolist() == steps.tolist()
    rob = fitting.time_growth(frame, "b", window=window, robust=True)
    for i, s in enumerate(steps):
        inwin = (steps > s - window) & (steps <= s) & np.isfinite(v)
        row = out.iloc[i]
        assert row["n_points"] == inwin.sum()
        if inwin.sum() < 3:
            assert math.isnan(row["slope"]) and math.isnan(rob.iloc[i]["slope"])
            continue
        x, y = steps[inwin].astype(float), np.log(v[inwin])
        assert_matches_linregress(row, x, y)
        ref = stats.theilslopes(y, x, alpha=0.95)
        np.testing.assert_allclose(rob.iloc[i]["slope"], ref.slope, rtol=1e-12)
        np.testing.assert_allclose(rob.iloc[i]["factor_low"], math.exp(ref.low_slope))
    assert out["slope"].notna().sum() >= 8


def test_time_growth_sliding_window_chunked(monkeypatch):
    # Force many small chunks; the result must not depend on the chunking.
    v = geometric_values(1, 300, 1.002, sigma=0.05, seed=8)[0]
    frame = make_frame(v[:, None], names=["fc"])
    whole = fitting.time_growth(frame, "fc", window=25)
    monkeypatch.setattr(fitting.regression, "_CHUNK_CELLS", 50)
    chunked = fitting.time_growth(frame, "fc", window=25)
    pd.testing.assert_frame_equal(whole, chunked)


def test_time_growth_errors():
    frame = make_frame(geometric_values(5, 12, 1.0))
    with pytest.raises(ValueError, match=r"'nope'.*available layers: 'block0.conv'"):
        fitting.time_growth(frame, "nope")
    with pytest.raises(ValueError, match="window"):
        fitting.time_growth(frame, "block0.conv", window=2)


# ---------------------------------------------------------------------------------
# divergence_onset
# ---------------------------------------------------------------------------------


def onset_frame() -> pd.DataFrame:
    values = geometric_values(10, 6, 1.1, seed=9)
    values[4, 3] = np.inf  # the onset: step 4, layer 3
    values[4, 5] = np.nan  # same step, deeper layer
    values[6, 0] = np.nan  # later step, earlier layer
    values[7, 1] = 1e9  # later step, over the threshold
    frame = make_frame(values, metric="output_norm")
    coh = make_frame(np.full((10, 6), 0.5), metric="coherence")
    return pd.concat([coh, frame], ignore_index=True).sample(frac=1.0, random_state=1)


def test_divergence_onset_non_finite():
    onset = fitting.divergence_onset(onset_frame())
    assert onset == fitting.Onset(
        step=4,
        layer="block3.conv",
        layer_idx=3,
        metric="output_norm",
        value=math.inf,
        reason="non-finite",
        call_idx=0,
    )


def test_divergence_onset_threshold_and_none():
    values = geometric_values(10, 6, 1.1, seed=10)
    values[6, 4] = 5e6
    values[6, 2] = 2e6
    values[8, 0] = np.nan
    frame = make_frame(values, metric="output_rms")
    onset = fitting.divergence_onset(frame, threshold=1e6)
    assert (onset.step, onset.layer, onset.layer_idx) == (6, "block2.conv", 2)
    assert (onset.reason, onset.value, onset.metric) == ("threshold", 2e6, "output_rms")
    # Norms that scale with the batch, the layer size or a loss scale are judged for
    # non-finite values only: the same values as grad_norm offend first at the NaN.
    grads = make_frame(values, metric="grad_norm")
    assert fitting.divergence_onset(grads, threshold=1e6).step == 8
    # A higher threshold: only the nan at step 8 remains.
    later = fitting.divergence_onset(frame, threshold=1e7)
    assert (later.step, later.layer, later.reason) == (8, "block0.conv", "non-finite")
    assert fitting.divergence_onset(frame, threshold=None).step == 8
    clean = make_frame(geometric_values(10, 6, 1.1, seed=11))
    assert fitting.divergence_onset(clean) is None


def test_divergence_onset_metric_scope():
    # Large gain and coherence values are not divergence; a non-finite gain is. A NaN
    # coherence (a zero weight row) counts only when coherence is asked for by name.
    gain = make_frame(np.full((5, 4), 1e8), metric="gain")
    coh = make_frame(np.full((5, 4), 0.9), metric="coherence")
    rms = make_frame(geometric_values(5, 4, 1.0, seed=12))
    frame = pd.concat([gain, coh, rms], ignore_index=True)
    assert fitting.divergence_onset(frame) is None
    frame.loc[(frame["metric"] == "coherence") & (frame["step"] == 3), "value"] = np.nan
    assert fitting.divergence_onset(frame) is None
    assert fitting.divergence_onset(frame, metric="output_rms") is None
    assert fitting.divergence_onset(frame, metric=["gain", "coherence"]).step == 3
    frame.loc[(frame["metric"] == "gain") & (frame["step"] == 4), "value"] = np.inf
    # gain is not judged by default (a zero input gives a non-finite gain; a real blow-up
    # shows in output_rms), only when named.
    assert fitting.divergence_onset(frame) is None
    assert fitting.divergence_onset(frame, metric="gain").step == 4
    with pytest.raises(ValueError, match="metrics present"):
        fitting.divergence_onset(frame, metric="weight_norm")


# ---------------------------------------------------------------------------------
# depth_factor_crossing (the fixed-factor rule; the detector is tested in test_warning.py)
# ---------------------------------------------------------------------------------


def test_depth_factor_crossing_lead():
    # Per-layer factor rises linearly from 1.00 at step 0 by 0.01 per step (noise free),
    # so it first reaches 1.05 at step 5; the norm blows up (inf) at step 12.
    n_steps, n_layers = 15, 20
    f = 1.0 + 0.01 * np.arange(n_steps)
    values = 0.5 * f[:, None] ** np.arange(n_layers)[None, :]
    values[12:, 15:] = np.inf
    frame = make_frame(values)
    growth = fitting.depth_growth(frame)
    np.testing.assert_allclose(growth["factor"], f, rtol=1e-12)
    warning = fitting.depth_factor_crossing(frame, factor_threshold=1.05 - 1e-9)
    assert warning == fitting.FactorCrossing(
        warn_step=5, factor=pytest.approx(1.05), onset_step=12, lead=7
    )
    # Without divergence: onset and lead are None; a threshold never reached: None.
    calm = make_frame(values[:10])
    assert fitting.depth_factor_crossing(calm, 1.05 - 1e-9) == fitting.FactorCrossing(
        warn_step=5, factor=pytest.approx(1.05), onset_step=None, lead=None
    )
    assert fitting.depth_factor_crossing(frame, factor_threshold=2.0) is None


def test_depth_factor_crossing_min_layers():
    values = 0.5 * 1.2 ** np.arange(4.0)[None, :].repeat(3, axis=0)
    values[0, 1] = np.nan  # only 3 usable layers at step 0
    frame = make_frame(values)
    assert fitting.depth_factor_crossing(frame, 1.1).warn_step == 0
    assert fitting.depth_factor_crossing(frame, 1.1, min_layers=4).warn_step == 1


# ---------------------------------------------------------------------------------
# metric_table and errors
# ---------------------------------------------------------------------------------


def test_metric_table_depth_order():
    values = geometric_values(3, 4, 1.1, seed=13)
    frame = make_frame(values, layer_idx=np.array([2, 0, 3, 1]), names=["c", "a", "d", "b"])
    wide = fitting.metric_table(frame.iloc[::-1], "output_rms")
    assert wide.columns.tolist() == ["a", "b", "c", "d"]
    assert wide.index.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(wide.to_numpy(), values[:, [1, 3, 0, 2]])


def test_errors_name_the_problem():
    frame = make_frame(geometric_values(3, 4, 1.1))
    with pytest.raises(ValueError, match=r"missing columns \['layer_idx', 'value'\]"):
        fitting.depth_growth(frame.drop(columns=["value", "layer_idx"]))
    with pytest.raises(
        ValueError, match=r"not in the record table; metrics present: \['output_rms'\]"
    ):
        fitting.depth_growth(frame, metric="grad_norm")
    with pytest.raises(ValueError, match="empty"):
        fitting.depth_growth(frame.iloc[:0])
    with pytest.raises(ValueError, match="empty"):
        fitting.divergence_onset(frame.iloc[:0])
    with pytest.raises(ValueError, match="missing columns"):
        fitting.depth_factor_crossing(frame.drop(columns=["step"]))
    with pytest.raises(ValueError, match=r"call_idx=1.*present for it: \[0\]"):
        fitting.depth_growth(frame, call_idx=1)
    with pytest.raises(ValueError, match="unknown layer"):
        fitting.depth_growth(frame, layers=["block0.conv", "nope"])
    with pytest.raises(ValueError, match="more than one row"):
        fitting.depth_growth(pd.concat([frame, frame.iloc[:1]]))


def test_depth_growth_recovers_factor_of_scaled_orthogonal_network():
    """Recorder + depth_growth on a real network: layer k is f * Q_k with Q_k orthogonal, so
    ||h_k|| = f**k ||x|| exactly and the fitted per-layer factor must be f."""
    import torch
    from torch import nn

    from stability import Recorder

    factor, depth, width = 1.07, 24, 16
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        q, _ = torch.linalg.qr(torch.randn(width, width, dtype=torch.float64))
        layer = nn.Linear(width, width, bias=False).double()
        with torch.no_grad():
            layer.weight.copy_(factor * q)
        layers.append(layer)
    model = nn.Sequential(*layers)
    with Recorder(model, metrics=["output_rms", "gain"]) as rec:
        for _ in range(3):
            model(torch.randn(8, width, dtype=torch.float64))
            rec.step()
    frame = rec.to_frame()
    growth = fitting.depth_growth(frame, "output_rms")
    assert len(growth) == 3
    np.testing.assert_allclose(growth["factor"], factor, rtol=1e-9)
    np.testing.assert_allclose(frame.loc[frame["metric"] == "gain", "value"], factor, rtol=1e-9)
