"""What a growth report covers and where it goes: :class:`ReportConfig`, :func:`parse_steps`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPORT_PNG = "growth_report.png"
SUMMARY_JSON = "growth_summary.json"
TIME_WINDOW_FILE = "growth_time_window.parquet"
#: Panel names; panel ``p`` of the figure is saved as ``growth_report_<p>.csv``.
PANELS = ("heatmap", "depth_factor", "depth_profile", "coherence")
#: The heatmap bins consecutive recorded steps into at most this many columns.
MAX_HEATMAP_COLUMNS = 400
#: Weight metric drawn in panel (d).
COHERENCE = "coherence"


@dataclass(frozen=True)
class ReportConfig:
    """What to report and how.

    Attributes:
        metric: The metric fitted and drawn (``output_rms``, ``grad_norm``, ``gain``, ...).
        layers: Optional glob on layer names (``"layer4.*"``); applies to every part.
        steps: ``(first, stop)``: keep ``first <= step < stop``; either side may be None.
        where: Run filter ``"key=value,..."`` for tables holding several runs.
        call_idx: Which call of each module (0 = its first call in a step).
        factor_threshold: Per-layer depth factor whose crossing is reported as the
            mechanism (:func:`stability.fitting.depth_factor_crossing`); the warning itself
            is the self-calibrating detector's (:func:`stability.fitting.early_warning`).
        threshold: Norm magnitude counted as diverged (None: non-finite values only).
        window: Sliding time-growth window, in optimizer steps (>= 3).
        min_layers: Minimum usable layers for a depth fit (>= 3).
        onset_metrics: Metrics searched for the onset; None = every recorded metric.
        source: The run directory or parquet record table (needed by ``run``).
        out: Output folder (None: ``<run dir>/growth_report``, see ``default_out_dir``).
        force: Replace existing report files in ``out``.
    """

    metric: str = "output_rms"
    layers: str | None = None
    steps: tuple[int | None, int | None] = (None, None)
    where: str | None = None
    call_idx: int = 0
    factor_threshold: float = 1.05
    threshold: float | None = 1e6
    window: int = 20
    min_layers: int = 3
    onset_metrics: tuple[str, ...] | None = None
    source: str | os.PathLike | None = None
    out: str | os.PathLike | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.window < 3:
            raise ValueError(f"window must be >= 3 steps, got {self.window}")
        if self.min_layers < 3:
            raise ValueError(f"min_layers must be >= 3, got {self.min_layers}")
        if self.call_idx < 0:
            raise ValueError(f"call_idx must be >= 0, got {self.call_idx}")
        if not self.factor_threshold > 0:
            raise ValueError(f"factor threshold must be > 0, got {self.factor_threshold}")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"divergence threshold must be > 0, got {self.threshold}")
        first, stop = self.steps
        if first is not None and stop is not None and stop <= first:
            raise ValueError(f"empty step range {first}:{stop} (the range is first <= step < stop)")
        if self.out is not None:
            check_out_dir(Path(self.out))


def check_out_dir(out: Path) -> None:
    """Raise NotADirectoryError when ``out`` or one of its parents is an existing non-folder.

    Checked before anything is read or written, so a bad ``--out`` touches nothing.
    """
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(f"--out {out}: {path} exists and is not a folder")
            return


def parse_steps(text: str | None) -> tuple[int | None, int | None]:
    """Parse ``"A:B"``, ``"A:"``, ``":B"`` (``A <= step < B``) or ``"A"`` (one step).

    Raises:
        ValueError: On anything else.
    """
    if text is None or text.strip() in ("", ":"):
        return (None, None)
    parts = text.split(":")
    try:
        if len(parts) == 1:
            step = int(parts[0])
            return (step, step + 1)
        if len(parts) == 2:
            first, stop = (int(p) if p.strip() else None for p in parts)
            return (first, stop)
    except ValueError:
        pass
    raise ValueError(f"steps must look like A:B, A: or :B (integers), got {text!r}")
