"""Profiling ResNet-50 training steps, BN and WN, and timing them unprofiled.

Each model trains with SGD at learning rate 0 (momentum 0.9) on one fixed synthetic
batch: every step does a training step's full work while the weights stay fixed. Shares
are of the profiled op time (CPU self time on a CPU; kernel time on CUDA); the
unprofiled wall-clock step time is measured separately, the models interleaved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from stability.experiments.bn_runtime_share.attribution import (
    attribute,
    category_times,
    label_modules,
)
from stability.experiments.bn_runtime_share.config import ShareConfig
from stability.paper.models import resnet50


@dataclass(frozen=True)
class Setup:
    """What is profiled: batch, input size, steps."""

    batch: int
    image: int
    warmup: int
    profiled: int
    timed: int


def default_setup(device: torch.device) -> Setup:
    """The full preset's sizes on ``device``."""
    if device.type == "cuda":
        return Setup(batch=64, image=224, warmup=3, profiled=3, timed=10)
    return Setup(batch=16, image=112, warmup=1, profiled=2, timed=4)


def setup_for(config: ShareConfig, device: torch.device) -> Setup:
    """The device's default sizes, with every size ``config`` gives."""
    given = {
        "batch": config.batch,
        "image": config.image,
        "warmup": config.warmup,
        "profiled": config.steps,
        "timed": config.timed,
    }
    chosen = {k: v for k, v in given.items() if v is not None}
    return replace(default_setup(device), **chosen)


def resolve_devices(names: tuple[str, ...] | None) -> list[torch.device]:
    """The devices to profile (default: cpu, and cuda when there is one).

    Raises:
        ValueError: cuda asked for but not available.
    """
    cuda = torch.cuda.is_available()
    names = names or (("cpu", "cuda") if cuda else ("cpu",))
    if "cuda" in names and not cuda:
        raise ValueError("--devices cuda: CUDA is not available")
    return [torch.device(name) for name in dict.fromkeys(names)]


class Step:
    """One SGD training step of a labelled ResNet-50 on a fixed synthetic batch."""

    def __init__(self, norm: str, setup: Setup, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = resnet50(norm).to(device).train()
        label_modules(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=0.9)
        self.x = torch.randn(setup.batch, 3, setup.image, setup.image, device=device)
        self.y = torch.randint(0, 1000, (setup.batch,), device=device)
        self.device = device

    def __call__(self) -> None:
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def profile_steps(step: Step, setup: Setup) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Category and operator tables of ``setup.profiled`` steps (after the warm-up)."""
    for _ in range(setup.warmup):
        step()
    step.sync()
    cuda = step.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(setup.profiled):
            step()
        step.sync()
    return category_times(attribute(prof.events()), setup.profiled, device_time=cuda)


def time_steps(steps: dict[str, Step], count: int) -> dict[str, float]:
    """Median wall-clock seconds per step of each model, unprofiled, interleaved."""
    times: dict[str, list[float]] = {norm: [] for norm in steps}
    for _ in range(count):
        for norm, step in steps.items():
            step.sync()
            start = time.perf_counter()
            step()
            step.sync()
            times[norm].append(time.perf_counter() - start)
    return {norm: statistics.median(values) for norm, values in times.items()}


def run_device(
    device: torch.device,
    norms: tuple[str, ...],
    setup: Setup,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Runtime shares, operator tables and step times of every norm on one device."""
    steps = {norm: Step(norm, setup, device) for norm in norms}
    shares, ops = [], []
    for norm, step in steps.items():
        log(f"profiling ResNet-50 ({norm}) on {device}: {setup}")
        categories, operators = profile_steps(step, setup)
        shares.append(categories.assign(device=device.type, norm=norm))
        ops.append(operators.assign(device=device.type, norm=norm))
    wall = time_steps(steps, setup.timed)
    step_times = pd.DataFrame(
        {"device": device.type, "norm": list(wall), "wall_ms": [1e3 * s for s in wall.values()]}
    )
    return pd.concat(shares), pd.concat(ops), step_times
