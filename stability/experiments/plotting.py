"""One figure style for every figure, and saving a figure together with its data.

Every figure of the project is written as a PNG next to the CSV (one per panel) holding
exactly the numbers drawn, so a figure can always be checked or redrawn from its data.
Matplotlib runs on the non-interactive Agg backend; importing this module does not touch
the global backend until :func:`new_figure` is called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

#: Colour of each normalization kind, shared by every figure.
NORM_COLORS = {
    "bn": "#1f77b4",
    "wn": "#d62728",
    "np": "#2ca02c",
    "trelu": "#9467bd",
    "none": "#7f7f7f",
}
NORM_LABELS = {"bn": "BN", "wn": "WN", "np": "NormProp", "trelu": "TReLU-WN", "none": "none"}
#: Marker and line style of each normalization kind, so curves that coincide stay visible
#: (``none`` is dashed with open squares, drawn over the solid WN circles).
NORM_STYLES = {
    "bn": {"marker": "^", "ls": "-"},
    "wn": {"marker": "o", "ls": "-"},
    "np": {"marker": "D", "ls": "-"},
    "trelu": {"marker": "v", "ls": "-"},
    "none": {"marker": "s", "ls": "--", "mfc": "none", "ms": 8, "mew": 1.5, "zorder": 4},
}


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 5.0, height: float = 3.8):
    """A figure with the project style (seaborn ``whitegrid``, ``talk``-sized fonts scaled down).

    Returns:
        ``(fig, axes)`` as :func:`matplotlib.pyplot.subplots` with ``squeeze=False``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained"
    )
    return fig, axes


def save_figure(
    fig, png_path: str | os.PathLike, panels: Mapping[str, pd.DataFrame], *, dpi: int = 130
) -> list[Path]:
    """Write ``fig`` as PNG and each panel's data as ``<stem>_<panel>.csv`` beside it.

    Args:
        fig: the matplotlib figure (closed after saving).
        png_path: where the PNG goes; its folder is created.
        panels: panel name -> the DataFrame drawn in that panel.

    Returns:
        The paths written, PNG first.
    """
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=dpi)
    plt.close(fig)
    written = [png_path]
    for name, frame in panels.items():
        csv_path = png_path.with_name(f"{png_path.stem}_{name}.csv")
        frame.to_csv(csv_path, index=False)
        written.append(csv_path)
    return written


def norm_color(norm: str) -> str:
    """The colour of a normalization kind (grey for unknown names)."""
    return NORM_COLORS.get(norm, "#333333")


def norm_style(norm: str) -> dict:
    """Keyword arguments of ``ax.plot`` (marker, line style) for a normalization kind."""
    return dict(NORM_STYLES.get(norm, {"marker": ".", "ls": "-"}))


def linear_then_log(ax, split: float, per_decade: float, axis: str = "y") -> None:
    """Make ``axis`` linear up to ``split`` and logarithmic above it.

    The axis coordinate is ``u = v`` for ``v <= split`` and
    ``u = split + per_decade * log10(v / split)`` above: one decade beyond ``split`` takes
    as much room as ``per_decade`` of the linear part. Small differences near 1 (a growth
    factor of 1.01 against 1.06) stay readable while a blow-up to 1e3 still fits.
    """

    def forward(values):
        v = np.array(values, dtype=np.float64)
        above = v > split
        v[above] = split + per_decade * np.log10(v[above] / split)
        return v

    def inverse(values):
        u = np.array(values, dtype=np.float64)
        above = u > split
        u[above] = split * 10.0 ** ((u[above] - split) / per_decade)
        return u

    setter = ax.set_yscale if axis == "y" else ax.set_xscale
    setter("function", functions=(forward, inverse))


def norm_label(norm: str) -> str:
    """The display name of a normalization kind."""
    return NORM_LABELS.get(norm, norm)


def factor_axis(ax, low: float, high: float, split: float = 1.2) -> None:
    """A growth-factor y axis: linear from ``low`` to ``split``, logarithmic above.

    Ticks every 0.02 (0.05 when the linear part spans more than 0.3), so factors of
    1.00-1.10 are readable; the logarithmic part takes about a quarter of the axis,
    whatever ``high`` (the largest factor drawn) is, with 1-2-5 ticks. A dotted line
    marks where the scale changes.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter

    high = max(high, split) if np.isfinite(high) else split
    span = split - low
    decades = max(np.log10(high * 1.2 / split), 0.3)
    linear_then_log(ax, split, per_decade=span / 3 / decades, axis="y")
    step = 0.05 if span > 0.3 else 0.02
    ticks = list(np.arange(np.ceil(low / step) * step, split + 1e-9, step).round(2))
    above = [m * 10.0**k for k in range(0, 7) for m in (1, 2, 5)]
    above = [v for v in above if split * 1.4 < v <= high * 1.2]
    ticks += above[:: max(1, len(above) // 4)] or ([float(f"{high:.2g}")] if high > split else [])
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}" if v <= split else f"{v:g}"))
    ax.set_ylim(low - 0.01, high * 1.2 if high > split else split + 0.005)
    ax.axhline(split, color="grey", lw=0.6, ls=(0, (1, 3)))
    ax.text(0.99, split, f"log scale above {split:g} ", ha="right", va="bottom", fontsize=7,
            color="grey", transform=ax.get_yaxis_transform())  # fmt: skip
