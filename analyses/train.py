#!/usr/bin/env python
"""Train cifar10-nv or ResNet-50 with any normalization, recording every conv/linear layer.

A thin CLI over :mod:`stability.paper.training` (Gitman & Ginsburg 2017, sections 4.1 and 4.2)::

    # the paper's runs (GPU; see figures/make_figures.py --preset paper for all of them)
    python analyses/train.py --model cifar10_nv --norm wn --preset paper
    torchrun --standalone --nproc_per_node 4 analyses/train.py --model resnet50 --norm bn \\
        --preset paper --data-dir /data/imagenet --amp bf16
    # a few minutes on a CPU, Fashion-MNIST
    python analyses/train.py --model cifar10_nv --norm bn --preset smoke
    # continue a stopped run (same run directory, contiguous steps)
    python analyses/train.py --out runs/cifar10_nv-bn-smoke --resume

``--preset`` (default ``paper``) sets the paper's hyper-parameters for the model and the
normalization; every flag given explicitly overrides it. The run directory (``--out``,
default ``runs/<model>-<norm>-<preset>``) receives ``config.json``, ``history.csv``,
``records.parquet/`` (one part per epoch), ``checkpoint.pt``, ``status.json`` and, if
the loss goes non-finite, ``divergence.json`` (see :mod:`stability.records.runs`).

Exit status: 0 when training finished, diverged (a result, reported in divergence.json)
or stopped at ``--max-steps``; 143 (128 + SIGTERM) after a SIGTERM, with a checkpoint
written; 2 with a one-line message for a bad argument, missing data, or an existing
``--out`` without ``--resume``/``--force``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from stability.experiments.cli import (
    OneLineParser,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from stability.paper.data import add_data_arguments
from stability.paper.normalization import NORM_KINDS
from stability.paper.training import (
    AMP_MODES,
    MODELS,
    PRESETS,
    RUNTIME_FIELDS,
    SCHEDULES,
    TrainConfig,
    preset_config,
    run_name,
    train,
)
from stability.records.runs import CONFIG, RunExistsError, read_json

SIGTERM_EXIT = 143

# CLI destination -> TrainConfig field, for flags that override the preset.
_FIELDS = {
    "dataset": "dataset",
    "data_dir": "data_dir",
    "image_size": "image_size",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "schedule": "schedule",
    "power": "power",
    "final_lr": "final_lr",
    "wd": "wd",
    "momentum": "momentum",
    "seed": "seed",
    "device": "device",
    "amp": "amp",
    "channels_last": "channels_last",
    "num_workers": "num_workers",
    "record_every": "record_every",
    "weight_every": "weight_every",
    "record_include": "include",
    "record_exclude": "exclude",
    "check_every": "check_every",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every default that a preset sets is None here)."""
    p = OneLineParser(
        description="Train cifar10-nv or ResNet-50 with BN, WN, NormProp, TReLU-WN or no "
        "normalization (Gitman & Ginsburg 2017), recording per-layer norms and coherence.",
    )
    p.add_argument("--model", choices=MODELS, help="network (required unless --resume)")
    p.add_argument("--norm", choices=NORM_KINDS, help="normalization (required unless --resume)")
    p.add_argument(
        "--preset", choices=PRESETS, default=None,
        help="hyper-parameters: the paper's (default) or a few-minute CPU smoke run",
    )  # fmt: skip
    add_data_arguments(p)
    p.set_defaults(dataset=None)
    p.add_argument(
        "--test-subset", type=positive_int, default=None,
        help="keep the first N test samples (default: as --subset)",
    )  # fmt: skip
    p.add_argument("--epochs", type=positive_int, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, help="global batch (split over GPUs)")
    p.add_argument("--lr", type=positive_float, help="initial learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate decay to --final-lr")
    p.add_argument("--power", type=positive_float, help="exponent of the poly schedule")
    p.add_argument("--final-lr", type=nonnegative_float, help="learning rate after the last step")
    p.add_argument("--wd", type=nonnegative_float, help="weight decay")
    p.add_argument("--momentum", type=nonnegative_float, help="SGD momentum (paper: 0.9)")
    p.add_argument("--seed", type=nonnegative_int, help="seed (init, data order, augmentation)")
    p.add_argument("--device", help="auto (default: CUDA if available), cpu, cuda, cuda:1")
    p.add_argument("--amp", choices=AMP_MODES, help="mixed precision (fp16 adds a GradScaler)")
    p.add_argument(
        "--compile", action="store_true", default=None,
        help="torch.compile the model (after attaching the Recorder)",
    )  # fmt: skip
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="channels_last memory format (default: on CUDA only)",
    )  # fmt: skip
    p.add_argument(
        "--deterministic", action="store_true", default=None,
        help="deterministic algorithms, no cuDNN autotuning",
    )  # fmt: skip
    p.add_argument("--num-workers", type=nonnegative_int, help="data loader worker processes")
    p.add_argument("--no-record", action="store_true", help="do not attach the Recorder")
    p.add_argument(
        "--record-every", type=positive_int,
        help="forward and gradient metrics every N steps (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--weight-every", type=positive_int,
        help="weight norm and row coherence every N steps (default 100)",
    )  # fmt: skip
    p.add_argument(
        "--record-include", action="append", metavar="GLOB",
        help="record only layers matching GLOB (repeatable; default every conv/linear)",
    )  # fmt: skip
    p.add_argument(
        "--record-exclude", action="append", metavar="GLOB",
        help="do not record layers matching GLOB (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--check-every", type=positive_int,
        help="read the loss on the host every N steps (non-finite check; default 10)",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=None,
        help="run directory (default runs/<model>-<norm>-<preset>)",
    )  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
    )
    mode.add_argument(
        "--force", action="store_true",
        help="start a new run in --out even if one exists (the old one is renamed, not deleted)",
    )  # fmt: skip
    p.add_argument(
        "--max-steps", type=positive_int, default=None,
        help="stop (resumably, with a checkpoint) after N optimizer steps of the run",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields given explicitly on the command line."""
    values = {field: getattr(args, dest) for dest, field in _FIELDS.items()}
    values = {k: v for k, v in values.items() if v is not None}
    if args.compile:
        values["compile"] = True
    if args.deterministic:
        values["deterministic"] = True
    if args.no_record:
        values["record"] = False
    if args.download:
        values["download"] = True
    if args.subset is not None or args.test_subset is not None:
        n_train = args.subset
        n_test = args.test_subset or args.subset
        if n_train is None:
            raise ValueError("--test-subset needs --subset")
        values["subset"] = (n_train, n_test)
    if "data_dir" in values:
        values["data_dir"] = str(values["data_dir"])
    return values


def _default_out(args: argparse.Namespace) -> Path:
    if args.model is None or args.norm is None:
        raise ValueError("--model and --norm are required (or --resume with --out)")
    return Path("runs") / run_name(args.model, args.norm, args.preset or "paper")


def make_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the arguments ask for (the stored one, with ``--resume``).

    Raises:
        ValueError: missing --model/--norm, a bad combination of values, or --resume with
            a flag that changes what the run computes.
    """
    values = _overrides(args)
    out = args.out if args.out is not None else _default_out(args)
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is not a directory")
    if args.resume:
        config_path = out / CONFIG
        if not config_path.is_file():
            raise ValueError(f"--resume: {out} holds no run (no {CONFIG})")
        stored = TrainConfig.from_dict(read_json(config_path))
        for key in ("model", "norm", "preset"):
            given = getattr(args, key)
            if given is not None and given != getattr(stored, key):
                stored_value = getattr(stored, key)
                raise ValueError(f"--resume: --{key} {given}, but {out} is a {stored_value} run")
        config = replace(stored, **values, out=str(out))
        changed = stored.differences(config, ignore=RUNTIME_FIELDS)
        if changed:
            shown = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
            raise ValueError(f"--resume continues the stored config; cannot change {shown}")
        return config
    if args.model is None or args.norm is None:
        raise ValueError("--model and --norm are required (or --resume with --out)")
    return preset_config(args.model, args.norm, args.preset or "paper", **values, out=str(out))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = make_config(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        result = train(
            config,
            resume=args.resume,
            force=args.force,
            max_steps=args.max_steps,
            progress=not args.no_progress,
        )
    except (RunExistsError, FileNotFoundError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    last = result.history.iloc[-1].to_dict() if len(result.history) else {}
    summary = f"{result.status}: {result.epoch} epochs, {result.step} steps -> {result.run_dir}"
    if last:
        summary += f" (test top-1 {last['test_top1']:.2f}%)"
    print(summary)
    if result.reason == "SIGTERM":
        return SIGTERM_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
