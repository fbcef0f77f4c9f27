#!/usr/bin/env python
"""Train cifar10-nv or ResNet-50 with any normalization, recording every conv/linear layer.

A thin CLI over :mod:`stability.paper.train` (Gitman & Ginsburg 2017, sections 4.1 and 4.2)::

    # the paper's runs (GPU; see figures/make_figures.py --preset paper for all of them)
    python analyses/train.py --model cifar10_nv --norm wn --preset paper
    torchrun --standalone --nproc_per_node 4 analyses/train.py --model resnet50 --norm bn \\
        --preset paper --data-dir /data/imagenet --amp bf16
    # a few minutes on a CPU, Fashion-MNIST
    python analyses/train.py --model cifar10_nv --norm bn --preset smoke
    # continue a stopped run (same run directory, contiguous steps)
    python analyses/train.py --out runs/cifar10_nv-bn-smoke --resume

``--preset`` (default ``paper``) sets the paper's hyper-parameters for the model and the
normalization; every flag given explicitly overrides it. With ``--resume`` the stored
config plays the preset's part, and only flags that change where and how the run runs
(device, workers, ...) may differ from it. The run directory (``--out``, default
``runs/<model>-<norm>-<preset>``) receives ``config.json``, ``history.csv``,
``records.parquet/`` (one part per epoch), ``checkpoint.pt``, ``status.json`` and, if the
loss goes non-finite, ``divergence.json`` (see :mod:`stability.records.runs`).

Exit status: 0 when training finished, diverged (a result, reported in divergence.json)
or stopped at ``--max-steps``; 143 (128 + SIGTERM) after a SIGTERM, with a checkpoint
written and the command that resumes the run printed; 2 with a one-line message for a bad
argument, missing data, or an ``--out`` that cannot take the run (it holds a run and
neither ``--resume`` nor ``--force`` is given, is a file, or lies under one), checked
before any slow set-up.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from stability.experiments.cli import one_line
from stability.paper.train.options import parse

SIGTERM_EXIT = 143


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` (torchrun under DDP)."""
    relative = os.path.relpath(__file__)
    script = __file__ if relative.startswith("..") else relative
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    launch = ["torchrun", "--nproc_per_node", str(world)] if world > 1 else ["python"]
    return shlex.join([*launch, script, "--out", str(run_dir), "--resume"])


def main(argv: list[str] | None = None) -> int:
    config, args = parse(argv)  # exits 2 with a one-line message on a bad input
    from stability.paper.train import train  # torch: only now

    try:
        result = train(config, resume=args.resume, force=args.force, max_steps=args.max_steps,
                       progress=not args.no_progress)  # fmt: skip
    except (OSError, ValueError) as error:
        print(f"train.py: error: {one_line(error)}", file=sys.stderr)
        return 2
    last = result.history.iloc[-1].to_dict() if len(result.history) else {}
    summary = f"{result.status}: {result.epoch} epochs, {result.step} steps -> {result.run_dir}"
    if last:
        summary += f" (test top-1 {last['test_top1']:.2f}%)"
    print(summary)
    if result.status == "stopped":
        print(f"stopped ({result.reason}); resume with: {resume_command(result.run_dir)}")
    return SIGTERM_EXIT if result.reason == "SIGTERM" else 0


if __name__ == "__main__":
    sys.exit(main())
