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


def norm_label(norm: str) -> str:
    """The display name of a normalization kind."""
    return NORM_LABELS.get(norm, norm)
