"""Checking and selecting rows of the record table for the fits (package-private helpers).

A record table has the columns :data:`stability.records.schema.COLUMNS`, one value per
row. These helpers reject malformed tables with one-line errors that name the problem,
select one metric and call index (call 0, the first training forward, by default),
filter layers by glob or by name, order layers by depth, and take logarithms of the
values a fit may use (finite and > 0).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from stability.records.schema import COLUMNS


def _check_frame(frame: pd.DataFrame) -> None:
    """Raise ValueError unless ``frame`` is a non-empty record table."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"record table is missing columns {missing}; expected columns {list(COLUMNS)}"
        )
    if len(frame) == 0:
        raise ValueError("record table is empty (no rows)")


def _metrics_present(frame: pd.DataFrame) -> list[str]:
    return sorted(str(m) for m in pd.unique(frame["metric"]))


def _check_metrics(frame: pd.DataFrame, metrics: Sequence[str]) -> None:
    present = _metrics_present(frame)
    unknown = [m for m in metrics if m not in present]
    if unknown:
        raise ValueError(f"metric(s) {unknown} not in the record table; metrics present: {present}")


def _few(names: Sequence[str], k: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    if len(names) > k:
        shown += f", ... ({len(names) - k} more)"
    return shown


def _layers_in_depth_order(sub: pd.DataFrame) -> list[str]:
    """Layer names of ``sub`` sorted by layer_idx (ties by name)."""
    first = sub.groupby("layer", sort=False, observed=True)["layer_idx"].min()
    order = sorted(zip(first.to_numpy().tolist(), first.index.astype(str), strict=True))
    return [name for _, name in order]


#: The call the fits read by default: call 0, a module's first training forward in a step.
TRAINING_CALL: int = 0


def _select(frame: pd.DataFrame, metric: str, call_idx: int = TRAINING_CALL) -> pd.DataFrame:
    """Rows of one metric and one call index, with duplicate rows rejected.

    A *call* is one recorded forward of a module within an optimizer step, numbered from 0
    in the order they ran (``call_idx``): under gradient accumulation the micro-batches
    (call 0 = the first), for a shared module each use. Evaluation forwards (autograd
    disabled, e.g. validation under ``torch.no_grad()`` after ``Recorder.step()``) are not
    calls and have no rows with the Recorder's default ``record_no_grad=False``, so the
    default call 0 (:data:`TRAINING_CALL`) is the step's first training forward: the same
    value whether or not the loop validates, and whatever the number of micro-batches.
    (A table recorded with ``record_no_grad=True`` numbers validation forwards as calls
    too: a fit of call 0 there may read a validation batch.) Weight metrics are recorded
    at call 0 only.
    """
    _check_frame(frame)
    _check_metrics(frame, [metric])
    by_metric = frame[(frame["metric"] == metric).to_numpy()]
    sub = by_metric[by_metric["call_idx"].to_numpy() == call_idx]
    if len(sub) == 0:
        calls = sorted(int(c) for c in pd.unique(by_metric["call_idx"]))
        raise ValueError(
            f"no rows for metric {metric!r} with call_idx={call_idx}; "
            f"call_idx values present for it: {calls}"
        )
    dup = sub.duplicated(subset=["step", "layer"])
    if bool(dup.any()):
        row = sub[dup.to_numpy()].iloc[0]
        raise ValueError(
            f"record table has more than one row for step={row['step']}, "
            f"layer={row['layer']!r}, call_idx={call_idx}, metric={metric!r}; "
            "a record table holds one value per (step, layer, call_idx, metric)"
        )
    return sub


def _filter_layers(sub: pd.DataFrame, layers: str | Iterable[str] | None) -> pd.DataFrame:
    """Keep the requested layers: a glob pattern (str) or a collection of exact names."""
    if layers is None:
        return sub
    names = pd.unique(sub["layer"]).astype(str)
    if isinstance(layers, str):
        keep = [n for n in names if fnmatch.fnmatchcase(n, layers)]
        if not keep:
            raise ValueError(
                f"layer pattern {layers!r} matches no layer; layers: "
                f"{_few(_layers_in_depth_order(sub))}"
            )
    else:
        keep = list(dict.fromkeys(str(n) for n in layers))
        unknown = [n for n in keep if n not in set(names)]
        if unknown:
            raise ValueError(
                f"unknown layer(s) {unknown}; layers: {_few(_layers_in_depth_order(sub))}"
            )
    return sub[sub["layer"].isin(keep).to_numpy()]


def main_path_layers(names: Iterable[str]) -> list[str]:
    """The layers of ``names`` on the model's main path: those with no ancestor among them.

    A layer ``a.b.c`` is *nested* in ``a.b`` (its name extends the other's by a dot). A
    wrapper whose forward runs its children (a peft LoRA layer around ``base_layer``,
    ``lora_A``, ``lora_B``; a recorded block around its convolutions) is one step of the
    depth chain, and its children are side branches or the same step again, so a depth fit
    over all of them mixes depths. Keeping the outermost recorded layers keeps one layer per
    step of the chain. Models whose recorded layers are leaves (every torchvision and timm
    model with the default selection) keep every layer.
    """
    names = list(dict.fromkeys(str(n) for n in names))
    present = set(names)

    def nested(name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:i]) in present for i in range(1, len(parts)))

    return [n for n in names if not nested(n)]


def _filter_main_path(sub: pd.DataFrame) -> pd.DataFrame:
    """Rows of the layers on the main path (:func:`main_path_layers`)."""
    keep = main_path_layers(pd.unique(sub["layer"]).astype(str))
    if len(keep) == sub["layer"].nunique():
        return sub
    return sub[sub["layer"].isin(keep).to_numpy()]


def _log_values(values: np.ndarray) -> np.ndarray:
    """``log(values)`` where finite and > 0, NaN elsewhere."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    out = np.full(v.shape, np.nan)
    np.log(v, out=out, where=ok)
    return out


def _check_min(name: str, value: int) -> None:
    if int(value) < 3:
        raise ValueError(f"{name} must be >= 3 (a fit needs one residual degree of freedom)")
