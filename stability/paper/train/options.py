"""The options of ``analyses/train.py`` and how they become a :class:`TrainConfig`.

``--preset`` (default ``paper``) supplies every value the command line does not give
(:func:`stability.experiments.cli.parse_with_preset`); with ``--resume`` the run's stored
config plays that part, and only :data:`~stability.paper.train.config.RUNTIME_FIELDS` may
differ from it. Every flag's destination is its TrainConfig field, so one
:func:`stability.experiments.cli.config_from_args` call builds the config. The
``--out`` folder is checked (:func:`stability.records.runs.check_run_dir`) before anything
slow happens. Imports no torch: ``--help`` and bad arguments are answered at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from stability.experiments.cli import (
    OneLineParser,
    add_data_arguments,
    config_from_args,
    nonnegative_float,
    nonnegative_int,
    one_line,
    parse_with_preset,
    positive_float,
    positive_int,
)
from stability.paper.names import NORM_KINDS
from stability.paper.train.config import (
    AMP_MODES,
    MODELS,
    PRESETS,
    SCHEDULES,
    WARNING_ACTIONS,
    TrainConfig,
    preset_config,
    resumed_config,
    run_name,
)
from stability.records.runs import RunDir, check_run_dir

__all__ = ["build_parser", "make_config", "parse"]

#: Config fields whose flag is not ``--<field>``.
_FLAGS = {"include": "--record-include", "exclude": "--record-exclude", "record": "--no-record"}


def build_parser() -> argparse.ArgumentParser:
    """The parser; a flag's destination is its TrainConfig field (the preset fills the rest)."""
    p = OneLineParser(
        description="Train cifar10-nv or ResNet-50 with BN, WN, NormProp, TReLU-WN or no "
        "normalization (Gitman & Ginsburg 2017), recording per-layer norms and coherence.",
    )
    add = p.add_argument
    add("--model", choices=MODELS, help="network (required unless --resume)")
    add("--norm", choices=NORM_KINDS, help="normalization (required unless --resume)")
    add("--preset", choices=PRESETS, default="paper",
        help="hyper-parameters: the paper's (default), mini (the paper's claims at CPU "
             "scale, minutes per run) or smoke (a one-minute pipeline check)")  # fmt: skip
    add_data_arguments(p)
    add("--test-subset", type=positive_int, help="keep the first N test samples (default --subset)")
    add("--width", type=positive_float, help="channel multiplier of the network (paper: 1)")
    add("--epochs", type=positive_int, help="training epochs")
    add("--batch-size", type=positive_int, help="global batch (split over GPUs)")
    add("--lr", type=positive_float, help="initial learning rate")
    add("--schedule", choices=SCHEDULES, help="learning-rate decay to --final-lr")
    add("--power", type=positive_float, help="exponent of the poly schedule")
    add("--final-lr", type=nonnegative_float, help="learning rate after the last step")
    add("--wd", type=nonnegative_float, help="weight decay")
    add("--momentum", type=nonnegative_float, help="SGD momentum (paper: 0.9)")
    add("--seed", type=nonnegative_int, help="seed (init, data order, augmentation)")
    add("--device", help="auto (default: CUDA if available), cpu, cuda, cuda:1")
    add("--threads", type=positive_int,
        help="torch intra-op CPU threads (default: one per core; shared CPU: 1)")  # fmt: skip
    add("--amp", choices=AMP_MODES, help="mixed precision (fp16 adds a GradScaler)")
    add("--compile", action="store_true", help="torch.compile the model (after the Recorder)")
    add("--channels-last", action=argparse.BooleanOptionalAction,
        help="channels_last memory format (default: on CUDA only)")  # fmt: skip
    add("--deterministic", action="store_true", help="deterministic algorithms, no autotuning")
    add("--num-workers", type=nonnegative_int, help="data loader worker processes")
    add("--no-record", dest="record", action="store_false", help="do not attach the Recorder")
    add("--record-every", type=positive_int, help="forward/gradient metrics every N steps (1)")
    add("--weight-every", type=positive_int, help="weight norm, coherence every N steps (100)")
    add("--record-include", dest="include", action="append", metavar="GLOB",
        help="record only layers matching GLOB (repeatable; default: all conv/linear)")  # fmt: skip
    add("--record-exclude", dest="exclude", action="append", metavar="GLOB",
        help="do not record layers matching GLOB (repeatable)")  # fmt: skip
    add("--check-every", type=positive_int, help="read the loss on the host every N steps (10)")
    add("--on-warning", choices=WARNING_ACTIONS,
        help="when the live divergence monitor warns: log it (default); also checkpoint, "
             "stop cleanly, or lower the lr 10x; none: no monitor")  # fmt: skip
    add("--out", type=Path,
        help="run directory (default runs/<model>-<norm>-<preset>[-seed<N>])")  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--force", action="store_true",
                      help="start a new run in --out (an old run is renamed)")  # fmt: skip
    add("--max-steps", type=positive_int,
        help="stop (resumably, with a checkpoint) after N optimizer steps of the run")  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bars")
    return p


def _subset(given: argparse.Namespace, args: argparse.Namespace) -> tuple[int, int] | None:
    """``(n_train, n_test)`` from --subset/--test-subset as typed, else the preset's."""
    if given.subset is not None:
        return (given.subset, given.test_subset or given.subset)
    if given.test_subset is not None:
        raise ValueError("--test-subset needs --subset")
    return args.subset


def make_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[TrainConfig, argparse.Namespace]:
    """``(config, args)``: the preset (or, with --resume, the stored config) plus the flags.

    Raises:
        ValueError, OSError: a bad combination of values, an ``--out`` that cannot take
            the run (:func:`stability.records.runs.check_run_dir`), or --resume with a flag
            that changes what the run computes.
    """
    given = parser.parse_args(argv)  # as typed: --help and usage errors end here
    if (given.out is None or not given.resume) and (given.model is None or given.norm is None):
        raise ValueError("--model and --norm are required (or --resume with --out)")
    out = given.out or Path("runs") / run_name(
        given.model, given.norm, given.preset, given.seed or 0
    )
    if given.data_dir is not None and not given.data_dir.is_dir():
        raise ValueError(f"--data-dir {given.data_dir} is not a directory")
    check_run_dir(out, resume=given.resume, force=given.force)
    if given.resume:
        stored = TrainConfig.from_dict(RunDir(out).read_config())
        args = parser.parse_args(argv, namespace=argparse.Namespace(**stored.to_dict()))
    else:
        presets = {
            name: preset_config(given.model, given.norm, name, out=str(out)).to_dict()
            for name in PRESETS
        }
        args = parse_with_preset(parser, argv, presets)
    config = config_from_args(TrainConfig, args, subset=_subset(given, args), out=str(out))
    if given.resume:
        resumed_config(stored, config, str(out), _flag)
    return config, args


def _flag(field: str) -> str:
    """The command-line flag that sets TrainConfig ``field``."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def parse(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """:func:`make_config` with :func:`build_parser`; a bad input exits 2 with one line."""
    parser = build_parser()
    try:
        return make_config(parser, argv)
    except (OSError, ValueError) as error:
        parser.error(one_line(error))
        raise  # not reached: parser.error exits
