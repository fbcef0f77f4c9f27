"""From queued device values to table rows: the host side of a Recorder flush.

Values travel from the hooks as 0-d (or per-run) device tensors keyed by
``(step, layer, call, code, aux)``; ``Recorder.step()`` stacks them by device and dtype, and
``Recorder.flush()`` copies each stack to the host and turns raw norms into metric rows
here, vectorised over all rows (no per-row Python work).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from stability.records.hooks import CODE, RAW_INPUT_NORM, RAW_OUTPUT_NORM
from stability.records.schema import METRICS


def group_by_device_and_dtype(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped so each group can be stacked (usually one group)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.values())


def check_metrics(metrics) -> tuple[str, ...]:
    """``metrics`` as a tuple of known metric names (one name may be given as a string)."""
    if metrics is None:
        return METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, Iterable):
        raise TypeError(f"metrics must be metric name(s) from {list(METRICS)}, got {metrics!r}")
    metrics = tuple(metrics)
    unknown = [m for m in metrics if not isinstance(m, str) or m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown!r}; choose from {list(METRICS)}")
    return metrics


def table_rows(
    values: np.ndarray, keys: np.ndarray, forward: Iterable[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Host side of a flush: raw norms -> table rows, keys ``(step, layer, call, metric)``.

    ``keys`` are ``(step, layer, call, code, aux)``; ``forward``: the forward metrics
    recorded. ``output_norm`` is the raw ``||o||``; ``output_rms = ||o|| / sqrt(n)`` (NaN
    for ``n = 0``, as :func:`stability.metrics.rms_from_norm`); ``gain = ||o|| / ||x||``
    from each ``||x||`` row and the ``||o||`` row just before it, NaN where ``||x|| = 0``.
    The divisions run in the values' dtype, exactly as they would on the device.
    ``zero_rows`` rows are kept only where some row was left out.
    """
    code = keys[:, 3]
    direct = code < len(METRICS)
    outputs = np.flatnonzero(code == RAW_OUTPUT_NORM)
    inputs = np.flatnonzero(code == RAW_INPUT_NORM)
    parts = [(values[direct], keys[direct, :4])]

    def rows(value: np.ndarray, at: np.ndarray, metric: str) -> None:
        metric_keys = keys[at, :4].copy()
        metric_keys[:, 3] = CODE[metric]
        parts.append((value, metric_keys))

    with np.errstate(divide="ignore", invalid="ignore"):
        if "output_norm" in forward:
            rows(values[outputs], outputs, "output_norm")
        if "output_rms" in forward:
            root_n = np.sqrt(keys[outputs, 4].astype(np.float64)).astype(values.dtype)
            rows(
                values[outputs] / root_n.reshape(-1, *[1] * (values.ndim - 1)),
                outputs,
                "output_rms",
            )
        if "gain" in forward:  # NaN for an all-zero input, as metrics.gain
            x_norm = values[inputs]
            rows(np.where(x_norm == 0, np.nan, values[inputs - 1] / x_norm), inputs, "gain")
    values, keys = (np.concatenate(x) for x in zip(*parts, strict=True))
    # ``zero_rows`` says how many rows coherence left out: kept only where there are some
    empty = (keys[:, 3] == CODE["zero_rows"]) & (values.reshape(len(values), -1) == 0).all(1)
    return values[~empty], keys[~empty]
