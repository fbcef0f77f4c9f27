#!/usr/bin/env python
"""The paper's 50-layer linear network experiment (Gitman & Ginsburg 2017, section 5).

A bias-free, purely linear 50-layer network with 64-unit hidden layers is trained with
SGD (momentum 0.9) on Fashion-MNIST for every normalization, learning rate and seed;
every layer is recorded every step by the Recorder. The script reports, per run, when
training diverged, how fast the signal grew with depth before it did, and how coherent
the weight rows had become, then draws the four-panel figure.

    python analyses/deep_linear_divergence.py                   # the full default sweep
    python analyses/deep_linear_divergence.py --preset quick    # a few seconds, for CI

Outputs (in --out, never overwritten): records.parquet, losses.csv, summary.csv,
config.json, deep_linear_divergence.png and the CSV behind each panel. The work is done by
:func:`stability.experiments.divergence_sweep.run`.
"""

from __future__ import annotations

import sys

from stability.experiments.cli import (
    OneLineParser,
    add_data_arguments,
    comma_list,
    config_from_args,
    nonnegative_int,
    one_line,
    one_of,
    parse_with_preset,
    positive_float,
    positive_int,
)
from stability.paper.names import DEEP_LINEAR_NORMS

PROG = "deep_linear_divergence.py"

#: ``--preset quick``: a few-second version of the default sweep, for CI and a first look;
#: any flag given beside it overrides it.
PRESETS: dict[str, dict] = {
    "default": {},
    "quick": {"lrs": (1e-3, 0.1, 1.0), "seeds": (0,), "iters": 40, "subset": 4096},
}


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog=PROG,
        description="Deep linear network divergence under WN / BN / no normalization "
        "(Gitman & Ginsburg 2017, section 5). Defaults: the paper's setting, 9 learning "
        "rates log-spaced from 1e-4 to 1, 3 seeds, 100 iterations.",
    )
    p.add_argument(
        "--preset",
        choices=("default", "quick"),
        default="default",
        help="quick: 3 lrs, 1 seed, 40 iterations, 4096 samples (seconds)",
    )
    p.add_argument(
        "--norms",
        type=comma_list(one_of(DEEP_LINEAR_NORMS, "norm")),
        help="comma-separated normalizations (default none,wn,bn)",
    )
    p.add_argument("--lrs", type=comma_list(positive_float), help="comma-separated learning rates")
    p.add_argument("--seeds", type=comma_list(nonnegative_int), help="comma-separated seeds")
    p.add_argument("--iters", type=positive_int, help="iteration limit per run (default 100)")
    p.add_argument("--depth", type=positive_int, help="linear layers (default 50)")
    p.add_argument("--width", type=positive_int, help="hidden width (default 64)")
    p.add_argument("--batch-size", type=positive_int, help="mini-batch size (default 256)")
    add_data_arguments(p)
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/deep_linear/<timestamp>); must be new or empty",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default 1: robust on a shared CPU; 2 is ~1.4x faster "
        "on 2 idle cores, many times slower on loaded ones; same results either way)",
    )
    p.add_argument(
        "--threshold",
        type=positive_float,
        help="divergence when a layer's output rms exceeds this (default 1e6)",
    )
    p.add_argument(
        "--warning-factor",
        type=positive_float,
        help="early warning when the fitted per-layer growth factor reaches this",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_with_preset(build_parser(), argv, PRESETS)
    import torch

    from stability.experiments.divergence_sweep import SweepConfig, format_table, run, verdict

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
        config = config_from_args(
            SweepConfig,
            args,
            device=device,
            data_dir=None if args.data_dir is None else str(args.data_dir),
            progress=not args.no_progress,
        )
        result = run(config, args.out)
    except (RuntimeError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    print("\n" + format_table(result.summary))
    print(f"\n{verdict(result.summary, config.iters)}")
    print(
        f"{len(result.summary)} runs on {device} in {result.total_seconds:.1f} s "
        f"(training {result.train_seconds:.1f} s); results in {result.out}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
