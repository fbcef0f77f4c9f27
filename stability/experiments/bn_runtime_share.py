#!/usr/bin/env python
"""Where does a ResNet-50 training step spend its time? The analogue of the paper's Figure 1.

Gitman & Ginsburg (2017, Figure 1) found batch normalization taking about a quarter of
ResNet-50's training time on a Titan X Pascal. This script profiles ResNet-50 training
steps with ``torch.profiler``, with BN and with weight normalization (WN), and splits
the time by operator category: convolution, batch norm, weight norm, ReLU, add, pooling,
fc, optimizer, other.

Attribution (no double counting: every profiled microsecond is some event's *self* time,
and each event gets exactly one category):

1. Forward. Before profiling, the forward of every leaf module is wrapped in a
   ``record_function`` label naming its category: convolutions (``_ConvNd``) ->
   convolution, ``_BatchNorm`` -> batch norm, the ``WeightNorm`` parametrization ->
   weight norm, ``ReLU`` -> relu, max/average pooling -> pooling, ``Linear`` -> fc,
   ``ResidualAdd`` -> add. An op takes the category of its innermost label, so the WN
   parametrization that a convolution evaluates when it reads its weight is weight norm,
   not convolution. ``Optimizer.step`` / ``Optimizer.zero_grad`` (torch.optim's own
   labels) -> optimizer.
2. Backward. Each autograd node (``autograd::engine::evaluate_function: XBackward0``,
   with everything it runs) takes the category of the forward op that created it, found
   by the profiler's sequence number; so ``MulBackward0`` of the WN parametrization is
   weight norm, and ``AddBackward0`` of a residual sum is add.
3. Ops outside every label (torchvision's ``out += identity``, the loss, ``flatten``) and
   nodes without a forward op (``AccumulateGrad``) fall back to name rules on the
   lower-cased name, first match wins: ``conv`` -> convolution, ``batch_norm`` -> batch
   norm, ``relu``/``threshold`` -> relu, ``pool`` -> pooling, ``addmm``/``linear`` -> fc,
   ``add`` -> add; anything else -> other.

Shares are of the profiled op time (CPU self time on a CPU; kernel time on CUDA). The
unprofiled wall-clock step time is measured separately, the two models interleaved.

    python analyses/bn_runtime_share.py --quick      # CI: small input, one profiled step
    python analyses/bn_runtime_share.py              # CPU batch 16 at 112x112 (+ CUDA)

Writes into ``--out`` (default ``runs/bench/<timestamp>-bn-share``; never overwritten):
``runtime_share.png`` with ``runtime_share_<device>.csv`` per panel, ``runtime_share.csv``
(device, norm, category, ms per step, share), ``operators.csv`` (every op name with its
category and time: the mapping, auditable), ``step_times.csv``, ``config.json`` and
``report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.profiler import record_function
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.profiler import ProfilerActivity, profile

from stability.experiments.cli import OneLineParser, cpu_name, positive_int
from stability.paper.models import resnet50
from stability.paper.normalization import ResidualAdd, WeightNorm

CATEGORIES = (
    "convolution",
    "batch norm",
    "weight norm",
    "relu",
    "add",
    "pooling",
    "fc",
    "optimizer",
    "other",
)
LABEL = "normstab::"  # prefix of the record_function labels put on module forwards
MODULE_CATEGORIES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (WeightNorm, "weight norm"),
    (_ConvNd, "convolution"),
    (_BatchNorm, "batch norm"),
    (nn.ReLU, "relu"),
    ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), "pooling"),
    (nn.Linear, "fc"),
    (ResidualAdd, "add"),
)
NAME_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("conv",), "convolution"),
    (("batch_norm", "batchnorm"), "batch norm"),
    (("relu", "threshold"), "relu"),
    (("pool",), "pooling"),
    (("addmm", "linear"), "fc"),
    (("add",), "add"),
)
BACKWARD = "autograd::engine::evaluate_function: "
OPTIMIZER = "Optimizer."  # torch.optim labels: Optimizer.step#SGD.step, Optimizer.zero_grad#...
NORM_NAMES = {"bn": "BN", "wn": "WN"}


# =========================================================================== labelling


def module_category(module: nn.Module) -> str | None:
    """The category of a module's own forward, or ``None`` (containers, unknown layers)."""
    for kind, category in MODULE_CATEGORIES:
        if isinstance(module, kind):
            return category
    return None


def _labelled(forward, label: str):
    def run(*args, **kwargs):
        with record_function(label):
            return forward(*args, **kwargs)

    return run


def label_modules(model: nn.Module) -> int:
    """Wrap each categorised module's forward in a ``record_function`` label; returns count."""
    count = 0
    for module in model.modules():
        category = module_category(module)
        if category is not None:
            module.forward = _labelled(module.forward, LABEL + category)
            count += 1
    return count


def name_category(name: str) -> str:
    """Fallback: the category of an op or autograd node from its name (NAME_RULES)."""
    lowered = name.lower()
    for needles, category in NAME_RULES:
        if any(needle in lowered for needle in needles):
            return category
    return "other"


# =========================================================================== attribution


def _label_category(name: str) -> str | None:
    if name.startswith(LABEL):
        return name[len(LABEL) :]
    if name.startswith(OPTIMIZER):
        return "optimizer"
    return None


def _walk(event, category: str) -> Iterator[tuple[object, str]]:
    """``(event, category)`` for an event and its descendants; an inner label wins."""
    category = _label_category(event.name) or category
    yield event, category
    for child in event.cpu_children:
        yield from _walk(child, category)


def attribute(events) -> list[tuple[object, str]]:
    """Every CPU event with its category (forward by labels, backward by sequence number)."""
    roots = [e for e in events if e.cpu_parent is None and e.device_type.name == "CPU"]
    backward = [e for e in roots if e.name.startswith(BACKWARD)]
    forward = [e for e in roots if not e.name.startswith(BACKWARD)]
    pairs: list[tuple[object, str]] = []
    created_by: dict[int, str] = {}  # forward sequence number -> category
    for root in forward:
        fallback = _label_category(root.name) or name_category(root.name)
        for event, category in _walk(root, fallback):
            pairs.append((event, category))
            if event.sequence_nr >= 0:
                created_by.setdefault(event.sequence_nr, category)
    for root in backward:
        node = root.name[len(BACKWARD) :]
        category = created_by.get(root.sequence_nr) or name_category(node)
        pairs.extend(_walk(root, category))
    return pairs


def category_times(pairs, steps: int, device_time: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per category and per op name: self time in ms per step (device or CPU time)."""
    by_category: dict[str, float] = defaultdict(float)
    by_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for event, category in pairs:
        us = event.self_device_time_total if device_time else event.self_cpu_time_total
        by_category[category] += us
        entry = by_op[(category, event.name)]
        entry[0] += us
        entry[1] += 1
    total = sum(by_category.values()) or 1.0
    categories = pd.DataFrame(
        {
            "category": list(CATEGORIES),
            "ms_per_step": [by_category.get(c, 0.0) / 1e3 / steps for c in CATEGORIES],
            "share": [by_category.get(c, 0.0) / total for c in CATEGORIES],
        }
    )
    ops = pd.DataFrame(
        [(c, name, us / 1e3 / steps, n / steps) for (c, name), (us, n) in by_op.items()],
        columns=["category", "name", "self_ms_per_step", "calls_per_step"],
    ).sort_values("self_ms_per_step", ascending=False, ignore_index=True)
    return categories, ops


# =========================================================================== running


@dataclass(frozen=True)
class Setup:
    """What is profiled: batch, input size, steps."""

    batch: int
    image: int
    warmup: int
    profiled: int
    timed: int


def default_setup(device: torch.device, quick: bool) -> Setup:
    if quick:
        return Setup(batch=4, image=64, warmup=1, profiled=1, timed=2)
    if device.type == "cuda":
        return Setup(batch=64, image=224, warmup=3, profiled=3, timed=10)
    return Setup(batch=16, image=112, warmup=1, profiled=2, timed=4)


class Step:
    """One SGD training step of a labelled ResNet-50 on a fixed synthetic batch."""

    def __init__(self, norm: str, setup: Setup, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = resnet50(norm).to(device).train()
        label_modules(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=0.9)
        self.x = torch.randn(setup.batch, 3, setup.image, setup.image, device=device)
        self.y = torch.randint(0, 1000, (setup.batch,), device=device)
        self.device = device

    def __call__(self) -> None:
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def profile_steps(step: Step, setup: Setup) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Category and operator tables of ``setup.profiled`` steps (after the warm-up)."""
    for _ in range(setup.warmup):
        step()
    step.sync()
    cuda = step.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(setup.profiled):
            step()
        step.sync()
    return category_times(attribute(prof.events()), setup.profiled, device_time=cuda)


def time_steps(steps: dict[str, Step], count: int) -> dict[str, float]:
    """Median wall-clock seconds per step of each model, unprofiled, interleaved."""
    times: dict[str, list[float]] = {norm: [] for norm in steps}
    for _ in range(count):
        for norm, step in steps.items():
            step.sync()
            start = time.perf_counter()
            step()
            step.sync()
            times[norm].append(time.perf_counter() - start)
    return {norm: statistics.median(values) for norm, values in times.items()}


def run_device(device: torch.device, norms: tuple[str, ...], setup: Setup):
    """Runtime shares, operator tables and step times of every norm on one device."""
    steps = {norm: Step(norm, setup, device) for norm in norms}
    shares, ops = [], []
    for norm, step in steps.items():
        print(f"profiling ResNet-50 ({norm}) on {device}: {setup}")
        categories, operators = profile_steps(step, setup)
        shares.append(categories.assign(device=device.type, norm=norm))
        ops.append(operators.assign(device=device.type, norm=norm))
    wall = time_steps(steps, setup.timed)
    step_times = pd.DataFrame(
        {"device": device.type, "norm": list(wall), "wall_ms": [1e3 * s for s in wall.values()]}
    )
    return pd.concat(shares), pd.concat(ops), step_times


# =========================================================================== outputs


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


# =========================================================================== CLI


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        description="Share of ResNet-50 training time per operator category, BN vs WN "
        "(the analogue of Gitman & Ginsburg 2017, Figure 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="batch 4 at 64x64, one profiled step")
    p.add_argument("--out", type=Path, default=None, help="output folder (runs/bench/<time>)")
    p.add_argument(
        "--devices",
        default=None,
        help="comma-separated devices (default: cpu, and cuda when there is one)",
    )
    p.add_argument("--norms", default="bn,wn", help="comma-separated subset of bn, wn")
    p.add_argument("--batch", type=positive_int, default=None, help="batch size")
    p.add_argument("--image", type=positive_int, default=None, help="input height = width")
    p.add_argument("--steps", type=positive_int, default=None, help="profiled steps")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch.set_num_threads (1 keeps CPU timings steady on a shared machine)",
    )
    return p


def _choices(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in chosen if v not in allowed]
    if bad or not chosen:
        raise ValueError(f"unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
    return chosen


def resolve(args: argparse.Namespace) -> tuple[list[torch.device], tuple[str, ...]]:
    cuda = torch.cuda.is_available()
    default = "cpu,cuda" if cuda else "cpu"
    devices = [
        torch.device(d) for d in _choices(args.devices or default, ("cpu", "cuda"), "device")
    ]
    if any(d.type == "cuda" for d in devices) and not cuda:
        raise ValueError("--devices cuda: CUDA is not available")
    return devices, _choices(args.norms, ("bn", "wn"), "norm")


def prepare_out(out: Path | None) -> Path:
    """A new (or empty) output folder; an existing folder with files is refused."""
    out = out or Path("runs/bench") / (datetime.now().strftime("%Y%m%d-%H%M%S") + "-bn-share")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} already holds files; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)
    try:
        devices, norms = resolve(args)
        out = prepare_out(args.out)
    except (ValueError, FileExistsError) as error:
        print(f"bn_runtime_share.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    started = time.perf_counter()
    results, setups = [], {}
    for device in devices:
        setup = default_setup(device, args.quick)
        overrides = {"batch": args.batch, "image": args.image, "profiled": args.steps}
        setup = Setup(**{**asdict(setup), **{k: v for k, v in overrides.items() if v}})
        setups[device.type] = asdict(setup)
        results.append(run_device(device, norms, setup))
    shares, ops, step_times = (
        pd.concat(parts, ignore_index=True) for parts in zip(*results, strict=True)
    )
    meta = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "setups": setups,
        "norms": list(norms),
        "quick": args.quick,
    }
    shares.to_csv(out / "runtime_share.csv", index=False)
    ops.to_csv(out / "operators.csv", index=False)
    step_times.to_csv(out / "step_times.csv", index=False)
    draw(shares, out)
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    report = markdown_report(shares, step_times, meta)
    (out / "report.md").write_text(report)
    print()
    print(report)
    print(f"done in {time.perf_counter() - started:.0f} s; results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
