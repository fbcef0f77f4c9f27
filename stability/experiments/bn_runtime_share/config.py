"""What a runtime-share profile is asked to do: its config, presets and names.

Imports nothing heavy (no torch, no pandas), so a command line can be built from it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: The name written into ``config.json`` (``"experiment"``).
EXPERIMENT = "bn_runtime_share"
#: Where an output folder is made when none is given (``<parent>/<timestamp>``).
DEFAULT_PARENT = "runs/bench/bn_share"
#: The operator categories, in the order of every table and figure.
CATEGORIES = (
    "convolution",
    "batch norm",
    "weight norm",
    "relu",
    "add",
    "pooling",
    "fc",
    "optimizer",
    "other",
)
NORMS = ("bn", "wn")
NORM_NAMES = {"bn": "BN", "wn": "WN"}
DEVICES = ("cpu", "cuda")
#: Preset name -> the config values it sets (flags given explicitly override them).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"batch": 4, "image": 64, "steps": 1, "warmup": 1, "timed": 2},
}


@dataclass(frozen=True)
class ShareConfig:
    """One profile of ResNet-50 training steps (written as ``config.json``).

    The sizes left None take the device's defaults (CPU: batch 16 at 112x112, 1 warm-up,
    2 profiled and 4 timed steps; CUDA: batch 64 at 224x224, 3, 3 and 10).

    Attributes:
        preset: The preset the values came from (:data:`PRESETS`; applied by the command
            line, or by ``ShareConfig(**PRESETS[name], preset=name)``).
        out: Output folder, new or empty (default ``runs/bench/bn_share/<timestamp>``).
        devices: Subset of :data:`DEVICES`; None: cpu, and cuda when there is one.
        norms: Subset of :data:`NORMS`.
        batch: Batch size.
        image: Input height = width.
        steps: Profiled steps.
        warmup: Untimed steps before profiling.
        timed: Unprofiled wall-clock steps per model (the models interleaved).
        threads: ``torch.set_num_threads`` (1 keeps CPU timings steady on a shared machine).
    """

    preset: str = "full"
    out: Path | None = None
    devices: tuple[str, ...] | None = None
    norms: tuple[str, ...] = NORMS
    batch: int | None = None
    image: int | None = None
    steps: int | None = None
    warmup: int | None = None
    timed: int | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        for name, allowed in (("devices", DEVICES), ("norms", NORMS)):
            chosen = getattr(self, name)
            if chosen is None and name == "devices":
                continue
            bad = [v for v in chosen if v not in allowed]
            if bad or not chosen:
                raise ValueError(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
        for name in ("batch", "image", "steps", "timed", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


@dataclass(frozen=True)
class ShareResult:
    """What :func:`stability.experiments.bn_runtime_share.run` measured and wrote.

    Attributes:
        out: The output folder.
        shares: device, norm, category, ms per step and share of the profiled op time.
        operators: Every op name with its category and time (the mapping, auditable).
        step_times: Unprofiled wall-clock ms per step, per device and norm.
        report: The Markdown report (also ``report.md``).
        seconds: Wall-clock time of the whole profile.
    """

    out: Path
    shares: pd.DataFrame
    operators: pd.DataFrame
    step_times: pd.DataFrame
    report: str
    seconds: float
