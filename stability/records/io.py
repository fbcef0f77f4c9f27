"""Locating and reading a saved record table, one run and one metric at a time.

A record table is a parquet file written by :meth:`stability.Recorder.save`, or a folder of
parquet parts (``records.parquet/`` of a training run), possibly holding several runs told
apart by extra key columns (``norm, lr, seed`` of the deep linear sweep, ``run`` of a
stacked Recorder, ``rank`` under DDP). Only the columns and rows needed are read
(pyarrow column selection and filters), so tables of millions of rows stay cheap.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from stability import fitting
from stability.records.schema import COLUMNS, NOT_DIVERGENCE_METRICS, THRESHOLD_METRICS

RECORDS_NAME = "records.parquet"
_STANDARD = frozenset(COLUMNS)
_DICTIONARY_COLUMNS = ["layer", "metric"]
_RUNS_SHOWN = 10


def parse_where(text: str | None) -> dict[str, str]:
    """Parse ``"norm=wn,lr=0.1"`` into ``{"norm": "wn", "lr": "0.1"}`` (values untyped).

    Raises:
        ValueError: On an item without ``=`` or a key given twice.
    """
    if text is None or not text.strip():
        return {}
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"where items must look like key=value, got {item.strip()!r}")
        if key in out:
            raise ValueError(f"where gives {key!r} twice")
        out[key] = value
    return out


def _typed_value(column: str, text: str, arrow_type: pa.DataType) -> Any:
    """``text`` parsed to the Python type matching the column's Arrow type."""
    kind = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return text
    try:
        if pa.types.is_integer(kind):
            return int(text)
        if pa.types.is_floating(kind):
            return float(text)
        if pa.types.is_boolean(kind) and text.lower() in ("true", "false", "1", "0"):
            return text.lower() in ("true", "1")
    except ValueError:
        pass
    raise ValueError(f"where {column}={text!r}: column {column!r} holds {kind} values")


# ---------------------------------------------------------------------------------
# Locating and reading the record table
# ---------------------------------------------------------------------------------


def find_records(path: str | os.PathLike) -> Path:
    """The ``records.parquet`` of a run directory, or ``path`` itself.

    ``records.parquet`` is a file (``Recorder.save``) or a directory of parquet parts
    (``analyses/train.py`` streams one part per epoch); both are read as one table.

    Raises:
        FileNotFoundError: When ``path`` does not exist, or is a directory without
            ``records.parquet`` (other parquet files there are listed).
        ValueError: When ``path`` is a file that is not a ``.parquet`` file.
    """
    path = Path(path)
    if path.is_dir() and path.suffix == ".parquet":
        return path
    if path.is_dir():
        records = path / RECORDS_NAME
        if records.exists():
            return records
        others = sorted(p.name for p in path.glob("*.parquet"))
        hint = f"; parquet files there: {', '.join(others[:5])}" if others else ""
        raise FileNotFoundError(
            f"no {RECORDS_NAME} in {path} (a run directory holds the table written by "
            f"Recorder.save){hint}"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix != ".parquet":
        raise ValueError(f"{path} is not a .parquet file (expected a run directory or records)")
    return path


def _dataset(path: Path) -> ds.Dataset:
    """The parquet file as a dataset, reading ``layer``/``metric`` dictionary-encoded."""
    options = ds.ParquetReadOptions(dictionary_columns=_DICTIONARY_COLUMNS)
    return ds.dataset(path, format=ds.ParquetFileFormat(read_options=options))


def _equals(column: str, value: Any) -> ds.Expression:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return ds.field(column).is_null() if missing else ds.field(column) == value


def _all_of(expressions: Sequence[ds.Expression | None]) -> ds.Expression | None:
    out = None
    for expr in expressions:
        if expr is not None:
            out = expr if out is None else out & expr
    return out


def _unique_rows(path: Path, columns: Sequence[str], expr: ds.Expression | None) -> pd.DataFrame:
    """Distinct combinations of ``columns`` among the rows matching ``expr``, batch by batch."""
    parts = [
        batch.to_pandas().astype(object).drop_duplicates()
        for batch in _dataset(path).to_batches(columns=list(columns), filter=expr)
        if batch.num_rows
    ]
    if not parts:
        return pd.DataFrame(columns=list(columns))
    unique = pd.concat(parts, ignore_index=True).drop_duplicates()
    return unique.sort_values(list(columns), kind="stable").reset_index(drop=True)


def format_run(run: Mapping[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in run.items())


def _format_runs(runs: pd.DataFrame) -> str:
    shown = [format_run(r) for r in runs.head(_RUNS_SHOWN).to_dict("records")]
    more = f"; ... ({len(runs) - _RUNS_SHOWN} more)" if len(runs) > _RUNS_SHOWN else ""
    return "; ".join(shown) + more


@dataclass(frozen=True)
class RunSelection:
    """One run of a record table and a step range.

    Attributes:
        path: The parquet file.
        run: The run's key values (empty for a table without run keys).
        steps: ``(first, stop)``; keeps ``first <= step < stop`` (None: unbounded).
    """

    path: Path
    run: Mapping[str, Any]
    steps: tuple[int | None, int | None] = (None, None)

    def expression(self, *, steps: bool = True) -> ds.Expression | None:
        """The pyarrow filter selecting this run (and, with ``steps``, the step range)."""
        first, stop = self.steps if steps else (None, None)
        return _all_of(
            [
                *(_equals(key, value) for key, value in self.run.items()),
                None if first is None else ds.field("step") >= first,
                None if stop is None else ds.field("step") < stop,
            ]
        )

    def read(self, columns: Sequence[str], expr: ds.Expression | None = None) -> pd.DataFrame:
        """The selected rows matching ``expr``, only ``columns``, as pandas."""
        table = _dataset(self.path).to_table(
            columns=list(columns), filter=_all_of([self.expression(), expr])
        )
        return table.to_pandas()

    def batches(
        self, columns: Sequence[str], expr: ds.Expression | None = None
    ) -> Iterator[pd.DataFrame]:
        """Like :meth:`read`, one record batch at a time (bounded memory)."""
        scan = _dataset(self.path).to_batches(
            columns=list(columns), filter=_all_of([self.expression(), expr])
        )
        for batch in scan:
            if batch.num_rows:
                yield batch.to_pandas()

    def describe(self) -> str:
        """``path`` plus the run, for messages."""
        return f"{self.path}" + (f" (run {format_run(self.run)})" if self.run else "")


def _run_keys(schema: pa.Schema) -> list[str]:
    return [
        name
        for name in schema.names
        if name not in _STANDARD and not name.startswith("__index_level_")
    ]


def _read_schema(path: Path) -> pa.Schema:
    try:
        schema = ds.dataset(path, format="parquet").schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path} is not a readable parquet file: {exc}") from None
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(
            f"{path} is not a record table: missing columns {missing} "
            f"(expected {list(COLUMNS)} plus optional run keys)"
        )
    return schema


def select_run(
    path: Path, where: str | None = None, steps: tuple[int | None, int | None] = (None, None)
) -> RunSelection:
    """Identify the one run to report.

    Args:
        path: The parquet record table.
        where: ``"key=value,..."`` over the run-key columns; it must leave exactly one run.
        steps: The step range of the selection.

    Raises:
        ValueError: On a malformed table, a ``where`` naming a column that is not a run
            key or a value of the wrong type, or a ``where`` that matches no run or
            several (the message lists the runs, in ``where`` syntax).
    """
    schema = _read_schema(path)
    keys = _run_keys(schema)
    raw = parse_where(where)
    unknown = [k for k in raw if k not in keys]
    if unknown:
        known = f"run keys: {keys}" if keys else "the table has no run-key columns"
        raise ValueError(f"where names {unknown}, which are not run keys of {path}; {known}")
    wanted = {k: _typed_value(k, v, schema.field(k).type) for k, v in raw.items()}
    if not keys:
        return RunSelection(path, {}, steps)
    runs = _unique_rows(path, keys, _all_of([_equals(k, v) for k, v in wanted.items()]))
    if len(runs) == 1:
        return RunSelection(path, runs.iloc[0].to_dict(), steps)
    if len(runs) == 0:
        every = _unique_rows(path, keys, None)
        raise ValueError(
            f"no run of {path} matches where {format_run(wanted)}; "
            f"runs ({len(every)}): {_format_runs(every)}"
        )
    raise ValueError(
        f"{path} holds {len(runs)} runs{' matching ' + format_run(wanted) if wanted else ''}; "
        f"pick one with where (--where key=value,...): {_format_runs(runs)}"
    )


def recorded_metrics(selection: RunSelection) -> list[str]:
    """The metrics recorded for the selected run (whatever the step range), sorted."""
    present: set[str] = set()
    for frame in _batches_without_steps(selection, ["metric"]):
        present.update(str(m) for m in pd.unique(frame["metric"]))
    return sorted(present)


def _batches_without_steps(
    selection: RunSelection, columns: Sequence[str], expr: ds.Expression | None = None
) -> Iterator[pd.DataFrame]:
    return replace(selection, steps=(None, None)).batches(columns, expr)


def _explain_empty(selection: RunSelection, metric: str, call_idx: int) -> str:
    """Why a metric/call_idx/step-range selection has no rows, in one line."""
    first = last = None
    calls: set[int] = set()
    metric_expr = ds.field("metric") == metric
    for frame in _batches_without_steps(selection, ["step", "call_idx"], metric_expr):
        lo, hi = int(frame["step"].min()), int(frame["step"].max())
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
        calls.update(int(c) for c in pd.unique(frame["call_idx"]))
    if call_idx not in calls:
        return (
            f"no {metric!r} records with call_idx={call_idx} in {selection.describe()}; "
            f"call_idx values recorded: {sorted(calls)}"
        )
    lo, hi = selection.steps
    span = f"{'' if lo is None else lo}:{'' if hi is None else hi}"
    return (
        f"no {metric!r} records in steps {span} of {selection.describe()}; "
        f"recorded steps run from {first} to {last}"
    )


def load_metric(
    selection: RunSelection, metric: str, call_idx: int = 0, recorded: Sequence[str] | None = None
) -> pd.DataFrame:
    """The record-table rows of one metric and call index of the selected run.

    Only ``step, layer, layer_idx, call_idx, value`` are read (``layer`` as a
    categorical); ``metric`` is added back as a one-category categorical, so the result
    is a record table for :mod:`stability.fitting`.

    Args:
        selection: The run and step range.
        metric: The metric to load.
        call_idx: The call index to load.
        recorded: The run's recorded metrics, if already known (see
            :func:`recorded_metrics`).

    Raises:
        ValueError: When the metric was not recorded (the message lists those that
            were), or no row has this call index or falls in the step range.
    """
    recorded = recorded_metrics(selection) if recorded is None else list(recorded)
    if metric not in recorded:
        raise ValueError(
            f"metric {metric!r} was not recorded in {selection.describe()}; "
            f"recorded metrics: {recorded}"
        )
    columns = ["step", "layer", "layer_idx", "call_idx", "value"]
    expr = (ds.field("metric") == metric) & (ds.field("call_idx") == call_idx)
    frame = selection.read(columns, expr)
    if frame.empty:
        raise ValueError(_explain_empty(selection, metric, call_idx))
    frame["layer"] = categorical(frame["layer"])
    frame["metric"] = pd.Categorical.from_codes(np.zeros(len(frame), dtype=np.int8), [metric])
    return frame[list(COLUMNS)]


def categorical(values: pd.Series) -> pd.Series:
    """``values`` as a categorical holding only the categories in use."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.remove_unused_categories()
    return values.astype("category")


def _glob_mask(layers: pd.Series, pattern: str | None) -> np.ndarray:
    """Boolean mask of the rows whose layer name matches ``pattern`` (all when None)."""
    if pattern is None:
        return np.ones(len(layers), dtype=bool)
    keep = [name for name in pd.unique(layers) if fnmatch.fnmatchcase(str(name), pattern)]
    return layers.isin(keep).to_numpy()


def find_onset(
    selection: RunSelection,
    threshold: float | None = 1e6,
    *,
    metrics: Sequence[str] | None = None,
    layers: str | None = None,
) -> fitting.Onset | None:
    """:func:`stability.fitting.divergence_onset` over the selected run, without loading it.

    The offending rows (null or non-finite value, or a norm metric beyond ``threshold``)
    are filtered by pyarrow while scanning, and only those at the smallest step seen so
    far are kept; ``divergence_onset`` then ranks them. The result equals
    ``divergence_onset`` on the whole selection.

    Args:
        selection: The run and step range.
        threshold: Divergence threshold for the norm metrics (None: non-finite only).
        metrics: Metrics searched; None = all.
        layers: Optional glob on layer names.

    Returns:
        The onset, or None when no value offends.
    """
    value = ds.field("value")
    offending = value.is_null() | ~pc.is_finite(value)
    if threshold is not None:
        norms = ds.field("metric").isin(sorted(THRESHOLD_METRICS))
        offending = offending | (norms & (pc.abs(value) > float(threshold)))
    if metrics is None:  # the same metrics divergence_onset judges by default
        offending = offending & ~ds.field("metric").isin(sorted(NOT_DIVERGENCE_METRICS))
    else:
        offending = offending & ds.field("metric").isin(list(metrics))
    best: int | None = None
    kept: list[pd.DataFrame] = []
    for frame in selection.batches(COLUMNS, offending):
        frame = frame[_glob_mask(frame["layer"], layers)]
        if frame.empty:
            continue
        first = int(frame["step"].min())
        if best is None or first < best:
            best, kept = first, []
        if first == best:
            kept.append(frame[frame["step"].to_numpy() == first].astype({"layer": str}))
    if best is None:
        return None
    rows = pd.concat(kept, ignore_index=True).astype({"metric": str})
    judged = None if metrics is None else sorted(set(rows["metric"]))  # rows hold only these
    return fitting.divergence_onset(rows, threshold, metric=judged)
