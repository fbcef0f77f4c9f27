#!/usr/bin/env python
"""Benchmark of the divergence early warning: recall, false alarms and lead per workload.

    python analyses/warning_benchmark.py --preset quick   # CI: about a minute on 2 cores
    python analyses/warning_benchmark.py                  # the full benchmark: ~7 min, 2 cores
    python analyses/warning_benchmark.py --workloads linear-wn,relu-mlp-wn --iters 40

The method and the files written: :mod:`stability.experiments.warning_benchmark`.
Errors are one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stability.experiments.cli import (
    OneLineParser,
    comma_list,
    nonnegative_int,
    one_of,
    positive_float,
    positive_int,
    run_experiment,
)
from stability.experiments.warning_benchmark import PRESETS, WORKLOADS, BenchmarkConfig, run

PROG = "warning_benchmark.py"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (imports nothing heavy)."""
    default = BenchmarkConfig()
    p = OneLineParser(
        prog=PROG,
        description="Recall, false alarms and lead of the divergence early warning, tuned on "
        "some seeds and reported on held-out seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add(
        "--preset",
        choices=list(PRESETS),
        default=default.preset,
        help="quick: 40 steps, 4 learning rates, 1 + 1 seeds (for CI); flags given override it",
    )
    add("--out", default=None, help="output folder, new or empty (runs/warning_benchmark/<time>)")
    add(
        "--workloads",
        type=comma_list(one_of(WORKLOADS, "workload")),
        default=None,
        help=f"comma-separated subset of {', '.join(WORKLOADS)} "
        f"(default {','.join(default.workloads)})",
    )
    add(
        "--tuning-seeds",
        type=comma_list(nonnegative_int),
        default=None,
        help=f"seeds that choose the thresholds (default {default.tuning_seeds})",
    )
    add(
        "--reporting-seeds",
        type=comma_list(nonnegative_int),
        default=None,
        help=f"held-out seeds reported (default {default.reporting_seeds})",
    )
    add("--iters", type=positive_int, default=None, help=f"steps per run ({default.iters})")
    add(
        "--cifar-iters",
        type=positive_int,
        default=None,
        help=f"steps per cifar10-nv run ({default.cifar_iters})",
    )
    add(
        "--cifar-width",
        type=positive_float,
        default=None,
        help=f"channel multiplier of cifar10-nv ({default.cifar_width})",
    )
    add(
        "--lr-points",
        type=positive_int,
        default=None,
        help="learning rates per workload, evenly spread over its grid (default: all)",
    )
    add(
        "--subset",
        type=positive_int,
        default=None,
        help=f"Fashion-MNIST training samples ({default.subset})",
    )
    add("--data-dir", default=None, help="Fashion-MNIST folder (default: the usual search)")
    add("--threads", type=positive_int, default=None, help="torch threads (1)")
    return p


def _report(result) -> None:
    print(
        f"thresholds chosen on the tuning seeds: jump {result.jump:g}, "
        f"loss_ratio {result.loss_ratio:g}, warmup {result.warmup}"
    )
    print(result.table)
    print(f"done in {result.seconds:.0f} s; results in {result.out}/")


def _run(config):
    return run(config, progress=lambda w: print(f"training {w} ...", flush=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, print; returns the exit status (0, or 2 on an error)."""
    return run_experiment(PROG, build_parser(), argv, PRESETS, BenchmarkConfig, _run, _report)


if __name__ == "__main__":
    sys.exit(main())
