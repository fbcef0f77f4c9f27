#!/usr/bin/env python
"""Regenerate Figures 2, 3 and 4 of Gitman & Ginsburg (2017) from saved training runs.

    python figures/make_figures.py --runs runs/ --out figures/out                  # draw only
    python figures/make_figures.py --runs runs/ --out figures/out --preset smoke   # CPU, minutes
    python figures/make_figures.py --runs runs/ --out figures/out --preset mini --jobs 2  # ~1 h
    python figures/make_figures.py --runs runs/ --out figures/out --preset paper   # + GPU commands

Runs are found by name, ``<runs>/<model>-<norm>-<preset>[-seed<N>]/`` (what
``analyses/train.py`` writes by default). Without ``--preset`` each figure is drawn from
the ``paper`` runs if all of them exist, else from the ``mini`` runs, else from the
``smoke`` runs; ``--preset paper`` also prints the GPU commands of every paper-scale run;
``--preset smoke`` / ``--preset mini`` first train that preset's runs that are missing
(resuming stopped ones; ``--jobs N`` trains N at once, one thread each); ``mini`` also
writes ``summary.md`` / ``summary.csv`` / ``growth.csv``, the measured numbers.

Exit status: 0 when every figure was drawn; 1 when a figure was skipped for missing runs
(each missing run is named with the command that makes it); 2 for bad arguments or a
``--runs`` folder that is missing or holds none of the runs (one line on stderr, then the
commands that make them; nothing is written). The work is done by
:mod:`stability.experiments.paper_figures`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stability.experiments.cli import OneLineParser, config_from_args, one_line, positive_int
from stability.experiments.paper_figures import FIGURES, FiguresConfig, NoRunsError, run
from stability.paper.train import PRESETS

PROG = "make_figures.py"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = OneLineParser(prog=PROG, description="Regenerate Figures 2-4 of Gitman & Ginsburg (2017).")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="folder of run directories")
    p.add_argument("--out", type=Path, default=Path("figures/out"), help="output folder")
    p.add_argument(
        "--preset", choices=PRESETS, default=None,
        help="smoke / mini: train that preset's missing CPU runs first (smoke: minutes, a "
             "pipeline check; mini: about an hour, the paper's claims); paper: print the "
             "GPU commands",
    )  # fmt: skip
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="runs trained at once by smoke / mini, one thread each (default 1)",
    )
    p.add_argument(
        "--only", choices=[f.name for f in FIGURES], action="append",
        help="draw only this figure (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars while training")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the figures; returns the exit status (0, 1 when a figure was skipped, 2)."""
    args = build_parser().parse_args(argv)
    only = tuple(args.only) if args.only else None
    try:
        config = config_from_args(FiguresConfig, args, only=only, progress=not args.no_progress)
        result = run(config)
    except NoRunsError as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        print("\n".join(error.hints), file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as error:  # e.g. Fashion-MNIST not found
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 2
    for line in [*result.commands, *result.notes, *(f"wrote {p}" for p in result.written)]:
        print(line)
    for message in result.skipped:
        print(message, file=sys.stderr)
    print(f"{len(result.written)} files in {result.seconds:.0f} s")
    return 1 if result.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
