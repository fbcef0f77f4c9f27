r"""Building a run's parts from its config: data, network (recorded, DDP, compiled), optimizer.

Data order. The order is a pure function of ``(seed, epoch)``: the training loader always
uses a :class:`~torch.utils.data.DistributedSampler` (one replica without DDP) re-seeded
by ``set_epoch(epoch)``, and an in-memory data set's augmentation stream is re-seeded to
``hash(seed, epoch)`` (:func:`epoch_seed`) at the start of every epoch
(:meth:`stability.paper.data.TensorImageDataset.reseed`). :meth:`TrainData.batches` starts
an epoch at any batch: for data loaded in the main process it loads and discards the
batches already done (cheap for in-memory data), so the augmentation stream is where an
uninterrupted run would be; with loader worker processes (``num_workers > 0``) the
skipped batches are not loaded at all (:class:`SkipBatches`, a sampler that starts at the
right batch) and the order is still exact, but augmentations drawn inside workers are not
reproducible across a restart.

Recorder. Attached by default to every conv/linear layer, forward and gradient metrics
every ``record_every`` steps, weight metrics every ``weight_every`` steps. It is attached
to the bare model before DDP wrapping and before ``torch.compile``.

Devices. On CUDA the model and inputs use channels_last by default and cuDNN autotuning
(unless ``deterministic``). ``amp="bf16"`` autocasts to bfloat16 (CPU or CUDA, no
scaler); ``amp="fp16"`` autocasts to float16 with a :class:`torch.amp.GradScaler` (meant
for CUDA; it also runs, slowly, on CPU). With fp16 a step the GradScaler skips because
the *scaled* gradients overflowed is not divergence: the loss is finite, the scaler lowers
its scale and training goes on (the scale at each epoch end is in history.csv,
``amp_scale``); the Recorder's ``grad_norm`` is then the norm of the scaled gradient (the
true norm times the scale of that step). ``compile=True`` wraps the (DDP) model in
:func:`torch.compile` after the Recorder is attached (its hooks run eagerly, graph breaks
around recorded layers).

Input channels. cifar10-nv is built with the data set's channels (1 for Fashion-MNIST, 3
for CIFAR-10); torchvision's ResNet-50 keeps its 3-channel stem, and a grey image is
repeated over the three channels (``expand``, no copy) rather than altering the
architecture. cifar10-nv needs 28 x 28 inputs (Table 2); ResNet-50 takes any size >= 28
or so (at 28 x 28 ``layer4`` works on 1 x 1 maps).
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from stability.paper.data import DatasetInfo, build_datasets, make_loader
from stability.paper.train.config import TrainConfig
from stability.paper.train.distributed import Dist
from stability.paper.train.schedules import StepSchedule, schedule_lr
from stability.records.recorder import Recorder

__all__ = [
    "Network",
    "Optimization",
    "SkipBatches",
    "TrainData",
    "build_data",
    "build_model",
    "build_network",
    "build_optimization",
    "describe",
    "epoch_seed",
    "prepare_process",
]


def prepare_process(config: TrainConfig, device: torch.device) -> None:
    """Determinism settings and the global seeds (python, numpy, torch) of ``config``."""
    if config.amp == "fp16" and device.type != "cuda":
        warnings.warn("amp=fp16 on the CPU is slow; it is meant for CUDA", stacklevel=3)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)  # noqa: NPY002 (the legacy global stream, on purpose)
    torch.manual_seed(config.seed)


# --------------------------------------------------------------------------- data


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
class TrainData:
    """The training and test loaders of one process, and the data order (module docstring)."""

    train_loader: DataLoader
    test_loader: DataLoader
    info: DatasetInfo
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def batches(self, epoch: int, skip: int) -> Iterator:
        """The batches of ``epoch`` from batch number ``skip`` on."""
        self.train_loader.sampler.set_epoch(epoch)
        reseed = getattr(self.train_loader.dataset, "reseed", None)
        if callable(reseed):
            reseed(epoch_seed(self.seed, epoch))
        loader = self.train_loader
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


def build_data(config: TrainConfig, dist: Dist, device: torch.device) -> TrainData:
    """The data set of ``config`` split into ``batch_size / world_size`` batches per process.

    Raises:
        ValueError: the batch does not split over the processes, or exceeds the data set.
    """
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
    return TrainData(train_loader, test_loader, info, config.seed)


# --------------------------------------------------------------------------- network


def build_model(config: TrainConfig, info: DatasetInfo) -> tuple[nn.Module, int]:
    """The model of ``config`` for data described by ``info``, and its input channels.

    cifar10-nv gets ``in_channels = info.in_channels``; ResNet-50 keeps 3 input channels
    (grey inputs are repeated over them, see the module docstring).
    """
    from stability.paper.models import cifar10_nv, resnet50

    if config.model == "cifar10_nv":
        model = cifar10_nv(config.norm, info.in_channels, info.num_classes, width=config.width)
        return model, info.in_channels
    return resnet50(config.norm, num_classes=info.num_classes, width=config.width), 3


@dataclass
class Network:
    """The model on its device.

    Attributes:
        module: the bare model (recorded, checkpointed).
        model: what is called: ``module``, DDP-wrapped and/or compiled.
        device: where it runs.
        in_channels: the input channels the model takes.
        channels_last: inputs (and weights) in channels_last memory format.
        amp: ``none``, ``bf16`` or ``fp16`` autocasting.
    """

    module: nn.Module
    model: nn.Module
    device: torch.device
    in_channels: int
    channels_last: bool
    amp: str = "none"

    def autocast(self) -> AbstractContextManager:
        """Autocasting to ``amp``'s dtype (nothing for ``none``)."""
        if self.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device, grey repeated to RGB if needed, in the memory format."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB for ResNet-50's stem
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` under autocast."""
        with self.autocast():
            return self.model(x)


def build_network(
    config: TrainConfig, info: DatasetInfo, device: torch.device, dist: Dist
) -> tuple[Network, Recorder | None]:
    """The model on ``device``, with its Recorder (if ``config.record``), DDP and compile."""
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
    return Network(module, model, device, in_channels, channels_last, config.amp), recorder


# --------------------------------------------------------------------------- optimizer


@dataclass
class Optimization:
    """SGD, its step-wise schedule and (fp16) the GradScaler: one optimizer step."""

    optimizer: torch.optim.Optimizer
    scheduler: StepSchedule
    scaler: torch.amp.GradScaler | None = None

    def step(self, loss: torch.Tensor) -> None:
        """Backward ``loss`` (scaled for fp16), ``optimizer.step()``, ``scheduler.step()``."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()

    def lr_of(self, step: int) -> float:
        """The learning rate of 0-based step ``step``."""
        return self.scheduler.lr_fn(step)

    @property
    def scale(self) -> float:
        """The fp16 loss scale (1 without a GradScaler)."""
        return self.scaler.get_scale() if self.scaler is not None else 1.0

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer", "scheduler", "scaler"}`` states (the checkpoint's keys)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])


def build_optimization(
    config: TrainConfig, module: nn.Module, total_steps: int, device: torch.device
) -> Optimization:
    """SGD with momentum and weight decay, :func:`schedule_lr` over ``total_steps`` steps."""
    optimizer = torch.optim.SGD(
        module.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.wd
    )
    scheduler = StepSchedule(optimizer, partial(schedule_lr, config, total_steps=total_steps))
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    return Optimization(optimizer, scheduler, scaler)


def describe(
    config: TrainConfig, dist: Dist, data: TrainData, net: Network, recorder: Recorder | None
) -> dict[str, Any]:
    """The ``meta`` entry of config.json: what was built, where, with which versions."""
    info = asdict(data.info)
    info["root"] = None if info["root"] is None else str(info["root"])
    device = net.device
    return {
        "steps_per_epoch": data.steps_per_epoch,
        "total_steps": data.steps_per_epoch * config.epochs,
        "world_size": dist.world_size,
        "batch_per_process": config.batch_size // dist.world_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "channels_last": net.channels_last,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "command": sys.argv,
        "data": info,
        "recorded_layers": recorder.layer_names if recorder else [],
    }
