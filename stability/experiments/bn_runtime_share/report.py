"""The bar chart and Markdown report of a runtime-share profile (the paper's Figure 1).

Gitman & Ginsburg (2017, Figure 1) found batch normalization taking about a quarter of
ResNet-50's training time on a Titan X Pascal; the report puts each measured share next
to that number.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stability.experiments.bn_runtime_share.config import CATEGORIES, NORM_NAMES


def draw(shares: pd.DataFrame, out: Path) -> list[Path]:
    """Grouped bars: share of step time per category, one bar per norm, a panel per device."""
    from stability.experiments.plotting import new_figure, norm_color, norm_label, save_figure

    devices = list(shares["device"].unique())
    fig, axes = new_figure(1, len(devices), width=6.4, height=3.6)
    panels = {}
    for ax, device in zip(axes[0], devices, strict=True):
        data = shares[shares.device == device]
        norms = list(data["norm"].unique())
        width = 0.8 / len(norms)
        for i, norm in enumerate(norms):
            rows = data[data.norm == norm].set_index("category").reindex(list(CATEGORIES))
            xs = [k + (i - (len(norms) - 1) / 2) * width for k in range(len(CATEGORIES))]
            ax.bar(xs, 100 * rows["share"], width, color=norm_color(norm), label=norm_label(norm))
        ax.set_xticks(range(len(CATEGORIES)), CATEGORIES, rotation=35, ha="right")
        ax.set_ylabel("share of profiled step time (%)")
        ax.set_title(f"ResNet-50 training step, {device.upper()}")
        ax.legend()
        panels[device] = data[["norm", "category", "ms_per_step", "share"]]
    return save_figure(fig, out / "runtime_share.png", panels)


def markdown_report(shares: pd.DataFrame, step_times: pd.DataFrame, meta: dict) -> str:
    """Table of shares per device and norm, BN's share and WN's extra cost per step."""
    header = " | ".join(CATEGORIES)
    lines = [
        f"ResNet-50 step time by operator category, {meta['date'][:10]}, {meta['machine']}, "
        f"torch {meta['torch']}",
        "",
        f"| device | norm | step (ms) | {header} |",
        "|---|---|---:|" + "---:|" * len(CATEGORIES),
    ]
    wall = step_times.set_index(["device", "norm"])["wall_ms"]
    for (device, norm), rows in shares.groupby(["device", "norm"], sort=False):
        cells = " | ".join(f"{100 * s:.1f}%" for s in rows.set_index("category")["share"])
        name = NORM_NAMES.get(norm, norm)
        lines.append(f"| {device} | {name} | {wall[(device, norm)]:.0f} | {cells} |")
    lines.append("")
    for device, rows in shares.groupby("device", sort=False):
        lines.extend(_headline(device, rows, wall))
    return "\n".join(lines) + "\n"


def _headline(device: str, rows: pd.DataFrame, wall: pd.Series) -> list[str]:
    def get(norm: str, category: str, column: str) -> float:
        hit = rows[(rows.norm == norm) & (rows.category == category)]
        return float(hit[column].iloc[0]) if len(hit) else float("nan")

    lines = []
    if (rows.norm == "bn").any():
        lines.append(
            f"- {device}: batch norm takes {100 * get('bn', 'batch norm', 'share'):.1f}% of the "
            f"BN step ({get('bn', 'batch norm', 'ms_per_step'):.1f} ms of profiled op time per "
            "step; the paper: about 25% on a Titan X Pascal)."
        )
    if (rows.norm == "wn").any():
        extra = get("wn", "weight norm", "ms_per_step")
        lines.append(
            f"- {device}: weight norm costs {extra:.1f} ms per step "
            f"({100 * get('wn', 'weight norm', 'share'):.1f}% of the WN step)."
        )
    if {"bn", "wn"} <= set(rows.norm):
        lines.append(
            f"- {device}: wall-clock step BN {wall[(device, 'bn')]:.0f} ms, "
            f"WN {wall[(device, 'wn')]:.0f} ms."
        )
    return lines
