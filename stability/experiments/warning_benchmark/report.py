"""The benchmark's table (Markdown) and figure."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

COLUMNS = (
    "workload",
    "regime",
    "runs",
    "diverged",
    "undecided",
    "recall",
    "false_alarms",
    "median_lead",
    "p10_lead",
    "ceiling_lead",
)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (one row per workload and regime)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for _, row in summary.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def goals(summary: pd.DataFrame) -> pd.DataFrame:
    """Per row: recall >= 95%, false alarms <= 2%, median lead >= ceiling - 1 (True/False)."""
    judged = summary[summary["diverged"] > 0]
    return pd.DataFrame(
        {
            "workload": judged["workload"],
            "regime": judged["regime"],
            "recall_ok": judged["recall"] >= 0.95,
            "false_alarms_ok": judged["false_alarms"] <= 0.02,
            "lead_ok": judged["median_lead"] >= judged["ceiling_lead"].fillna(math.inf) - 1,
        }
    )


def draw(summary: pd.DataFrame, path: Path) -> Path:
    """Median and p10 lead against the ceiling, and recall / false alarms, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{w}\n{r}" for w, r in zip(summary["workload"], summary["regime"], strict=True)]
    x = range(len(summary))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.27
    left.bar([i - width for i in x], summary["median_lead"], width, label="median lead")
    left.bar(list(x), summary["p10_lead"], width, label="p10 lead")
    left.bar([i + width for i in x], summary["ceiling_lead"], width, label="ceiling (<=2% FA)")
    left.set_ylabel("lead (steps before onset)")
    left.set_xticks(list(x), labels, fontsize=7)
    left.legend(fontsize=8)
    right.bar([i - width / 2 for i in x], summary["recall"], width, label="recall")
    right.bar([i + width / 2 for i in x], summary["false_alarms"], width, label="false alarms")
    right.axhline(0.95, color="grey", lw=0.8, ls="--")
    right.axhline(0.02, color="grey", lw=0.8, ls=":")
    right.set_xticks(list(x), labels, fontsize=7)
    right.set_ylim(0, 1.05)
    right.legend(fontsize=8)
    fig.suptitle("early warning on held-out seeds (thresholds tuned on separate seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
