#!/usr/bin/env python
"""Recorder overhead vs no hooks and its peer hook patterns, at 1 thread and torch's
default; host syncs (CUDA) and memory.

    python analyses/bench_recorder.py --preset quick   # CI, well under a minute on 2 cores
    python analyses/bench_recorder.py                  # the full benchmark (minutes on CPU)
    python analyses/bench_recorder.py --threads 1,2,4  # other thread counts
    git show HEAD:stability/records/recorder.py > /tmp/recorder_before.py
    python analyses/bench_recorder.py --compare-with /tmp/recorder_before.py

The method and the files written: :mod:`stability.experiments.bench_recorder`.
Errors are one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stability.experiments.bench_recorder import PRESETS, WORKLOADS, BenchConfig, run
from stability.experiments.cli import (
    OneLineParser,
    comma_list,
    nonnegative_int,
    one_of,
    positive_int,
    print_report,
    run_experiment,
)

PROG = "bench_recorder.py"


def _steps_per_block(text: str) -> int:
    value = positive_int(text)
    if value % 10:
        raise argparse.ArgumentTypeError(f"expected a multiple of 10, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (imports nothing heavy)."""
    default = BenchConfig()
    p = OneLineParser(
        prog=PROG,
        description="Recorder overhead vs no hooks, empty hooks, naive .item() hooks, a "
        "buffered pattern and a mup-style coord check, interleaved in one process at each "
        "thread count; host syncs (CUDA) and memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add(
        "--preset",
        choices=list(PRESETS),
        default=default.preset,
        help="quick: small sizes, few rounds, 1000 memory steps and no judged timing targets "
        "(for CI); flags given override it",
    )
    add("--out", type=Path, default=None, help="output folder, new or empty (runs/bench/<time>)")
    add("--device", default=None, help="torch device; cuda when available, else cpu")
    add(
        "--threads",
        type=comma_list(positive_int),
        default=None,
        help="comma-separated torch.set_num_threads values, timed in the same rounds "
        "(default: 1 and torch's default)",
    )
    add(
        "--workloads",
        type=comma_list(one_of(WORKLOADS, "workload")),
        default=default.workloads,
        help=f"comma-separated subset of {', '.join(WORKLOADS)}",
    )
    add("--rounds", type=positive_int, default=None, help="measured rounds (workload's own)")
    add("--steps", type=_steps_per_block, default=None, help="timed steps per block, x10")
    add(
        "--memory-steps",
        type=nonnegative_int,
        default=default.memory_steps,
        help="steps of the memory check (quick: 1000; 0 skips it)",
    )
    add("--sync-steps", type=positive_int, default=default.sync_steps, help="sync-count steps")
    add(
        "--compare-with",
        type=Path,
        default=None,
        help="another recorder.py (e.g. from git show) timed as one more variant",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, print; returns the exit status (0, or 2 on an error)."""
    return run_experiment(PROG, build_parser(), argv, PRESETS, BenchConfig, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
