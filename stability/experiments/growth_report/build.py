"""Reading a run and computing every fit of the growth report (nothing is drawn or written).

* **depth growth**, per step: the OLS fit ``log v_k = log c + k log f`` over the layers in
  depth order (``k`` the depth rank), giving the per-layer factor ``f = exp(slope)`` with
  its standard error and confidence band (:func:`stability.fitting.depth_growth`);
* **time growth**, per layer: the growth factor per optimizer step over the whole run and
  over a sliding window of ``window`` steps (:func:`stability.fitting.time_growth`);
* **divergence onset**: the first step, and the first layer in depth order at that step,
  with a non-finite value (any metric) or a norm beyond ``threshold``
  (:func:`stability.records.io.find_onset`, i.e. :func:`stability.fitting.divergence_onset`,
  the rule every entry point uses);
* **early warning**: the self-calibrating detector's first warning
  (:func:`stability.fitting.early_warning`, the one :class:`stability.Monitor` runs live),
  with its lead ``onset - warn_step``; it watches the loss too when the table has ``loss``
  rows and the ``output_rms`` jump alone (``WarningConfig(loss_ratio=None)``) otherwise;
* **mechanism**: the first step whose fitted depth factor reaches ``factor_threshold``
  (:func:`stability.fitting.depth_factor_crossing`), with its lead over the same onset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from stability import fitting
from stability.experiments.growth_report.config import COHERENCE, ReportConfig
from stability.records.io import (
    RunSelection,
    categorical,
    find_onset,
    find_records,
    load_metric,
    recorded_metrics,
    select_run,
)
from stability.records.schema import COLUMNS, LOSS_METRIC


@dataclass
class GrowthReport:
    """Everything a growth report shows, before it is drawn.

    Attributes:
        selection: The run and step range reported.
        config: The options used.
        recorded: Metrics recorded for the run.
        frame: The record-table rows of the metric (after the layer filter).
        layers: Layer names in depth order.
        growth: Depth growth per step (:func:`stability.fitting.depth_growth`).
        time_whole: Time growth per layer over the whole selection, depth order.
        time_window: Sliding time growth: one row per (layer, step), depth order.
        onset: Divergence onset or None.
        warning: The detector's early warning (:func:`stability.fitting.early_warning`) or
            None; its ``onset_step``/``lead`` refer to ``onset``.
        detector_note: How the detector ran (with or without the loss), or why it did not.
        crossing: The first crossing of ``config.factor_threshold`` by the fitted depth
            factor (the mechanism) or None; ``onset_step``/``lead`` refer to ``onset``.
        coherence: ``step, layer, layer_idx, value`` of row coherence for the first,
            middle and last layers (empty when coherence was not recorded).
    """

    selection: RunSelection
    config: ReportConfig
    recorded: list[str]
    frame: pd.DataFrame
    layers: list[str]
    growth: pd.DataFrame
    time_whole: pd.DataFrame
    time_window: pd.DataFrame
    onset: fitting.Onset | None
    warning: fitting.EarlyWarning | None
    detector_note: str
    crossing: fitting.FactorCrossing | None
    coherence: pd.DataFrame


def _time_growth(
    frame: pd.DataFrame, layers: Sequence[str], config: ReportConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole-run and sliding-window time growth of every layer, in depth order."""
    whole, window = [], []
    groups = dict(list(frame.groupby("layer", observed=True, sort=False)))
    for layer in layers:
        sub = groups[layer]
        args = (sub, layer, config.metric)
        whole.append(fitting.time_growth(*args, call_idx=config.call_idx))
        fits = fitting.time_growth(*args, call_idx=config.call_idx, window=config.window)
        fits.insert(1, "layer", layer)
        fits.insert(2, "layer_idx", int(sub["layer_idx"].min()))
        window.append(fits)
    whole_df = pd.concat(whole, ignore_index=True)
    whole_df.insert(1, "layer_idx", [int(groups[name]["layer_idx"].min()) for name in layers])
    return whole_df, pd.concat(window, ignore_index=True)


def _against(event, onset: fitting.Onset | None):
    """``event`` with ``onset_step`` and ``lead = onset - warn_step`` from the report's onset."""
    if event is None:
        return None
    onset_step = None if onset is None else onset.step
    lead = None if onset_step is None else onset_step - event.warn_step
    return replace(event, onset_step=onset_step, lead=lead)


def _detector_warning(
    selection: RunSelection,
    layers: Sequence[str],
    recorded: Sequence[str],
    config: ReportConfig,
    onset: fitting.Onset | None,
) -> tuple[fitting.EarlyWarning | None, str]:
    """The detector's warning over the reported layers (plus the loss), and how it ran.

    The detector watches ``output_rms`` (whatever metric the report fits) and, when the
    table has ``loss`` rows, the loss; without them it runs on the rms jump alone
    (``WarningConfig(loss_ratio=None)``). Its lead is measured against the report's onset.
    """
    watched = fitting.WarningConfig().metric
    if watched not in recorded:
        return None, f"not run: the detector watches {watched}, which was not recorded"
    has_loss = LOSS_METRIC in recorded
    wanted = [m for m in (watched, LOSS_METRIC, COHERENCE) if m in recorded]
    rows = selection.read(list(COLUMNS), ds.field("metric").isin(wanted)).astype(
        {"layer": str, "metric": str}
    )
    keep = rows["layer"].isin(list(layers)) | (rows["metric"] == LOSS_METRIC)
    options = {} if config.threshold is None else {"threshold": config.threshold}
    if not has_loss:
        options["loss_ratio"] = None
    try:
        found = fitting.early_warning(
            rows[keep.to_numpy()], fitting.WarningConfig(**options), call_idx=config.call_idx
        )
    except ValueError as error:
        return None, f"not run: {' '.join(str(error).split())}"
    note = (
        f"{watched} jump and loss ratio"
        if has_loss
        else f"no loss rows: {watched} jump alone (loss_ratio=None)"
    )
    return _against(found, onset), note


def _crossing(
    frame: pd.DataFrame, config: ReportConfig, onset: fitting.Onset | None
) -> fitting.FactorCrossing | None:
    """The depth-factor crossing, with its lead measured against the report's onset."""
    crossing = fitting.depth_factor_crossing(
        frame,
        config.factor_threshold,
        metric=config.metric,
        threshold=config.threshold,
        min_layers=config.min_layers,
        call_idx=config.call_idx,
    )
    return _against(crossing, onset)


def _ends_and_middle(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]])) if names else []


def _coherence(
    selection: RunSelection, layers: Sequence[str], recorded: Sequence[str]
) -> pd.DataFrame:
    """Row coherence of the first, middle and last reported layers that have it."""
    columns = ["step", "layer", "layer_idx", "value"]
    if COHERENCE not in recorded:
        return pd.DataFrame(columns=columns)
    expr = (ds.field("metric") == COHERENCE) & (ds.field("call_idx") == 0)
    rows = selection.read(columns, expr).astype({"layer": str})
    present = set(rows["layer"])
    chosen = _ends_and_middle([name for name in layers if name in present])
    rows = rows[rows["layer"].isin(chosen).to_numpy()]
    rank = rows["layer"].map({name: i for i, name in enumerate(chosen)})
    order = np.lexsort((rows["step"].to_numpy(), rank.to_numpy()))
    return rows.iloc[order][columns].reset_index(drop=True)


def build_report(
    source: str | os.PathLike | None = None, config: ReportConfig | None = None
) -> GrowthReport:
    """Read a run and compute every fit of the growth report.

    Args:
        source: A run directory holding ``records.parquet``, or a parquet record table
            (default ``config.source``).
        config: Options (defaults: ``output_rms``, every layer and step, call 0).

    Returns:
        The :class:`GrowthReport` (nothing is written).

    Raises:
        FileNotFoundError: When no record table is found.
        ValueError: On a malformed table, an ambiguous or unmatched run filter, a metric
            that was not recorded, a layer glob matching no layer, an empty step range.
    """
    config = ReportConfig() if config is None else config
    source = config.source if source is None else source
    if source is None:
        raise ValueError("no run given: pass a run directory or record table (source)")
    selection = select_run(find_records(source), config.where, config.steps)
    recorded = recorded_metrics(selection)
    onset_metrics = config.onset_metrics
    if onset_metrics is not None:
        unknown = [m for m in onset_metrics if m not in recorded]
        if unknown:
            raise ValueError(f"onset metric(s) {unknown} not recorded; recorded: {recorded}")
    frame = load_metric(selection, config.metric, config.call_idx, recorded)
    wide = fitting.metric_table(frame, config.metric, config.call_idx, layers=config.layers)
    layers = [str(name) for name in wide.columns]
    if config.layers is not None:
        frame = frame[frame["layer"].isin(layers).to_numpy()].copy()
        frame["layer"] = categorical(frame["layer"])
    growth = fitting.depth_growth(
        frame, config.metric, call_idx=config.call_idx, min_layers=config.min_layers
    )
    time_whole, time_window = _time_growth(frame, layers, config)
    onset = find_onset(selection, config.threshold, metrics=onset_metrics, layers=config.layers)
    warning, note = _detector_warning(selection, layers, recorded, config, onset)
    return GrowthReport(
        selection=selection,
        config=config,
        recorded=recorded,
        frame=frame,
        layers=layers,
        growth=growth,
        time_whole=time_whole,
        time_window=time_window,
        onset=onset,
        warning=warning,
        detector_note=note,
        crossing=_crossing(frame, config, onset),
        coherence=_coherence(selection, layers, recorded),
    )
