r"""Scoring the detector: signals once per run, then every threshold triple at no extra cost.

The detector's signals (:func:`stability.fitting.warning_signals`: the rms jump ``J(t)``,
the loss ratio ``L(t)``, the depth-factor rise) do not depend on its thresholds nor on its
warm-up (the warm-up only decides from which record on a signal may fire), so each run is
scanned once and every ``(jump, loss_ratio, warmup)`` of :data:`JUMPS` x :data:`LOSS_RATIOS`
x :data:`WARMUPS` is scored from the same signals. For one triple and one run:

* the run **diverged** when :func:`stability.fitting.divergence_onset` (the project's one
  divergence rule) finds an onset (``output_rms`` beyond ``threshold`` or any non-finite
  value, the loss included) within the run's steps;
* a run without an onset is **undecided** when its largest ``output_rms`` at the last
  record exceeds ``sqrt(threshold)`` (past half the way to the threshold on a log scale:
  its fate is not known at the end of the run), **stable** otherwise; undecided runs are
  left out of every rate and counted in the ``undecided`` column;
* the warning is the first step with at least ``warmup`` earlier records, ``J >= jump``
  and ``L >= loss_ratio``;
* a diverged run is **caught** when the warning comes strictly before the onset, with
  ``lead = onset - warn`` (>= 1); a warning at or after the onset, or none, is a miss
  (lead 0 in the lead statistics, so that misses pull the median down);
* a stable run that got a warning is a **false alarm**.

The **regime** of a diverged run is the detector's own label at the last record before the
onset (:func:`stability.fitting.detector.regime_of` of the depth-factor rise): ``abrupt``
or ``slow`` (``unknown`` without a depth fit, e.g. an onset at the first records).

Per workload and regime: ``recall`` = caught / diverged, ``false_alarms`` = false alarms /
stable runs of the workload, the median and 10th-percentile lead over diverged runs, and
the **ceiling**: the best median lead that any triple of the grid reaches on the same runs
with at most ``MAX_FALSE_ALARMS`` false alarms (an oracle that may pick its thresholds per
workload and regime on the runs it is scored on).
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pandas as pd

from stability import fitting
from stability.experiments.warning_benchmark.workloads import BenchRun
from stability.fitting.detector import WarningConfig, regime_of

JUMPS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0)
#: Earlier records needed before a warning (the detector's ``warmup``).
WARMUPS: tuple[int, ...] = (1, 2, 3, 5, 10)
#: 0 means no loss condition (a positive loss ratio is always >= 0; NaN fails it).
LOSS_RATIOS: tuple[float, ...] = (0.0, 1.1, 1.25, 1.5, 2.0, 3.0)
MAX_FALSE_ALARMS = 0.02


def run_signals(run: BenchRun, threshold: float) -> dict:
    """The signals of one run, scanned once with ``warmup=1`` and ``loss_ratio=None``.

    ``records`` is each step's count of earlier records, so that any warm-up ``w`` is
    ``records >= w`` (the detector's state does not depend on the warm-up).
    """
    config = WarningConfig(loss_ratio=None, warmup=1, threshold=threshold)
    signals = fitting.warning_signals(run.frame, config)
    onset = fitting.divergence_onset(run.frame, threshold)
    onset_step = None if onset is None else onset.step
    if onset_step is not None:
        before = signals[signals["step"] < onset_step]
        rise = float(before["factor_rise"].iloc[-1]) if len(before) else math.nan
        regime = regime_of(rise, config.abrupt_rise)
    else:
        regime = "undecided" if _last_peak(run.frame) > math.sqrt(threshold) else "stable"
    return {
        "workload": run.workload,
        "lr": run.lr,
        "seed": run.seed,
        "split": run.split,
        "onset": onset_step,
        "regime": regime,
        "step": signals["step"].to_numpy(np.int64),
        "records": np.arange(len(signals), dtype=np.int64),
        "jump": signals["jump"].to_numpy(np.float64),
        "loss_ratio": signals["loss_ratio"].to_numpy(np.float64),
    }


def _last_peak(frame: pd.DataFrame) -> float:
    """The largest ``output_rms`` at the run's last recorded step (NaN without one)."""
    rms = frame[frame["metric"].to_numpy() == "output_rms"]
    if rms.empty:
        return math.nan
    return float(rms[rms["step"] == rms["step"].max()]["value"].max())


def first_warning(signals: dict, jump: float, loss_ratio: float, warmup: int) -> int | None:
    """The step of the first warning at these thresholds, or None (NaN never passes)."""
    with np.errstate(invalid="ignore"):
        fires = (signals["records"] >= warmup) & (signals["jump"] >= jump)
        if loss_ratio > 0:
            fires &= signals["loss_ratio"] >= loss_ratio
    hits = np.flatnonzero(fires)
    return int(signals["step"][hits[0]]) if len(hits) else None


def outcomes(signals: list[dict], jump: float, loss_ratio: float, warmup: int) -> pd.DataFrame:
    """One row per run at one triple: warn step, caught, false alarm, lead (undecided too)."""
    rows = []
    for s in signals:
        warn = first_warning(s, jump, loss_ratio, warmup)
        diverged = s["onset"] is not None
        caught = diverged and warn is not None and warn < s["onset"]
        rows.append(
            {
                "workload": s["workload"],
                "lr": s["lr"],
                "seed": s["seed"],
                "split": s["split"],
                "regime": s["regime"],
                "onset": s["onset"],
                "warn": warn,
                "diverged": diverged,
                "caught": caught,
                "undecided": s["regime"] == "undecided",
                "false_alarm": s["regime"] == "stable" and warn is not None,
                "lead": (s["onset"] - warn) if caught else 0,
            }
        )
    return pd.DataFrame(rows)


def _rates(frame: pd.DataFrame) -> tuple[float, float, float, float]:
    """recall, false-alarm rate, median lead, p10 lead of one group (NaN when undefined)."""
    diverged = frame[frame["diverged"]]
    stable = frame[~frame["diverged"]]
    recall = float(diverged["caught"].mean()) if len(diverged) else math.nan
    alarms = float(stable["false_alarm"].mean()) if len(stable) else 0.0
    leads = diverged["lead"].to_numpy(np.float64)
    median = float(np.median(leads)) if len(leads) else math.nan
    p10 = float(np.percentile(leads, 10)) if len(leads) else math.nan
    return recall, alarms, median, p10


def grid_scores(signals: list[dict]) -> pd.DataFrame:
    """Every threshold triple scored per workload and regime (columns of :func:`score`)."""
    frames = []
    for jump, loss_ratio, warmup in product(JUMPS, LOSS_RATIOS, WARMUPS):
        table = score(outcomes(signals, jump, loss_ratio, warmup))
        table.insert(0, "warmup", warmup)
        table.insert(0, "loss_ratio", loss_ratio)
        table.insert(0, "jump", jump)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def score(runs: pd.DataFrame) -> pd.DataFrame:
    """Per workload and regime of diverged runs: runs, diverged, recall, false alarms, leads.

    ``runs`` counts the workload's runs of that regime plus its stable runs (the runs the
    false-alarm rate is over); ``undecided`` the workload's runs left out (no onset, fate
    unknown at the end); a workload without a diverged run gets a ``none`` row.
    """
    rows = []
    for workload, all_runs in runs.groupby("workload", sort=False):
        undecided = int(all_runs["undecided"].sum())
        group = all_runs[~all_runs["undecided"].to_numpy(bool)]
        stable = group[~group["diverged"]]
        regimes = [r for r in ("abrupt", "slow", "unknown") if (group["regime"] == r).any()]
        for regime in regimes or ["none"]:
            part = pd.concat([group[group["regime"] == regime], stable])
            recall, alarms, median, p10 = _rates(part)
            rows.append(
                {
                    "workload": workload,
                    "regime": regime,
                    "runs": len(part),
                    "diverged": int(part["diverged"].sum()),
                    "undecided": undecided,
                    "recall": recall,
                    "false_alarms": alarms,
                    "median_lead": median,
                    "p10_lead": p10,
                }
            )
    return pd.DataFrame(rows)


def ceiling(grid: pd.DataFrame) -> pd.DataFrame:
    """Per workload and regime: the best median lead of any triple with <= 2% false alarms."""
    allowed = grid[grid["false_alarms"] <= MAX_FALSE_ALARMS]
    best = allowed.groupby(["workload", "regime"], sort=False)["median_lead"].max()
    return best.rename("ceiling_lead").reset_index()


def tune(grid: pd.DataFrame) -> tuple[float, float, int]:
    """The one ``(jump, loss_ratio, warmup)`` for every workload, chosen on the tuning grid.

    Among triples whose false alarms are <= 2% on every workload, the largest worst-case
    recall over workloads and regimes, then the largest summed median lead, then the
    larger thresholds and warm-up (fewer alarms on unseen runs). Without such a triple,
    the fewest worst-case false alarms first.
    """
    keys = ["jump", "loss_ratio", "warmup"]
    per_pair = grid.groupby(keys).agg(
        worst_alarms=("false_alarms", "max"),
        worst_recall=("recall", lambda r: float(np.nanmin(r)) if r.notna().any() else 0.0),
        total_lead=("median_lead", lambda v: float(np.nansum(v))),
    )
    per_pair = per_pair.reset_index()
    per_pair["ok"] = per_pair["worst_alarms"] <= MAX_FALSE_ALARMS
    order = per_pair.sort_values(
        ["ok", "worst_recall", "total_lead", "jump", "loss_ratio", "warmup"],
        ascending=[False] * 6,
        kind="stable",
    )
    if not bool(order["ok"].iloc[0]):
        order = per_pair.sort_values(
            ["worst_alarms", "worst_recall", "total_lead"],
            ascending=[True, False, False],
            kind="stable",
        )
    best = order.iloc[0]
    return float(best["jump"]), float(best["loss_ratio"]), int(best["warmup"])
