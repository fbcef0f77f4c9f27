r"""Training cifar10-nv and ResNet-50 with any normalization, recorded by the Recorder.

The library half of ``analyses/train.py``: a frozen :class:`TrainConfig`, the paper's
hyper-parameters (:func:`preset_config`), the learning-rate schedules, and :func:`train`,
which builds everything, trains with SGD + momentum, evaluates every epoch, and keeps the
run directory of :mod:`stability.records.runs` (config, history, records, checkpoints) up to date.

Learning-rate schedules, step-wise. With :math:`t` the 0-based optimizer step,
:math:`T` the total number of steps (``epochs * steps_per_epoch``), :math:`\eta_0` the
initial and :math:`\eta_T` the final learning rate, step :math:`t` uses

* ``linear``: :math:`\eta(t) = \eta_0 + (\eta_T - \eta_0)\, t / T`;
* ``poly``: :math:`\eta(t) = \eta_T + (\eta_0 - \eta_T)\, (1 - t / T)^p`
  (Caffe's ``poly`` policy when :math:`\eta_T = 0`);

so :math:`\eta(0) = \eta_0` and :math:`\eta(T) = \eta_T` (the value after the last step;
the last step itself uses :math:`\eta(T - 1)`). The paper (section 4.1, footnote 3;
section 4.2) gives the per-algorithm choices, encoded in :func:`preset_config`.

The loop, per optimizer step: forward under autocast (``amp``), cross-entropy in float32,
backward (through the GradScaler for ``fp16``), ``optimizer.step()``,
``scheduler.step()``, ``recorder.step()``. Nothing in a step reads a device value on the
host: the running loss/accuracy sums and the first non-finite loss are kept on the
device and read every ``check_every`` steps and at the end of each epoch.

Divergence. Training stops when the (unscaled, float32) loss is non-finite. The step is
exact (tracked on the device); the check happens at the next check point, so up to
``check_every - 1`` further steps run and are recorded (their values are NaN). The
records are flushed, ``divergence.json`` names that step and the first layer in depth
order whose output went non-finite (:func:`stability.fitting.divergence_onset` on the
records of the current epoch, ``output_norm``), and :func:`train` returns with status
``"diverged"``; no checkpoint is written over the last good one, and a diverged run
cannot be resumed. With ``amp="fp16"`` a step the GradScaler skips because the *scaled*
gradients overflowed is not divergence: the loss is finite, the scaler lowers its scale
and training goes on (the scale at each epoch end is in history.csv, ``amp_scale``).
Note that the Recorder's ``grad_norm`` is then the norm of the scaled gradient (the
true norm times the scale of that step).

Checkpoints and resume. At the end of every epoch (and on SIGTERM or ``max_steps``) a
checkpoint holds the model, optimizer, scheduler and scaler states, every process's RNG
states (torch, CUDA, numpy, python), the position (epoch, batch within the epoch, global
step), the partial-epoch accuracy sums, and the history rows (see :mod:`stability.records.runs`
for the file order). The data order is a pure function of ``(seed, epoch)``: the
training loader always uses a :class:`~torch.utils.data.DistributedSampler` (one replica
without DDP) re-seeded by ``set_epoch(epoch)``, and an in-memory data set's augmentation
stream is re-seeded to ``hash(seed, epoch)`` at the start of every epoch
(:meth:`stability.paper.data.TensorImageDataset.reseed`). Resuming inside an epoch re-seeds the
epoch, loads and discards the batches already done (for data loaded in the main
process; cheap for in-memory data), *then* restores the RNG states, so the rest of the
epoch sees exactly the samples, augmentations and random numbers of an uninterrupted
run: on a deterministic device history and records are identical. With loader worker
processes (``num_workers > 0``) the skipped batches are not loaded at all (a sampler
that starts at the right batch) and the order is still exact, but augmentations drawn
inside workers are not reproducible across a restart.

Recorder. Attached by default to every conv/linear layer, forward and gradient metrics
every ``record_every`` steps, weight metrics every ``weight_every`` steps. It is
attached to the bare model before DDP wrapping and before ``torch.compile``. Its step
counter is advanced to the global step on resume, so the ``step`` column is the global
0-based optimizer step in every part, and ``record_every``/``weight_every`` keep their
phase. Evaluation runs under ``recorder.paused()``. Records are written as one parquet
part per epoch with :meth:`stability.Recorder.pop_frame`.

Devices. ``device="auto"`` is CUDA when available. On CUDA the model and inputs use
channels_last by default and cuDNN autotuning (unless ``deterministic``). ``amp="bf16"``
autocasts to bfloat16 (CPU or CUDA, no scaler); ``amp="fp16"`` autocasts to float16 with
a :class:`torch.amp.GradScaler` (meant for CUDA; it also runs, slowly, on CPU).
``compile=True`` wraps the (DDP) model in :func:`torch.compile` after the Recorder is
attached (its hooks run eagerly, graph breaks around recorded layers).

Multi-GPU. Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process
group is initialized (NCCL on CUDA, gloo on CPU), each process takes
``batch_size / world_size`` samples per step (``batch_size`` is the global batch, 256 =
4 x 64 in the paper), the model is wrapped in DDP, and BatchNorm keeps per-GPU batch
statistics (no SyncBatchNorm), as in the paper (footnote 4). Every rank records its own
layers into ``part-XXXXX-rank{r}.parquet`` (with a ``rank`` column); rank 0 writes the
history (accuracies and losses summed over ranks), checkpoints and status. The test
set is split over the ranks by a DistributedSampler, which repeats a few samples to
make equal shards.

Input channels. cifar10-nv is built with the data set's channels (1 for Fashion-MNIST,
3 for CIFAR-10); torchvision's ResNet-50 keeps its 3-channel stem, and a grey image is
repeated over the three channels (``expand``, no copy) rather than altering the
architecture. cifar10-nv needs 28 x 28 inputs (Table 2); ResNet-50 takes any size
>= 28 or so (at 28 x 28 ``layer4`` works on 1 x 1 maps).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Sampler

from stability import fitting
from stability.paper.data import DatasetInfo, build_datasets, canonical_name, make_loader
from stability.paper.normalization import check_norm_kind
from stability.records.recorder import FORWARD_METRICS, Recorder
from stability.records.runs import DIVERGENCE, RunDir, check_run_dir, open_run, write_json_atomic

__all__ = [
    "AMP_MODES",
    "MODELS",
    "PRESETS",
    "RUNTIME_FIELDS",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "epoch_seed",
    "linear_lr",
    "poly_lr",
    "preset_config",
    "run_name",
    "schedule_lr",
    "topk_correct",
    "train",
]

MODELS: tuple[str, ...] = ("cifar10_nv", "resnet50")
SCHEDULES: tuple[str, ...] = ("linear", "poly")
AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")
PRESETS: tuple[str, ...] = ("paper", "smoke")

#: Fields that may differ when a run is resumed: where and how it runs, not what it
#: computes (``compile`` can change rounding, not the maths).
RUNTIME_FIELDS: frozenset[str] = frozenset(
    {"device", "num_workers", "compile", "check_every", "out", "data_dir", "download"}
)

CHECKPOINT_FORMAT = 1
TOPK = (1, 5)


# =========================================================================== config


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (written to ``config.json``).

    Attributes:
        model: ``cifar10_nv`` or ``resnet50``.
        norm: one of :data:`stability.paper.normalization.NORM_KINDS`.
        dataset: one of :data:`stability.paper.data.DATASETS`.
        data_dir: searched first for the data (see :mod:`stability.paper.data`).
        download: let torchvision download Fashion-MNIST / CIFAR-10 if missing.
        image_size: input side (None: the data set's default, 28 or 224).
        subset: ``(n_train, n_test)`` first samples kept (an int sets both); None: all.
        epochs: training epochs.
        batch_size: global mini-batch (split evenly over DDP processes).
        lr: initial learning rate :math:`\\eta_0`.
        schedule: ``linear`` or ``poly`` (see the module docstring).
        power: exponent :math:`p` of ``poly``.
        final_lr: :math:`\\eta_T`, the learning rate after the last step.
        wd: weight decay (L2, SGD's ``weight_decay``, on every parameter as in Caffe).
        momentum: SGD momentum.
        seed: seeds model init, data order and augmentation.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``, ...
        amp: ``none``, ``bf16`` or ``fp16`` (with a GradScaler).
        compile: wrap the model in :func:`torch.compile`.
        channels_last: channels_last memory format; None: on CUDA only.
        deterministic: deterministic algorithms, no cuDNN autotuning.
        num_workers: loader worker processes (None: :func:`stability.paper.data.make_loader`'s).
        record: attach the Recorder.
        record_every: forward/gradient metrics every this many steps.
        weight_every: weight metrics (norm, coherence) every this many steps.
        include: glob(s) of layer names to record (None: every conv/linear layer).
        exclude: glob(s) of layer names not to record.
        check_every: read the loss sums/non-finite flag every this many steps.
        out: the run directory.
        preset: the preset the config came from (informational).
    """

    model: str = "cifar10_nv"
    norm: str = "bn"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    subset: tuple[int, int] | None = None
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.01
    schedule: str = "linear"
    power: float = 2.0
    final_lr: float = 1e-5
    wd: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    compile: bool = False
    channels_last: bool | None = None
    deterministic: bool = False
    num_workers: int | None = None
    record: bool = True
    record_every: int = 1
    weight_every: int = 100
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    check_every: int = 10
    out: str = "runs/run"
    preset: str | None = None

    def __post_init__(self) -> None:
        set_ = partial(object.__setattr__, self)
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        check_norm_kind(self.norm)
        set_("dataset", canonical_name(self.dataset))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {SCHEDULES}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp mode {self.amp!r}; choose from {AMP_MODES}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {PRESETS}")
        for name in ("epochs", "batch_size", "record_every", "weight_every", "check_every"):
            _positive_int(name, getattr(self, name))
        if self.image_size is not None:
            _positive_int("image_size", self.image_size)
        if self.num_workers is not None and (
            not isinstance(self.num_workers, int) or self.num_workers < 0
        ):
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.final_lr) and 0 <= self.final_lr <= self.lr):
            raise ValueError(f"final_lr must be in [0, lr={self.lr}], got {self.final_lr!r}")
        if not (math.isfinite(self.power) and self.power > 0):
            raise ValueError(f"power must be a positive number, got {self.power!r}")
        if not (math.isfinite(self.wd) and self.wd >= 0):
            raise ValueError(f"wd must be >= 0, got {self.wd!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.model == "cifar10_nv" and self.image_size not in (None, 28):
            raise ValueError(f"cifar10_nv takes 28x28 inputs (Table 2), not {self.image_size}")
        set_("subset", _subset_pair(self.subset))
        set_("include", _globs(self.include))
        set_("exclude", _globs(self.exclude))
        if self.data_dir is not None:
            set_("data_dir", str(self.data_dir))
        set_("out", str(self.out))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys (e.g. ``meta``) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        for key in ("subset", "include", "exclude"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def differences(self, other: TrainConfig, ignore: frozenset[str] = RUNTIME_FIELDS):
        """``{field: (self's, other's)}`` for fields that differ, except ``ignore``."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        }


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _subset_pair(subset: Any) -> tuple[int, int] | None:
    if subset is None:
        return None
    pair = (subset, subset) if isinstance(subset, int) else tuple(subset)
    if len(pair) != 2:
        raise ValueError(f"subset must be an int or a pair (n_train, n_test), got {subset!r}")
    for n in pair:
        _positive_int("subset", n)
    return (int(pair[0]), int(pair[1]))


def _globs(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def run_name(model: str, norm: str, preset: str) -> str:
    """The conventional run directory name, ``<model>-<norm>-<preset>``."""
    return f"{model}-{norm}-{preset}"


# ------------------------------------------------------------------ presets

# cifar10-nv, section 4.1 and footnote 3: schedule, final lr and weight decay per norm.
_CIFAR_PER_NORM: dict[str, dict[str, Any]] = {
    "np": {"schedule": "poly", "power": 2.0, "final_lr": 1e-5, "wd": 1e-3},
    "trelu": {"schedule": "poly", "power": 2.0, "final_lr": 1e-5, "wd": 1e-3},
    "wn": {"schedule": "linear", "final_lr": 1e-4, "wd": 0.0},
    "bn": {"schedule": "linear", "final_lr": 1e-5, "wd": 2e-3},
    "none": {"schedule": "linear", "final_lr": 1e-5, "wd": 0.0},
}
_CIFAR_PAPER = {"dataset": "cifar10", "epochs": 256, "batch_size": 128, "lr": 0.01}
# ResNet-50, section 4.2 and footnote 4 (the same for every norm).
_RESNET_PAPER = {
    "dataset": "imagenet",
    "epochs": 120,
    "batch_size": 256,
    "lr": 0.1,
    "schedule": "poly",
    "power": 2.0,
    "final_lr": 0.0,
    "wd": 1e-4,
}
# Smoke runs: Fashion-MNIST subsets, a few minutes on a 2-core CPU. ResNet-50's learning
# rate is the paper's scaled linearly with the batch (0.1 * 32 / 256).
_SMOKE = {
    "cifar10_nv": {
        "dataset": "fashion-mnist",
        "subset": (384, 256),
        "epochs": 3,
        "batch_size": 64,
        "weight_every": 2,
    },
    "resnet50": {
        "dataset": "fashion-mnist",
        "image_size": 28,
        "subset": (384, 256),
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.1 * 32 / 256,
        "weight_every": 3,
    },
}


def preset_config(model: str, norm: str, preset: str = "paper", **overrides: Any) -> TrainConfig:
    """The paper's hyper-parameters for ``model`` and ``norm`` (or the smoke version).

    ``paper``:

    * cifar10-nv (section 4.1, footnote 3): CIFAR-10, SGD momentum 0.9, 256 epochs,
      batch 128, lr 0.01; NP and TReLU: poly decay, power 2, to 1e-5, wd 1e-3; WN:
      linear to 1e-4, no wd; BN: linear to 1e-5, wd 2e-3; none: linear to 1e-5, no wd.
    * ResNet-50 (section 4.2, footnote 4): ImageNet, 120 epochs, batch 256 (global),
      lr 0.1, poly power 2 to 0, wd 1e-4, for every norm.

    ``smoke``: the same optimizer settings on Fashion-MNIST subsets for a few epochs, so a
    run takes a minute or two on a 2-core CPU: cifar10-nv on 384/256 images (batch 64,
    3 epochs, weight metrics every 2 steps); ResNet-50 at 28 x 28 on 384/256 images
    (batch 32, 3 epochs, lr 0.0125 = 0.1 * 32/256, weight metrics every 3 steps), so the
    coherence curves have points.

    Both use Xavier initialization (built into the model factories), seed 0 and
    ``out = runs/<model>-<norm>-<preset>``. ``overrides`` replace any field.

    Raises:
        ValueError: unknown model, norm or preset, or a bad override.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    check_norm_kind(norm)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    values: dict[str, Any] = {"model": model, "norm": norm, "momentum": 0.9, "preset": preset}
    if model == "cifar10_nv":
        values |= _CIFAR_PAPER | _CIFAR_PER_NORM[norm]
    else:
        values |= _RESNET_PAPER
    if preset == "smoke":
        values |= _SMOKE[model]
    values["out"] = str(Path("runs") / run_name(model, norm, preset))
    values |= overrides
    return TrainConfig(**values)


# =========================================================================== schedules


def linear_lr(step: int, total_steps: int, lr0: float, final_lr: float) -> float:
    r"""Linear decay: :math:`\eta(t) = \eta_0 + (\eta_T - \eta_0)\, \min(t, T) / T`."""
    t = min(max(step, 0), total_steps) / total_steps
    return lr0 + (final_lr - lr0) * t


def poly_lr(step: int, total_steps: int, lr0: float, final_lr: float, power: float) -> float:
    r"""Polynomial decay: :math:`\eta(t) = \eta_T + (\eta_0 - \eta_T)(1 - \min(t,T)/T)^p`."""
    t = min(max(step, 0), total_steps) / total_steps
    return final_lr + (lr0 - final_lr) * (1.0 - t) ** power


def schedule_lr(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of 0-based step ``step`` of ``total_steps`` under ``config``."""
    if config.schedule == "linear":
        return linear_lr(step, total_steps, config.lr, config.final_lr)
    return poly_lr(step, total_steps, config.lr, config.final_lr, config.power)


class StepSchedule(LRScheduler):
    """Sets every group's lr to ``lr_fn(step)`` exactly (``last_epoch`` counts steps).

    The function is not part of :meth:`state_dict` (it is rebuilt from the config), so
    the state loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr_fn: Callable[[int], float]):
        self.lr_fn = lr_fn
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self.lr_fn(self.last_epoch) for _ in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "lr_fn"}


# =========================================================================== devices, DDP


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # the process group was initialized by :func:`train`

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``).

    NCCL when the run is on CUDA, gloo otherwise. A group that already exists is used
    as is (and not destroyed at the end).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    import torch.distributed as td

    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    owns = False
    if not td.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local)
        td.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    return Dist(td.get_rank(), td.get_world_size(), local, owns)


def resolve_device(spec: str, dist: Dist) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; under DDP CUDA means ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: an unparsable device, or CUDA asked for but unavailable.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"bad device {spec!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for but CUDA is not available")
        if dist.enabled or device.index is None:
            device = torch.device("cuda", dist.local_rank if dist.enabled else 0)
    return device


def _barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


def _all_reduce(tensor: torch.Tensor, dist: Dist, op: str = "sum") -> torch.Tensor:
    if dist.enabled:
        reduce_op = (
            torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX
        )
        torch.distributed.all_reduce(tensor, op=reduce_op)
    return tensor


def _gather_objects(obj: Any, dist: Dist) -> list[Any]:
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


# =========================================================================== building


def build_model(config: TrainConfig, info: DatasetInfo) -> tuple[nn.Module, int]:
    """The model of ``config`` for data described by ``info``, and its input channels.

    cifar10-nv gets ``in_channels = info.in_channels``; ResNet-50 keeps 3 input channels
    (grey inputs are repeated over them, see the module docstring).
    """
    from stability.paper.models import cifar10_nv, resnet50

    if config.model == "cifar10_nv":
        return cifar10_nv(config.norm, info.in_channels, info.num_classes), info.in_channels
    return resnet50(config.norm, num_classes=info.num_classes), 3


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)`` (numpy's SeedSequence hash)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class SkipBatches(Sampler[list[int]]):
    """A batch sampler yielding ``batches``' batches from number ``skip`` on (no loading)."""

    def __init__(self, batches: Sampler[list[int]], skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)  # type: ignore[arg-type]


@dataclass
class Progress:
    """Where the run is. ``batch`` batches of ``epoch`` (0-based) are done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    seconds: float = 0.0
    parts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "history"}


class Meter:
    """Sums of loss x samples, top-1 and top-5 hits and samples, kept on the device."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]
        with torch.no_grad():
            hits = topk_correct(logits, target, TOPK)
            self.sums[:3] += torch.cat([loss.detach().double().reshape(1) * n, hits.double()])
            self.sums[3] += n

    def reset(self) -> None:
        self.sums.zero_()

    def state_dict(self) -> list[float]:
        return self.sums.tolist()

    def load_state_dict(self, values: Sequence[float]) -> None:
        self.sums.copy_(torch.tensor(values, dtype=torch.float64))

    def averages(self, dist: Dist) -> tuple[float, float, float]:
        """``(mean loss, top-1 %, top-5 %)`` over every rank (NaN without samples)."""
        loss, top1, top5, n = _all_reduce(self.sums.clone(), dist).tolist()
        if n == 0:
            return math.nan, math.nan, math.nan
        return loss / n, 100.0 * top1 / n, 100.0 * top5 / n


class LossWatch:
    """The first step with a non-finite loss, tracked on the device (no host sync)."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)
        self.step = torch.full((), step, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor) -> None:
        newly = ~torch.isfinite(loss.detach()) & (self.first < 0)
        self.first = torch.where(newly, self.step, self.first)
        self.value = torch.where(newly, loss.detach().float(), self.value)
        self.step += 1

    def flag(self) -> torch.Tensor:
        return (self.first >= 0).to(torch.float64)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k (k capped at C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(target[:, None])
    return torch.stack([hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


@dataclass
class Session:
    """The built pieces of one training process."""

    config: TrainConfig
    dist: Dist
    device: torch.device
    run: RunDir
    info: DatasetInfo
    module: nn.Module
    model: nn.Module
    in_channels: int
    optimizer: torch.optim.Optimizer
    scheduler: StepSchedule
    scaler: torch.amp.GradScaler | None
    recorder: Recorder | None
    train_loader: DataLoader
    test_loader: DataLoader
    steps_per_epoch: int
    total_steps: int
    channels_last: bool
    progress: Progress = field(default_factory=Progress)
    meter: Meter | None = None
    watch: LossWatch | None = None
    resume_rng: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)
    seconds_before: float = 0.0

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def lr_of(self, step: int) -> float:
        return schedule_lr(self.config, step, self.total_steps)


def _build_loaders(config: TrainConfig, dist: Dist, device: torch.device):
    train_ds, test_ds, info = build_datasets(
        config.dataset, config.data_dir, config.download, config.image_size, config.subset,
        seed=config.seed,
    )  # fmt: skip
    if config.batch_size % dist.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} does not split over {dist.world_size} processes"
        )
    per_rank = config.batch_size // dist.world_size
    train_loader = make_loader(
        train_ds, per_rank, train=True, seed=config.seed, num_workers=config.num_workers,
        device=device, distributed=True, num_replicas=dist.world_size, rank=dist.rank,
    )  # fmt: skip
    test_loader = make_loader(
        test_ds, per_rank, train=False, seed=config.seed, num_workers=config.num_workers,
        device=device, distributed=dist.enabled,
    )  # fmt: skip
    if len(train_loader) == 0:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {info.train_size} training samples"
        )
    return train_loader, test_loader, info


def _apply_determinism(config: TrainConfig, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global stream is seeded on purpose)
    torch.manual_seed(seed)


def build_session(config: TrainConfig, dist: Dist) -> Session:
    """Data, model (on the device, recorded, DDP-wrapped, compiled), optimizer, schedule."""
    device = resolve_device(config.device, dist)
    if config.amp == "fp16" and device.type != "cuda":
        warnings.warn("amp=fp16 on the CPU is slow; it is meant for CUDA", stacklevel=2)
    _apply_determinism(config, device)
    _seed_everything(config.seed)
    train_loader, test_loader, info = _build_loaders(config, dist, device)
    module, in_channels = build_model(config, info)
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    recorder = None
    if config.record:
        recorder = Recorder(
            module, include=config.include, exclude=config.exclude,
            every=config.record_every, weight_every=config.weight_every,
        )  # fmt: skip
    model: nn.Module = module
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if config.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(
        module.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.wd
    )
    steps = len(train_loader)
    total = steps * config.epochs
    scheduler = StepSchedule(optimizer, partial(schedule_lr, config, total_steps=total))
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    run = RunDir(config.out, dist.rank, dist.world_size)  # created later by :func:`train`
    return Session(
        config, dist, device, run, info, module, model, in_channels, optimizer, scheduler,
        scaler, recorder, train_loader, test_loader, steps, total, channels_last,
    )  # fmt: skip


def _meta(s: Session) -> dict[str, Any]:
    info = asdict(s.info)
    info["root"] = None if info["root"] is None else str(info["root"])
    return {
        "steps_per_epoch": s.steps_per_epoch,
        "total_steps": s.total_steps,
        "world_size": s.dist.world_size,
        "batch_per_process": s.config.batch_size // s.dist.world_size,
        "device": str(s.device),
        "device_name": torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "cpu",
        "channels_last": s.channels_last,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "command": sys.argv,
        "data": info,
        "recorded_layers": s.recorder.layer_names if s.recorder else [],
    }


# =========================================================================== one step


def _autocast(s: Session):
    if s.config.amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if s.config.amp == "bf16" else torch.float16
    return torch.autocast(s.device.type, dtype=dtype)


def _to_device(s: Session, x: torch.Tensor, y: torch.Tensor):
    x = x.to(s.device, non_blocking=True)
    y = y.to(s.device, non_blocking=True)
    if x.shape[1] == 1 and s.in_channels == 3:
        x = x.expand(-1, 3, -1, -1)  # grey -> RGB for ResNet-50's stem
    if s.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def train_step(s: Session, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step on ``(x, y)``; returns the (device) loss."""
    with _autocast(s):
        logits = s.model(x)
    loss = F.cross_entropy(logits.float(), y)
    s.optimizer.zero_grad(set_to_none=True)
    if s.scaler is not None:
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        loss.backward()
        s.optimizer.step()
    s.scheduler.step()
    if s.recorder is not None:
        s.recorder.step()
    s.meter.update(loss, logits, y)
    s.watch.update(loss)
    return loss


# =========================================================================== epochs


def _seed_epoch(s: Session, epoch: int) -> None:
    s.train_loader.sampler.set_epoch(epoch)
    reseed = getattr(s.train_loader.dataset, "reseed", None)
    if callable(reseed):
        reseed(epoch_seed(s.config.seed, epoch))


def epoch_batches(s: Session, epoch: int, skip: int) -> Iterator:
    """The batches of ``epoch`` from batch number ``skip`` on (see the module docstring)."""
    _seed_epoch(s, epoch)
    loader = s.train_loader
    if skip and loader.num_workers > 0:
        loader = DataLoader(
            loader.dataset, batch_sampler=SkipBatches(loader.batch_sampler, skip),
            num_workers=loader.num_workers, pin_memory=loader.pin_memory,
            collate_fn=loader.collate_fn, generator=loader.generator,
        )  # fmt: skip
        return iter(loader)
    batches = iter(loader)
    for _ in range(skip):
        next(batches)
    return batches


@contextmanager
def _paused(recorder: Recorder | None):
    if recorder is None:
        yield
    else:
        with recorder.paused():
            yield


@torch.no_grad()
def evaluate(s: Session) -> tuple[float, float, float]:
    """Test loss, top-1 % and top-5 % (model in eval mode, Recorder paused)."""
    meter = Meter(s.device)
    s.model.eval()
    try:
        with _paused(s.recorder):
            for x, y in s.test_loader:
                x, y = _to_device(s, x, y)
                with _autocast(s):
                    logits = s.model(x)
                meter.update(F.cross_entropy(logits.float(), y), logits, y)
    finally:
        s.model.train()
    return meter.averages(s.dist)


class StopFlag:
    """Set by SIGTERM (or by anyone): stop at the next step boundary, resumably."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        self.signum = signum

    def is_set(self) -> bool:
        return self.signum is not None


@contextmanager
def _handle_sigterm(flag: StopFlag):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, flag.set)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _poll(s: Session, flag: StopFlag, full: bool) -> tuple[bool, bool]:
    """``(diverged, stop_signalled)``, agreed over ranks.

    ``full``: read the device non-finite flag (a host sync; every ``check_every`` steps
    and at epoch ends). Otherwise only the host-side signal flag is read, and only
    without DDP (ranks must agree, which needs the collective of a full poll).
    """
    if not full:
        return False, flag.is_set() and not s.dist.enabled
    flags = torch.stack([s.watch.flag(), s.watch.flag().new_tensor(float(flag.is_set()))])
    diverged, stop = (_all_reduce(flags, s.dist, "max") > 0).tolist()
    return diverged, stop


def train_epoch(s: Session, flag: StopFlag, max_steps: int | None, on_step, bar) -> str:
    """Train the rest of the current epoch: ``"done"``, ``"stopped"`` or ``"diverged"``."""
    p = s.progress
    batches = epoch_batches(s, p.epoch, p.batch)
    if s.resume_rng is not None:
        _set_rng_state(s.resume_rng)
        s.resume_rng = None
    s.model.train()
    for x, y in batches:
        x, y = _to_device(s, x, y)
        train_step(s, x, y)
        p.batch += 1
        p.step += 1
        if on_step is not None:
            on_step(p.step)
        last = p.batch == s.steps_per_epoch
        full = last or p.step % s.config.check_every == 0
        diverged, signalled = _poll(s, flag, full)
        if full and not bar.disable:
            bar.set_postfix(loss=f"{s.meter.averages(Dist())[0]:.4g}", refresh=False)
        bar.update()
        if diverged:
            return "diverged"
        if not last and (signalled or (max_steps is not None and p.step >= max_steps)):
            return "stopped"
        if last:
            break
    return "done"


# =========================================================================== checkpoints


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def checkpoint_state(s: Session) -> dict[str, Any]:
    """Everything needed to continue the run (gathers every rank's RNG and meter)."""
    local = {"rng": _rng_state(), "meter": s.meter.state_dict()}
    return {
        "format": CHECKPOINT_FORMAT,
        "config": s.config.to_dict(),
        "model": s.module.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "progress": s.progress.state_dict(),
        "history": list(s.progress.history),
        "ranks": _gather_objects(local, s.dist),
    }


def save_checkpoint(s: Session) -> None:
    """Write the checkpoint (rank 0; every rank takes part in gathering its state)."""
    s.progress.seconds = s.seconds()
    state = checkpoint_state(s)
    if s.dist.is_main:
        s.run.save_checkpoint(state)
    _barrier(s.dist)


def restore(s: Session, state: Mapping[str, Any]) -> None:
    """Load a checkpoint into the session (RNG states are applied when the epoch resumes).

    Raises:
        ValueError: an unknown checkpoint format or a different number of processes.
    """
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"unknown checkpoint format {state.get('format')!r}")
    ranks = state["ranks"]
    if len(ranks) != s.dist.world_size:
        raise ValueError(
            f"the checkpoint was written by {len(ranks)} process(es); resume with the same "
            f"number (this job has {s.dist.world_size})"
        )
    s.module.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    if s.scaler is not None and state["scaler"] is not None:
        s.scaler.load_state_dict(state["scaler"])
    s.progress = Progress(**state["progress"], history=[dict(r) for r in state["history"]])
    s.seconds_before = s.progress.seconds
    s.meter.load_state_dict(ranks[s.dist.rank]["meter"])
    s.resume_rng = ranks[s.dist.rank]["rng"]


def _advance_recorder(recorder: Recorder | None, step: int) -> None:
    """Make the Recorder's next step number ``step`` (public API only: one ``step()``)."""
    if recorder is not None and step > 0:
        recorder.step_count = step - 1
        recorder.step()


# =========================================================================== epoch ends


def _write_records(s: Session) -> None:
    if s.recorder is None:
        return
    frame = s.recorder.pop_frame()
    if s.run.write_part(frame, s.progress.parts) is not None or s.dist.enabled:
        s.progress.parts += 1  # DDP: ranks keep one count even if a rank wrote nothing


def finish_epoch(s: Session) -> dict[str, Any]:
    """Evaluate, write the records part, checkpoint, then the history row (that order)."""
    p = s.progress
    train_loss, train_top1, train_top5 = s.meter.averages(s.dist)
    test_loss, test_top1, test_top5 = evaluate(s)
    row = {
        "epoch": p.epoch + 1,
        "step": p.step,
        "lr": s.lr_of(p.step - 1),
        "train_loss": train_loss,
        "train_top1": train_top1,
        "train_top5": train_top5,
        "test_loss": test_loss,
        "test_top1": test_top1,
        "test_top5": test_top5,
        "seconds": 0.0,
        "amp_scale": s.scaler.get_scale() if s.scaler is not None else 1.0,
    }
    _write_records(s)
    p.epoch += 1
    p.batch = 0
    row["seconds"] = s.seconds()
    p.history.append(row)
    s.meter.reset()
    save_checkpoint(s)
    if s.dist.is_main:
        s.run.append_history(row)
        s.run.write_status("running", epoch=p.epoch, step=p.step)
    return row


def _output_onset(frame: pd.DataFrame) -> fitting.Onset | None:
    if frame.empty:
        return None
    present = set(frame["metric"].unique())
    wanted = [m for m in FORWARD_METRICS if m in present and m != "gain"] or sorted(present)
    return fitting.divergence_onset(frame, threshold=None, metric=wanted)


def on_divergence(s: Session) -> dict[str, Any]:
    """Flush records, write ``divergence.json`` (rank 0) and return its content."""
    frame = s.recorder.pop_frame() if s.recorder is not None else pd.DataFrame()
    if s.recorder is not None and s.run.write_part(frame, s.progress.parts) is not None:
        s.progress.parts += 1
    step, loss = int(s.watch.first), float(s.watch.value)
    onset = _output_onset(frame)
    info: dict[str, Any] = {
        "step": step,
        "epoch": s.progress.epoch + 1,
        "loss": loss,
        "layer": onset.layer if onset else None,
        "layer_idx": onset.layer_idx if onset else None,
        "metric": onset.metric if onset else None,
        "value": onset.value if onset else None,
        "record_step": onset.step if onset else None,
        "stopped_at_step": s.progress.step,
    }
    if s.dist.is_main:
        write_json_atomic(s.run.path / DIVERGENCE, info)
        s.run.write_status("diverged", epoch=s.progress.epoch, step=s.progress.step)
    return info


# =========================================================================== train()


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        status: ``finished``, ``stopped`` (SIGTERM or ``max_steps``; resumable) or
            ``diverged``.
        run_dir: the run directory.
        epoch: epochs completed.
        step: optimizer steps completed.
        history: history.csv's rows.
        divergence: the content of divergence.json, or None.
        reason: why a ``stopped`` run stopped: ``"SIGTERM"`` or ``"max_steps"``.
    """

    status: str
    run_dir: Path
    epoch: int
    step: int
    history: pd.DataFrame
    divergence: dict[str, Any] | None = None
    reason: str | None = None


def _resume_config(config: TrainConfig, run: RunDir) -> TrainConfig:
    stored = TrainConfig.from_dict(run.read_config())
    diff = stored.differences(config)
    if diff:
        shown = ", ".join(f"{k}: stored {a!r}, given {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"--resume: the config differs from {run.config_path} ({shown})")
    runtime = {k: getattr(config, k) for k in RUNTIME_FIELDS}
    return replace(stored, **runtime)


def _open(config: TrainConfig, dist: Dist, resume: bool, force: bool) -> RunDir:
    """Create (new run, rank 0) or reopen the run directory, then synchronize ranks."""
    if dist.is_main:
        open_run(config.out, None, resume=resume, force=force, world_size=dist.world_size)
    _barrier(dist)
    return RunDir(config.out, dist.rank, dist.world_size)


def _check_resumable(run: RunDir) -> None:
    if (run.path / DIVERGENCE).exists():
        raise ValueError(
            f"{run.path} diverged ({DIVERGENCE}); a diverged run is not resumed, start a new "
            "one with --force"
        )


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``config`` in its run directory ``config.out``; see the module docstring.

    Args:
        config: the run. With ``resume`` it must equal the stored config except for
            :data:`RUNTIME_FIELDS`.
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
        RunExistsError: ``config.out`` holds a run and neither resume nor force is set.
        ValueError: resume with a different config, of a diverged run, or bad settings.
        FileNotFoundError: missing data, or resume of a directory without a run.
    """
    dist = init_distributed(config.device)
    session: Session | None = None
    try:
        if dist.is_main:  # fail before the slow set-up, create the directory after it
            check_run_dir(config.out, resume=resume, force=force)
        if resume:
            config = _resume_config(config, RunDir(config.out))
            _check_resumable(RunDir(config.out))
        session = build_session(config, dist)
        session.run = _open(config, dist, resume, force)
        return _train(session, resume, max_steps, progress, on_step)
    finally:
        if session is not None and session.recorder is not None:
            session.recorder.close()
        if dist.owns_group:
            torch.distributed.destroy_process_group()


def _start(s: Session, resume: bool) -> None:
    state = s.run.load_checkpoint(map_location=s.device) if resume else None
    if state is not None:
        restore(s, state)
    if resume and s.dist.is_main:  # without a checkpoint: start over, set stale files aside
        s.run.reconcile(s.progress.history, s.progress.parts)
    if not resume and s.dist.is_main:
        s.run.write_config(s.config.to_dict() | {"meta": _meta(s)})
    _barrier(s.dist)
    s.watch = LossWatch(s.device, s.progress.step)
    _advance_recorder(s.recorder, s.progress.step)
    s.started = time.perf_counter()


def _train(s: Session, resume: bool, max_steps, progress: bool, on_step) -> TrainResult:
    s.meter = Meter(s.device)
    _start(s, resume)
    p = s.progress
    flag = StopFlag()
    if s.dist.is_main:
        s.run.write_status("running", epoch=p.epoch, step=p.step)
    with _handle_sigterm(flag):
        status, reason, divergence = _epochs(s, flag, max_steps, progress, on_step)
    if s.dist.is_main and status != "diverged":
        where = {"epoch": p.epoch, "batch": p.batch, "step": p.step}
        s.run.write_status(status, **({"reason": reason} if reason else {}), **where)
    history = s.run.read_history() if s.dist.is_main else pd.DataFrame(p.history)
    return TrainResult(status, s.run.path, p.epoch, p.step, history, divergence, reason)


def _epochs(s: Session, flag: StopFlag, max_steps, progress: bool, on_step):
    """The epoch loop: ``(status, reason, divergence)``."""
    from tqdm.auto import tqdm

    p, cfg = s.progress, s.config
    show = progress and s.dist.is_main
    while p.epoch < cfg.epochs:
        if max_steps is not None and p.step >= max_steps:
            return "stopped", "max_steps", None
        desc = f"{cfg.model}/{cfg.norm} epoch {p.epoch + 1}/{cfg.epochs}"
        with tqdm(total=s.steps_per_epoch, initial=p.batch, desc=desc, disable=not show,
                  leave=False, dynamic_ncols=True) as bar:  # fmt: skip
            outcome = train_epoch(s, flag, max_steps, on_step, bar)
        if outcome == "diverged":
            divergence = on_divergence(s)
            print(f"training diverged: {divergence}", file=sys.stderr)
            return "diverged", None, divergence
        reason = "SIGTERM" if flag.is_set() else "max_steps"
        if outcome == "stopped":
            _write_records(s)
            save_checkpoint(s)
            return "stopped", reason, None
        row = finish_epoch(s)
        if show:
            tqdm.write(_format_row(cfg, row))
        if flag.is_set():
            return "stopped", "SIGTERM", None
    return "finished", None, None


def _format_row(cfg: TrainConfig, row: Mapping[str, Any]) -> str:
    return (
        f"{cfg.model}/{cfg.norm} epoch {row['epoch']}/{cfg.epochs} step {row['step']} "
        f"lr {row['lr']:.3g} | train loss {row['train_loss']:.4f} top-1 "
        f"{row['train_top1']:.2f}% | test loss {row['test_loss']:.4f} top-1 "
        f"{row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}% | {row['seconds']:.0f} s"
    )
