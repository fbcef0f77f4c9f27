#!/usr/bin/env python
"""The paper's 50-layer linear network experiment (Gitman & Ginsburg 2017, section 5).

A bias-free, purely linear 50-layer network with 64-unit hidden layers is trained with
SGD (momentum 0.9) on Fashion-MNIST for every normalization, learning rate and seed;
every layer is recorded every step by the Recorder. The script reports, per run, when
training diverged, how fast the signal grew with depth before it did, and how coherent
the weight rows had become, then draws the four-panel figure.

    python analyses/deep_linear_divergence.py            # the full default sweep
    python analyses/deep_linear_divergence.py --quick    # a few seconds, for CI

Outputs (in --out, never overwritten): records.parquet, losses.csv, summary.csv,
config.json, deep_linear_divergence.png and the CSV behind each panel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from stability.experiments.cli import (
    OneLineParser,
    comma_list,
    nonnegative_int,
    one_of,
    positive_float,
    positive_int,
)
from stability.experiments.divergence_figure import draw
from stability.experiments.divergence_sweep import (
    SweepConfig,
    loss_table,
    summarize,
    train_norm,
    verdict,
)
from stability.paper import data
from stability.paper.models import DEEP_LINEAR_NORMS

QUICK = {"lrs": (1e-3, 0.1, 1.0), "seeds": (0,), "iters": 40, "train_subset": 4096}
DATASETS = ("fashion-mnist", "cifar10", "imagenet", "synthetic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default = SweepConfig()
    p = OneLineParser(
        description="Deep linear network divergence under WN / BN / no normalization "
        "(Gitman & Ginsburg 2017, section 5).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--norms",
        type=comma_list(one_of(DEEP_LINEAR_NORMS, "norm")),
        default=default.norms,
        help="comma-separated normalizations (none, wn, bn)",
    )
    p.add_argument(
        "--lrs",
        type=comma_list(positive_float),
        default=default.lrs,
        help="comma-separated learning rates (default: 9 log-spaced from 1e-4 to 1)",
    )
    p.add_argument(
        "--seeds",
        type=comma_list(nonnegative_int),
        default=default.seeds,
        help="comma-separated seeds",
    )
    p.add_argument(
        "--iters", type=positive_int, default=default.iters, help="iteration limit per run"
    )
    p.add_argument("--depth", type=positive_int, default=default.depth, help="linear layers")
    p.add_argument("--width", type=positive_int, default=default.width, help="hidden width")
    p.add_argument(
        "--batch-size", type=positive_int, default=default.batch_size, help="mini-batch size"
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default=default.dataset,
        help="training data (synthetic only when asked for)",
    )
    p.add_argument("--data-dir", default=None, help="where the data set lies")
    p.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download the data set if it is not found",
    )
    p.add_argument(
        "--train-subset",
        type=positive_int,
        default=None,
        help="use only the first N training samples",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default runs/deep_linear/<timestamp>); must not exist",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--threshold",
        type=positive_float,
        default=default.threshold,
        help="divergence when a layer's output rms exceeds this",
    )
    p.add_argument(
        "--warning-factor",
        type=positive_float,
        default=default.warning_factor,
        help="early warning when the fitted per-layer growth factor reaches this",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few-second version (3 lrs, 1 seed, 40 iterations, 4096 samples)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.quick:
        given = set(a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv or sys.argv[1:]))
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    return args


def load_training_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened, per-pixel standardized training images and labels."""
    return data.flat_training_set(args.dataset, args.data_dir, args.download, args.train_subset)


def prepare_out(out: Path | None) -> Path:
    """The output folder: new, or existing and empty; never an existing run."""
    if out is None:
        out = Path("runs/deep_linear") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} already holds files; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def print_table(summary) -> None:
    """Iterations to divergence: one row per learning rate, one column per norm."""
    table = summary.groupby(["lr", "norm"], sort=False)["iteration"].median().unstack("norm")
    diverged = summary.groupby(["lr", "norm"], sort=False)["diverged"].sum().unstack("norm")
    seeds = summary.groupby(["lr", "norm"], sort=False)["seed"].count().unstack("norm")
    norms = list(table.columns)
    print("\nmedian iterations to divergence (diverged seeds / seeds)")
    print(f"{'lr':>10} " + " ".join(f"{n:>14}" for n in norms))
    for lr in table.index:
        cells = [
            f"{table.loc[lr, n]:>6.0f} ({diverged.loc[lr, n]}/{seeds.loc[lr, n]})" for n in norms
        ]
        print(f"{lr:>10.2g} " + " ".join(f"{c:>14}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError as error:
        print(f"error: --device {device!r}: {error}", file=sys.stderr)
        return 2
    config = SweepConfig(
        norms=args.norms,
        lrs=args.lrs,
        seeds=args.seeds,
        iters=args.iters,
        depth=args.depth,
        width=args.width,
        batch_size=args.batch_size,
        threshold=args.threshold,
        warning_factor=args.warning_factor,
        dataset=args.dataset,
        data_dir=args.data_dir,
        device=device,
        extra={"train_subset": args.train_subset},
    )
    try:
        x, y = load_training_data(args)
        out = prepare_out(args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.batch_size > len(x):
        print(
            f"error: --batch-size {args.batch_size} exceeds the {len(x)} training samples",
            file=sys.stderr,
        )
        return 2
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    from tqdm import tqdm

    torch.set_flush_denormal(True)  # tiny values near divergence must not slow the CPU down

    started = time.perf_counter()
    total = len(config.norms) * config.iters
    summaries, records, losses = [], [], []
    with tqdm(total=total, desc="sweep", unit="step", disable=args.no_progress) as bar:
        for norm in config.norms:
            bar.set_postfix_str(f"{norm}: {len(config.lrs) * len(config.seeds)} runs")
            sweep = train_norm(norm, x, y, config, progress=bar.update)
            summary, kept = summarize(sweep, config)
            summaries.append(summary)
            records.append(kept)
            losses.append(loss_table(sweep))
    import pandas as pd

    summary = pd.concat(summaries, ignore_index=True)
    pd.concat(records, ignore_index=True).to_parquet(out / "records.parquet", index=False)
    pd.concat(losses, ignore_index=True).to_csv(out / "losses.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    trained = time.perf_counter() - started
    draw(pd.concat(records, ignore_index=True), summary, out)
    elapsed = time.perf_counter() - started

    print_table(summary)
    print(f"\n{verdict(summary, config.iters)}")
    print(
        f"{len(summary)} runs on {device} in {elapsed:.1f} s (training {trained:.1f} s); "
        f"results in {out}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
