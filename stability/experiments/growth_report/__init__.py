"""Growth report for a recorded run: does the signal grow with depth or time, when does it blow up?

The library half of ``analyses/norm_growth.py``. It reads the record table that
:meth:`stability.Recorder.save` wrote (``records.parquet``), keeps one run, one metric and
one call index, and answers with :mod:`stability.fitting`:

* **depth growth**, per step: the OLS fit ``log v_k = log c + k log f`` over the layers in
  depth order (``k`` the depth rank), giving the per-layer factor ``f = exp(slope)`` with
  its standard error and confidence band (:func:`stability.fitting.depth_growth`);
* **time growth**, per layer: the growth factor per optimizer step over the whole run and
  over a sliding window of ``window`` steps (:func:`stability.fitting.time_growth`);
* **divergence onset**: the first step, and the first layer in depth order at that step,
  with a non-finite value (any metric) or a norm beyond ``threshold``
  (:func:`stability.fitting.divergence_onset`);
* **early warning**: the self-calibrating detector's warning and its lead over the onset
  (:func:`stability.fitting.early_warning`; without ``loss`` rows it runs on the
  ``output_rms`` jump alone, ``WarningConfig(loss_ratio=None)``, and the report says so);
* **mechanism**: the first step whose fitted depth factor reaches ``factor_threshold``,
  with its lead over the same onset (:func:`stability.fitting.depth_factor_crossing`).

:func:`run` (``ReportConfig(source=...)``) builds and writes it all; :func:`write_report`
draws ``growth_report.png`` (four panels, each with the CSV of exactly
the numbers it draws), ``growth_time_window.parquet`` (the sliding time-growth fits, one
row per layer and step) and ``growth_summary.json``.

Reading (:mod:`stability.records.io`) scales to tables of many millions of rows: every
read selects only the columns it needs and pushes the run, step-range and metric filters
down to pyarrow, the ``layer`` and ``metric`` strings are read dictionary-encoded (pandas
categoricals), and the scans that look for the onset or list the runs and metrics go batch
by batch, so the memory held is that of the one metric being reported (plus a row group).

Record tables may carry key columns in addition to the standard ones
(:data:`stability.records.schema.COLUMNS`): the deep linear sweep stores many runs in one file
with ``norm, lr, seed`` columns, and a Recorder with ``run_dim`` adds ``run``. Every such
column is a *run key*; a report covers exactly one run, picked with ``where``
(``"norm=wn,lr=0.1,seed=0"``; values are parsed to the column's type and need only
identify one run).

Modules: :mod:`.config` (``ReportConfig``), :mod:`.build` (``build_report``), :mod:`.panels`
(the data of each panel), :mod:`.figure` (drawing), :mod:`.summary` (JSON, terminal table,
``write_report``, ``run``).
"""

from stability.lazy import lazy_exports

__all__ = [
    "MAX_HEATMAP_COLUMNS",
    "PANELS",
    "GrowthReport",
    "ReportConfig",
    "ReportResult",
    "build_report",
    "check_out_dir",
    "choose_profile_steps",
    "default_out_dir",
    "draw_report",
    "factor_floor",
    "format_summary",
    "heatmap_frame",
    "parse_steps",
    "profile_frame",
    "report_files",
    "run",
    "summarize",
    "write_report",
]

# Each name loads on first use, so that parsing a report's arguments stays instant.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "GrowthReport": "stability.experiments.growth_report.build",
        "build_report": "stability.experiments.growth_report.build",
        "MAX_HEATMAP_COLUMNS": "stability.experiments.growth_report.config",
        "PANELS": "stability.experiments.growth_report.config",
        "ReportConfig": "stability.experiments.growth_report.config",
        "check_out_dir": "stability.experiments.growth_report.config",
        "parse_steps": "stability.experiments.growth_report.config",
        "draw_report": "stability.experiments.growth_report.figure",
        "factor_floor": "stability.experiments.growth_report.figure",
        "choose_profile_steps": "stability.experiments.growth_report.panels",
        "heatmap_frame": "stability.experiments.growth_report.panels",
        "profile_frame": "stability.experiments.growth_report.panels",
        "ReportResult": "stability.experiments.growth_report.summary",
        "default_out_dir": "stability.experiments.growth_report.summary",
        "format_summary": "stability.experiments.growth_report.summary",
        "report_files": "stability.experiments.growth_report.summary",
        "run": "stability.experiments.growth_report.summary",
        "summarize": "stability.experiments.growth_report.summary",
        "write_report": "stability.experiments.growth_report.summary",
    },
)
