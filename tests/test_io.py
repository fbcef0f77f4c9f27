"""Tests of :mod:`stability.records.io`: selecting a run of a saved table and finding the
divergence onset without loading it. The reference is :func:`fitting.divergence_onset` on
the whole table loaded with pandas."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from stability import fitting
from stability.records import io
from stability.records.schema import COLUMNS


def random_table(rng: np.random.Generator, steps: int = 12, layers: int = 5) -> pd.DataFrame:
    """A record table with a few NaN/inf/huge values scattered over every metric."""
    metrics = ["output_norm", "output_rms", "gain", "grad_norm", "coherence", "weight_norm"]
    rows = [
        (t, f"l{k}", k, 0, m, float(rng.uniform(0.5, 2.0)))
        for t in range(steps)
        for k in range(layers)
        for m in metrics
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    hits = rng.choice(len(frame), size=int(rng.integers(0, 6)), replace=False)
    frame.loc[hits, "value"] = rng.choice([math.nan, math.inf, 5e6, 2e7], size=len(hits))
    return frame


def same(a: fitting.Onset | None, b: fitting.Onset | None) -> bool:
    """Equal onsets, a NaN value equal to a NaN value."""
    if a is None or b is None:
        return a is b
    nan_both = math.isnan(a.value) and math.isnan(b.value)
    return a == b or (
        nan_both and dataclasses.replace(a, value=0) == dataclasses.replace(b, value=0)
    )


@pytest.mark.parametrize("seed", range(25))
def test_find_onset_equals_divergence_onset_on_the_loaded_table(tmp_path, seed):
    rng = np.random.default_rng(seed)
    frame = random_table(rng)
    path = tmp_path / "records.parquet"
    frame.to_parquet(path, index=False)
    selection = io.select_run(path)
    for threshold in (1e6, 1e7, None):
        assert same(io.find_onset(selection, threshold), fitting.divergence_onset(frame, threshold))
        for metrics in (["grad_norm"], ["coherence", "output_rms"]):
            present = frame[frame["metric"].isin(metrics)]
            assert same(
                io.find_onset(selection, threshold, metrics=metrics),
                fitting.divergence_onset(present, threshold, metric=metrics),
            )


def test_nan_coherence_early_does_not_hide_a_later_divergence(tmp_path):
    """A zero weight row gives NaN coherence from step 0; that is not divergence, and it
    must not mask the inf output at step 7 (the growth report once said "no divergence")."""
    frame = random_table(np.random.default_rng(0), layers=3)
    frame["value"] = 1.0
    frame.loc[frame["metric"] == "coherence", "value"] = math.nan
    at = (frame["step"] == 7) & (frame["layer"] == "l1") & (frame["metric"] == "output_rms")
    frame.loc[at, "value"] = math.inf
    path = tmp_path / "records.parquet"
    frame.to_parquet(path, index=False)
    onset = io.find_onset(io.select_run(path))
    assert (onset.step, onset.layer, onset.metric) == (7, "l1", "output_rms")


def test_select_run_names_the_runs_when_ambiguous(tmp_path):
    frame = random_table(np.random.default_rng(1))
    both = pd.concat([frame.assign(norm="wn", lr=0.1), frame.assign(norm="bn", lr=0.1)])
    path = tmp_path / "records.parquet"
    both.to_parquet(path, index=False)
    with pytest.raises(ValueError, match="holds 2 runs.*norm=bn"):
        io.select_run(path)
    assert io.select_run(path, "norm=wn,lr=0.1").run == {"norm": "wn", "lr": 0.1}
    with pytest.raises(ValueError, match="not run keys"):
        io.select_run(path, "seed=0")
