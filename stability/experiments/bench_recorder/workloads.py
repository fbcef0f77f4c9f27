"""The models a Recorder overhead benchmark trains, and the device it trains them on.

ResNet-50 (CPU: batch 16 at 112x112; CUDA: batch 256 at 224x224, bf16 autocast,
channels_last) and the paper's 50-layer linear network (batch 256), whose tiny layers
make it launch/Python-bound: the worst case for any hook-based tool. The ``quick`` preset
shrinks ResNet-50's input and the number of rounds. Every model trains with SGD at
learning rate 0 (momentum 0.9): each step does a training step's full work while the
weights stay fixed, so no variant sees other numbers (or denormals) than another.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from stability.experiments.bench_recorder.config import BenchConfig
from stability.paper.models import deep_linear, resnet50


@dataclass(frozen=True)
class Workload:
    """One model and input size, and how long to time it."""

    name: str
    batch: int
    image: int  # input height = width (ResNet-50); 0 for the linear network
    steps: int  # timed steps per block (a multiple of 10)
    rounds: int  # measured rounds
    warmup_rounds: int  # rounds run first and dropped
    amp: bool  # bf16 autocast
    channels_last: bool


def default_workloads(device: torch.device, quick: bool) -> dict[str, Workload]:
    """The issue's sizes; ``quick`` shrinks ResNet-50's input and the number of rounds."""
    cuda = device.type == "cuda"
    if quick:
        resnet = Workload("resnet50", 32 if cuda else 4, 112 if cuda else 64, 10, 1, 0, cuda, cuda)
        linear = Workload("deep_linear", 256, 0, 10, 3, 1, False, False)
    elif cuda:
        resnet = Workload("resnet50", 256, 224, 20, 10, 1, True, True)
        linear = Workload("deep_linear", 256, 0, 50, 30, 1, False, False)
    else:
        resnet = Workload("resnet50", 16, 112, 10, 5, 1, False, False)
        linear = Workload("deep_linear", 256, 0, 10, 30, 1, False, False)
    return {w.name: w for w in (resnet, linear)}


@dataclass
class Trainer:
    """A model, its optimizer and one fixed batch: ``step()`` is one training step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    amp: bool

    def step(self) -> None:
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_trainer(workload: Workload, device: torch.device, seed: int = 0) -> Trainer:
    """The workload's model (BN ResNet-50 or WN linear network) and a synthetic batch."""
    torch.manual_seed(seed)
    if workload.name == "resnet50":
        model = resnet50("bn")
        x = torch.randn(workload.batch, 3, workload.image, workload.image)
        classes = 1000
    else:
        model = deep_linear(depth=50, width=64, norm="wn")
        x = torch.randn(workload.batch, 784)
        classes = 10
    memory_format = torch.channels_last if workload.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format).train()
    x = x.to(device, memory_format=memory_format)
    y = torch.randint(0, classes, (workload.batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return Trainer(model, optimizer, x, y, workload.amp)


def small_network(device: torch.device) -> nn.Module:
    """The 3-layer network of the memory check (32 -> 64 -> 64 -> 10)."""
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    ).to(device)


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a torch device (default: cuda when available, else cpu).

    Raises:
        ValueError: cuda asked for but not available.
        RuntimeError: not a device name (torch's message).
    """
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available")
    return device


def chosen_workloads(config: BenchConfig, device: torch.device) -> dict[str, Workload]:
    """The workloads of ``config``, with its ``rounds`` and ``steps`` where given."""
    defaults = default_workloads(device, config.quick)
    return {
        name: replace(
            defaults[name],
            steps=config.steps or defaults[name].steps,
            rounds=config.rounds or defaults[name].rounds,
        )
        for name in config.workloads
    }
