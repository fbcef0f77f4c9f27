#!/usr/bin/env python
"""Time share per operator category of a ResNet-50 training step, BN vs WN (paper, Figure 1).

    python analyses/bn_runtime_share.py --preset quick   # CI: small input, one profiled step
    python analyses/bn_runtime_share.py                  # CPU batch 16 at 112x112 (+ CUDA)

The attribution and the files written: :mod:`stability.experiments.bn_runtime_share`.
Errors are one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stability.experiments.bn_runtime_share import (
    DEVICES,
    NORMS,
    PRESETS,
    ShareConfig,
    run,
)
from stability.experiments.cli import (
    OneLineParser,
    comma_list,
    nonnegative_int,
    one_of,
    positive_int,
    print_report,
    run_experiment,
)

PROG = "bn_runtime_share.py"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (imports nothing heavy)."""
    default = ShareConfig()
    p = OneLineParser(
        prog=PROG,
        description="Share of ResNet-50 training time per operator category, BN vs WN "
        "(the analogue of Gitman & Ginsburg 2017, Figure 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add(
        "--preset",
        choices=list(PRESETS),
        default=default.preset,
        help="quick: batch 4 at 64x64, 1 warm-up, 1 profiled and 2 timed steps; flags given "
        "override it",
    )
    add("--out", type=Path, default=None, help="output folder, new or empty (runs/bench/...)")
    add(
        "--devices",
        type=comma_list(one_of(DEVICES, "device")),
        default=None,
        help="comma-separated devices (default: cpu, and cuda when there is one)",
    )
    add(
        "--norms",
        type=comma_list(one_of(NORMS, "norm")),
        default=default.norms,
        help=f"comma-separated subset of {', '.join(NORMS)}",
    )
    add("--batch", type=positive_int, default=None, help="batch size (device default)")
    add("--image", type=positive_int, default=None, help="input height = width")
    add("--steps", type=positive_int, default=None, help="profiled steps")
    add("--warmup", type=nonnegative_int, default=None, help="untimed steps before profiling")
    add("--timed", type=positive_int, default=None, help="unprofiled timed steps per model")
    add(
        "--threads",
        type=positive_int,
        default=default.threads,
        help="torch.set_num_threads (1 keeps CPU timings steady on a shared machine)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, print; returns the exit status (0, or 2 on an error)."""
    return run_experiment(PROG, build_parser(), argv, PRESETS, ShareConfig, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
