#!/usr/bin/env python
"""Every CUDA measurement the project claims, in one command (about 10 minutes on a GPU).

    python analyses/gpu_check.py                 # on a CUDA machine: writes one table
    python analyses/gpu_check.py --dry-run       # the same plan on the CPU at tiny sizes

ResNet-50 AMP channels_last images/s with and without the Recorder and with naive
``.item()`` hooks, host syncs per recorded step under ``set_sync_debug_mode("error")``,
the live monitor's latency and the gpu-marked tests: :mod:`stability.experiments.gpu_check`.
Without CUDA (and without ``--dry-run``) it exits with status 2 and one line on stderr;
a failed check exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stability.experiments.cli import OneLineParser, config_from_args, one_line, positive_int

PROG = "gpu_check.py"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (imports nothing heavy)."""
    p = OneLineParser(
        prog=PROG,
        description="Every CUDA measurement of the project in one table: ResNet-50 AMP "
        "throughput with/without the Recorder and naive hooks, host syncs, monitor latency, "
        "the gpu-marked tests.",
    )
    add = p.add_argument
    add("--out", type=Path, default=None, help="output folder, new or empty")
    add("--dry-run", action="store_true", help="the same plan on the CPU at tiny sizes")
    add("--batch", type=positive_int, default=None, help="ResNet-50 batch (256; dry run 2)")
    add("--image", type=positive_int, default=None, help="input height = width (224; dry run 32)")
    add("--steps", type=positive_int, default=None, help="timed steps per block (20; dry run 2)")
    add("--rounds", type=positive_int, default=None, help="measured rounds (5; dry run 1)")
    add("--sync-steps", type=positive_int, default=None, help="steps under sync debug (10)")
    add("--monitor-steps", type=positive_int, default=None, help="monitor steps (300; dry 10)")
    add("--no-tests", dest="tests", action="store_false", help="skip the gpu-marked tests")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, print; returns the exit status (0; 1 a check failed; 2 an error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return int(done.code or 0)
    from stability.experiments.gpu_check import GpuCheckConfig, run

    try:
        result = run(config_from_args(GpuCheckConfig, args))
    except (ValueError, OSError, RuntimeError) as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 2
    print()
    print(result.report)
    print(f"done in {result.seconds:.0f} s; results in {result.out}/")
    if result.failed:
        print(f"{PROG}: FAILED: {', '.join(result.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
