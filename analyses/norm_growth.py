#!/usr/bin/env python
"""Growth report for any recorded run: fits, heatmap, early warning.

Is the network's signal growing exponentially with depth or with time, and when does it
blow up? Point this at a run directory (anything holding the ``records.parquet`` written by
``Recorder.save``) or at the parquet file itself:

    python analyses/norm_growth.py runs/my_run
    python analyses/norm_growth.py runs/deep_linear/x/records.parquet --where norm=wn,lr=0.1,seed=0
    python analyses/norm_growth.py runs/resnet --metric grad_norm --layers 'layer4.*' --steps 0:5000

Writes into ``--out`` (default ``<run dir>/growth_report/``, plus a ``key=value_...``
folder for tables that hold several runs; existing report files are only replaced with
``--force``): ``growth_report.png`` with the CSV behind each panel, the sliding
time-growth fits ``growth_time_window.parquet`` and ``growth_summary.json``; prints a short
table. Errors are one line on stderr with exit status 2. The work is done by
:mod:`stability.experiments.growth_report`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stability.experiments.cli import OneLineParser, config_from_args, one_line, positive_float
from stability.experiments.growth_report.config import ReportConfig, parse_steps


def _threshold(text: str) -> float | None:
    return None if text.lower() in ("none", "inf") else positive_float(text)


def _steps(text: str) -> tuple[int | None, int | None]:
    try:
        return parse_steps(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _metric_list(text: str) -> tuple[str, ...] | None:
    if text.strip().lower() == "all":
        return None
    return tuple(m.strip() for m in text.split(",") if m.strip()) or None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    default = ReportConfig()
    p = OneLineParser(
        prog="norm_growth.py",
        description="Depth- and time-growth fits, divergence onset and early warning for a "
        "run recorded with stability.Recorder.",
    )
    add = p.add_argument
    add("run", type=Path, help="run directory holding records.parquet, or the parquet file")
    add(
        "--metric",
        default=default.metric,
        help="metric to fit: output_rms (default), output_norm, grad_norm, gain, coherence",
    )
    add("--layers", default=None, help="glob on layer names, e.g. 'layer4.*' (default: all)")
    add("--steps", type=_steps, default=(None, None), help="steps A:B, A <= step < B (all)")
    add("--where", default=None, help="pick one run of a multi-run table: norm=wn,lr=0.1,seed=0")
    add("--call-idx", type=int, default=default.call_idx, help="call of each module (0)")
    add(
        "--factor-threshold",
        type=positive_float,
        default=default.factor_threshold,
        help="early warning when the fitted per-layer depth factor reaches this (%(default)s)",
    )
    add(
        "--threshold",
        type=_threshold,
        default=default.threshold,
        help="divergence when a norm exceeds this, %(default)g ('none': non-finite only)",
    )
    add("--window", type=int, default=default.window, help="time-growth window, steps (20)")
    add("--min-layers", type=int, default=default.min_layers, help="layers per depth fit (3)")
    add(
        "--onset-metrics",
        type=_metric_list,
        default=None,
        help="comma-separated metrics searched for the divergence onset (default: all)",
    )
    add("--out", type=Path, default=None, help="output folder (<run dir>/growth_report)")
    add("--force", action="store_true", help="overwrite existing report files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report; returns the exit status (0, or 2 on an error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return int(done.code or 0)
    from stability.experiments.growth_report import format_summary, run  # pandas, scipy

    try:  # --threshold none means "non-finite only", so it is passed even when None
        config = config_from_args(ReportConfig, args, source=args.run, threshold=args.threshold)
        result = run(config)
    except (ValueError, OSError) as error:  # bad table/filter, missing run, --out clashes
        print(f"norm_growth.py: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(f"growth report -> {result.out}")
    print(format_summary(result.report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
