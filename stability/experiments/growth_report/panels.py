"""The numbers behind each panel of the growth-report figure (one tidy frame per panel)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from stability import fitting
from stability.experiments.growth_report.config import MAX_HEATMAP_COLUMNS


def _depth_rank(layer_idx: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rank of each ``layer_idx`` among the distinct values of ``reference`` (as fitted)."""
    return np.searchsorted(np.unique(reference), layer_idx)


def heatmap_frame(
    frame: pd.DataFrame, layers: Sequence[str], max_columns: int = MAX_HEATMAP_COLUMNS
) -> pd.DataFrame:
    """Panel (a): mean ``log10(value)`` per (step column, layer).

    The recorded steps, in order, are cut into consecutive bins of ``steps_per_column``
    recorded steps (1 unless there are more than ``max_columns`` steps), one heatmap
    column each. Values that are non-finite or <= 0 have no logarithm; they are counted
    in ``n_nonfinite`` (the cell is marked when it holds any) and left out of the mean.

    Returns:
        Columns ``column, step_first, step_last, steps_per_column, layer, layer_idx,
        depth, log10_mean, n_values, n_nonfinite`` (one row per non-empty cell).
    """
    steps = np.unique(frame["step"].to_numpy())
    size = max(1, math.ceil(len(steps) / max_columns))
    column = np.searchsorted(steps, frame["step"].to_numpy()) // size
    values = frame["value"].to_numpy(dtype=np.float64)
    ok = np.isfinite(values) & (values > 0)
    log10 = np.full(len(values), np.nan)
    np.log10(values, out=log10, where=ok)
    depth = pd.Categorical(frame["layer"], categories=list(layers)).codes
    cells = (
        pd.DataFrame({"column": column, "depth": depth, "log10": log10, "bad": ~ok})
        .groupby(["column", "depth"], as_index=False)
        .agg(log10_mean=("log10", "mean"), n_values=("bad", "size"), n_nonfinite=("bad", "sum"))
    )
    col = cells["column"].to_numpy()
    first_idx = frame.groupby("layer", observed=True)["layer_idx"].min()
    layer_idx = np.array([first_idx[name] for name in layers], dtype=np.int64)
    d = cells["depth"].to_numpy()
    out = pd.DataFrame(
        {
            "column": col,
            "step_first": steps[col * size],
            "step_last": steps[np.minimum((col + 1) * size, len(steps)) - 1],
            "steps_per_column": size,
            "layer": np.asarray(layers, dtype=object)[d],
            "layer_idx": layer_idx[d],
            "depth": d,
            "log10_mean": cells["log10_mean"].to_numpy(),
            "n_values": cells["n_values"].to_numpy(),
            "n_nonfinite": cells["n_nonfinite"].to_numpy(dtype=np.int64),
        }
    )
    return out


def choose_profile_steps(
    growth: pd.DataFrame,
    warning: fitting.EarlyWarning | fitting.FactorCrossing | None = None,
    onset: fitting.Onset | None = None,
    count: int = 4,
) -> list[int]:
    """Steps for panel (c), sorted: the first fitted step, the warning step, the last fitted
    step before the onset (the last fitted step without an onset), topped up with evenly
    spaced fitted steps to ``count``.

    Steps with a finite fitted factor are preferred; without any, all steps are used.
    """
    fitted = growth["step"].to_numpy()[np.isfinite(growth["factor"].to_numpy())]
    pool = fitted if len(fitted) else growth["step"].to_numpy()
    if len(pool) == 0:
        return []
    before = pool if onset is None else pool[pool < onset.step]
    spread = before if len(before) else pool
    marked = [pool[0], spread[-1]]
    if warning is not None:
        marked.append(warning.warn_step)
    chosen = dict.fromkeys(int(s) for s in marked)
    for i in np.linspace(0, len(spread) - 1, count).round().astype(np.int64):
        if len(chosen) >= count:
            break
        chosen.setdefault(int(spread[i]))
    return sorted(chosen)


def profile_frame(frame: pd.DataFrame, growth: pd.DataFrame, steps: Sequence[int]) -> pd.DataFrame:
    """Panel (c): the metric against depth at ``steps``, with the fitted line.

    ``depth`` is the rank of ``layer_idx`` among the reported layers (the abscissa of
    :func:`stability.fitting.depth_growth`) and ``fitted = exp(intercept + slope * depth)``
    at that step (NaN where the step has no fit).

    Returns:
        Columns ``step, layer, layer_idx, depth, value, fitted, factor``.
    """
    sub = frame[frame["step"].isin(list(steps)).to_numpy()]
    depth = _depth_rank(sub["layer_idx"].to_numpy(), frame["layer_idx"].to_numpy())
    fit = growth.set_index("step").reindex(sub["step"].to_numpy())
    slope, intercept = fit["slope"].to_numpy(), fit["intercept"].to_numpy()
    out = pd.DataFrame(
        {
            "step": sub["step"].to_numpy(),
            "layer": sub["layer"].astype(str).to_numpy(),
            "layer_idx": sub["layer_idx"].to_numpy(),
            "depth": depth,
            "value": sub["value"].to_numpy(dtype=np.float64),
            "fitted": np.exp(intercept + slope * depth),
            "factor": fit["factor"].to_numpy(),
        }
    )
    return out.sort_values(["step", "depth"], kind="stable").reset_index(drop=True)
