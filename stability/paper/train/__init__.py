"""Training cifar10-nv and ResNet-50 with any normalization, recorded by the Recorder.

The library half of ``analyses/train.py`` (Gitman & Ginsburg 2017, sections 4.1 and 4.2),
one module per concern:

* :mod:`~stability.paper.train.config`: the frozen :class:`TrainConfig` and the paper's
  hyper-parameters (:func:`preset_config`); imports no torch;
* :mod:`~stability.paper.train.schedules`: the learning-rate schedules (their maths);
* :mod:`~stability.paper.train.distributed`: devices, DDP under torchrun, collectives;
* :mod:`~stability.paper.train.setup`: data order, network (Recorder, DDP, compile, amp),
  optimizer, built from a config;
* :mod:`~stability.paper.train.meters`: accuracy/loss sums and the non-finite loss, on the
  device;
* :mod:`~stability.paper.train.checkpoint`: checkpoint contents, atomic saving with a
  fallback, exact resume, consistency of history and records on resume;
* :mod:`~stability.paper.train.loop`: the :class:`~stability.paper.train.loop.Trainer`
  (steps, epochs, evaluation, divergence, SIGTERM);
* :mod:`~stability.paper.train.launch`: :func:`train`, which builds everything, trains
  with SGD + momentum, evaluates every epoch, and keeps the run directory of
  :mod:`stability.records.runs` (config, history, records, checkpoints) up to date.

The names below are imported on first use, so ``from stability.paper.train import
preset_config`` (or importing :mod:`~stability.paper.train.config`) does not load torch.
"""

from __future__ import annotations

from stability.lazy import lazy_exports

_WHERE = {
    "AMP_MODES": "config",
    "MINI_SEEDS": "config",
    "MODELS": "config",
    "PRESETS": "config",
    "RUNTIME_FIELDS": "config",
    "SCHEDULES": "config",
    "TrainConfig": "config",
    "preset_config": "config",
    "resumed_config": "config",
    "run_name": "config",
    "StepSchedule": "schedules",
    "linear_lr": "schedules",
    "poly_lr": "schedules",
    "schedule_lr": "schedules",
    "build_model": "setup",
    "epoch_seed": "setup",
    "topk_correct": "meters",
    "TrainResult": "loop",
    "Trainer": "loop",
    "train": "launch",
}

__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, {n: f"{__name__}.{m}" for n, m in _WHERE.items()})
