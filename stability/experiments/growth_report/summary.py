"""The growth report's numbers as JSON and as a terminal table; writing every file; ``run``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stability import fitting
from stability.experiments.growth_report.build import GrowthReport, build_report
from stability.experiments.growth_report.config import (
    COHERENCE,
    PANELS,
    REPORT_PNG,
    SUMMARY_JSON,
    TIME_WINDOW_FILE,
    ReportConfig,
    check_out_dir,
)
from stability.experiments.growth_report.figure import draw_report
from stability.records.io import format_run
from stability.records.runs import jsonable


def _factor_stats(growth: pd.DataFrame, factor_threshold: float) -> dict[str, Any]:
    fitted = growth[np.isfinite(growth["factor"].to_numpy())]
    stats: dict[str, Any] = {"n_steps": len(growth), "n_fitted": len(fitted)}
    if fitted.empty:
        return stats
    factor = fitted["factor"].to_numpy()
    steps = fitted["step"].to_numpy()
    stats.update(
        median=float(np.median(factor)),
        mean=float(factor.mean()),
        min=float(factor.min()),
        min_step=int(steps[factor.argmin()]),
        max=float(factor.max()),
        max_step=int(steps[factor.argmax()]),
        first={"step": int(steps[0]), "factor": float(factor[0])},
        last={"step": int(steps[-1]), "factor": float(factor[-1])},
        fraction_at_or_above_threshold=float(np.mean(factor >= factor_threshold)),
    )
    return stats


def _time_summary(report: GrowthReport) -> list[dict[str, Any]]:
    out = []
    window = report.time_window
    for row in report.time_whole.to_dict("records"):
        fits = window[(window["layer"] == row["layer"]).to_numpy()]
        factor = fits["factor"].to_numpy()
        best = int(np.nanargmax(factor)) if np.isfinite(factor).any() else None
        out.append(
            {
                "layer": row["layer"],
                "layer_idx": row["layer_idx"],
                "factor_per_step": row["factor"],
                "factor_low": row["factor_low"],
                "factor_high": row["factor_high"],
                "doubling_steps": row["doubling_steps"],
                "n_points": row["n_points"],
                "window_max_factor": None if best is None else factor[best],
                "window_max_step": None if best is None else fits["step"].iloc[best],
            }
        )
    return out


def _onset_dict(onset: fitting.Onset | None) -> dict[str, Any] | None:
    if onset is None:
        return None
    return {**asdict(onset), "value_text": repr(onset.value)}


def summarize(report: GrowthReport, files: Sequence[Path] = ()) -> dict[str, Any]:
    """The numbers of the report as a JSON-ready dict (NaN and infinities become null)."""
    cfg = report.config
    steps = report.frame["step"].to_numpy()
    summary = {
        "input": str(report.selection.path.resolve()),
        "filter": {
            "run": dict(report.selection.run),
            "steps": list(cfg.steps),
            "layers": cfg.layers,
            "call_idx": cfg.call_idx,
        },
        "metric": cfg.metric,
        "recorded_metrics": report.recorded,
        "n_rows": len(report.frame),
        "n_steps": int(len(np.unique(steps))),
        "n_layers": len(report.layers),
        "step_first": int(steps.min()),
        "step_last": int(steps.max()),
        "layers": report.layers,
        "settings": {
            "factor_threshold": cfg.factor_threshold,
            "divergence_threshold": cfg.threshold,
            "window": cfg.window,
            "min_layers": cfg.min_layers,
            "onset_metrics": None if cfg.onset_metrics is None else list(cfg.onset_metrics),
        },
        "depth_growth": _factor_stats(report.growth, cfg.factor_threshold),
        "onset": _onset_dict(report.onset),
        "detector_warning": None if report.warning is None else asdict(report.warning),
        "detector": report.detector_note,
        "factor_crossing": None if report.crossing is None else asdict(report.crossing),
        "time_growth": _time_summary(report),
        "coherence_recorded": COHERENCE in report.recorded,
        "files": [str(p) for p in files],
    }
    return jsonable(summary)


def _lead(lead: int | None) -> str:
    return "no onset" if lead is None else f"lead {lead} steps"


def format_summary(report: GrowthReport) -> str:
    """A short terminal table of the report's headline numbers."""
    s = summarize(report)
    dg = s["depth_growth"]
    run = s["filter"]["run"]
    rows = [
        ("input", s["input"] + (f" [{format_run(run)}]" if run else "")),
        ("metric", f"{s['metric']}: {s['n_layers']} layers x {s['n_steps']} steps"),
        ("steps fitted", f"{dg['n_fitted']} / {dg['n_steps']}"),
    ]
    if dg["n_fitted"]:
        rows += [
            ("median factor", f"{dg['median']:.4f} per layer"),
            ("max factor", f"{dg['max']:.4f} at step {dg['max_step']}"),
        ]
    onset, warning, crossing = report.onset, report.warning, report.crossing
    rows.append(
        (
            "onset",
            "none"
            if onset is None
            else f"step {onset.step}, layer {onset.layer!r} (idx {onset.layer_idx}), "
            f"{onset.metric} = {onset.value:.3g} ({onset.reason})",
        )
    )
    if warning is None:
        rows.append(("detector warning", f"none ({report.detector_note})"))
    else:
        rows.append(
            (
                "detector warning",
                f"step {warning.warn_step}, {_lead(warning.lead)}, {warning.regime} regime, "
                f"layer {warning.layer!r} jumped x{warning.jump:.3g} ({report.detector_note})",
            )
        )
    thr = report.config.factor_threshold
    if crossing is None:
        rows.append((f"factor >= {thr:g}", "never (the mechanism: depth growth per layer)"))
    else:
        rows.append(
            (
                f"factor >= {thr:g}",
                f"step {crossing.warn_step} (factor {crossing.factor:.4f}), {_lead(crossing.lead)}",
            )
        )
    fast = [t for t in s["time_growth"] if t["factor_per_step"] is not None]
    if fast:
        top = max(fast, key=lambda t: t["factor_per_step"])
        rows.append(
            ("fastest in time", f"layer {top['layer']!r}: x{top['factor_per_step']:.4f}/step")
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def report_files(out: str | os.PathLike) -> list[Path]:
    """Every file :func:`write_report` writes into ``out``, PNG first."""
    png = Path(out) / REPORT_PNG
    csvs = [png.with_name(f"{png.stem}_{panel}.csv") for panel in PANELS]
    return [png, *csvs, png.with_name(TIME_WINDOW_FILE), png.with_name(SUMMARY_JSON)]


def default_out_dir(report: GrowthReport) -> Path:
    """``<run dir>/growth_report``, plus ``key=value_...`` when the table holds run keys."""
    out = report.selection.path.parent / "growth_report"
    run = report.selection.run
    return out / "_".join(f"{k}={v}" for k, v in run.items()) if run else out


def write_report(
    report: GrowthReport, out: str | os.PathLike | None = None, *, force: bool = False
) -> list[Path]:
    """Draw the figure and write its CSVs, the sliding time-growth fits and the summary.

    Args:
        report: From :func:`build_report`.
        out: Output directory (created); default :func:`default_out_dir`.
        force: Overwrite existing report files.

    Returns:
        The files written (see :func:`report_files`).

    Raises:
        FileExistsError: When a report file exists in ``out`` and ``force`` is False.
        NotADirectoryError: When ``out`` or a parent of it is a file.
    """
    out = default_out_dir(report) if out is None else Path(out)
    check_out_dir(out)
    files = report_files(out)
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; use --force (force=True) to overwrite")
    draw_report(report, files[0])
    report.time_window.to_parquet(files[-2], index=False)
    with open(files[-1], "w") as fh:
        json.dump(summarize(report, files), fh, indent=2, allow_nan=False)
        fh.write("\n")
    return files


@dataclass(frozen=True)
class ReportResult:
    """What :func:`run` produced: the report, its folder and the files written."""

    report: GrowthReport
    out: Path
    files: list[Path]


def run(config: ReportConfig) -> ReportResult:
    """The whole growth report of ``config.source``: read, fit, draw, write.

    Writes into ``config.out`` (default :func:`default_out_dir`); existing report files are
    replaced only with ``config.force``.

    Raises:
        ValueError, FileNotFoundError: As :func:`build_report`.
        FileExistsError, NotADirectoryError: As :func:`write_report`.
    """
    report = build_report(config.source, config)
    out = default_out_dir(report) if config.out is None else Path(config.out)
    return ReportResult(report, out, write_report(report, out, force=config.force))
