"""The entry point: :func:`train` checks the run directory, builds a run's parts, runs them.

Order: join the process group (torchrun), refuse a bad run directory before any slow
set-up (:func:`stability.records.runs.check_run_dir`), with ``resume`` check the config
against the stored one, then build data, network and optimizer
(:mod:`stability.paper.train.setup`), create (or reopen) the run directory, and hand
everything to a :class:`~stability.paper.train.loop.Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from stability.paper.train.config import TrainConfig, resumed_config
from stability.paper.train.distributed import barrier, init_distributed, resolve_device
from stability.paper.train.loop import Trainer, TrainResult
from stability.paper.train.setup import (
    build_data,
    build_network,
    build_optimization,
    prepare_process,
)
from stability.records.runs import DIVERGENCE, RunDir, check_run_dir, open_run

__all__ = ["train"]


def _resume_config(config: TrainConfig) -> TrainConfig:
    """The stored config of ``config.out`` with ``config``'s runtime fields (checked)."""
    run = RunDir(config.out)
    stored = TrainConfig.from_dict(run.read_config())
    config = resumed_config(stored, config, str(run.path))
    if (run.path / DIVERGENCE).exists():
        raise ValueError(
            f"{run.path} diverged ({DIVERGENCE}); a diverged run is not resumed, start a new "
            "one with --force"
        )
    return config


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``config`` in its run directory ``config.out`` (see the package docstring).

    Args:
        config: the run. With ``resume`` it must equal the stored config except for
            :data:`~stability.paper.train.config.RUNTIME_FIELDS`.
        resume: continue the run in ``config.out`` from its checkpoint (a run that was
            never checkpointed starts from the beginning).
        force: start a new run even if ``config.out`` holds one (it is renamed to
            ``<out>.old-<timestamp>``, never deleted).
        max_steps: stop, resumably, once this many optimizer steps are done (counting
            from the start of the run; a scheduled interruption, not part of the config).
        progress: show tqdm progress bars (rank 0).
        on_step: called with the global step count after every optimizer step.

    Returns:
        A :class:`TrainResult`.

    Raises:
        RunExistsError: ``config.out`` holds a run and neither resume nor force is set, or
            is a file, or ``force`` names a folder that holds no run.
        NotADirectoryError: ``config.out`` lies under a file.
        ValueError: resume with a different config, of a diverged run, or bad settings.
        FileNotFoundError: missing data, or resume of a directory without a run.
    """
    dist = init_distributed(config.device)
    recorder = None
    try:
        if dist.is_main:  # fail before the slow set-up, create the directory after it
            check_run_dir(config.out, resume=resume, force=force)
        if resume:
            config = _resume_config(config)
        device = resolve_device(config.device, dist)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        prepare_process(config, device)
        data = build_data(config, dist, device)
        net, recorder = build_network(config, data.info, device, dist)
        total_steps = data.steps_per_epoch * config.epochs
        optim = build_optimization(config, net.module, total_steps, device)
        if dist.is_main:
            open_run(config.out, None, resume=resume, force=force, world_size=dist.world_size)
        barrier(dist)
        run = RunDir(config.out, dist.rank, dist.world_size)
        trainer = Trainer(config, dist, run, data, net, optim, recorder)
        return trainer.fit(resume, max_steps, progress, on_step)
    finally:
        if recorder is not None:
            recorder.close()
        if dist.owns_group:
            torch.distributed.destroy_process_group()
