"""What a warning benchmark is asked to do: its config, workloads and presets.

Imports nothing heavy (no torch, no pandas), so a command line can be built from it at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: The name written into ``config.json`` (``"experiment"``).
EXPERIMENT = "warning_benchmark"
#: Where an output folder is made when none is given (``<parent>/<timestamp>``).
DEFAULT_PARENT = "runs/warning_benchmark"
#: The workloads (see :mod:`.workloads`).
WORKLOADS = ("linear-none", "linear-wn", "linear-bn", "relu-mlp-wn", "cifar10-nv-wn")

#: Learning rates per workload, dense around each divergence edge on Fashion-MNIST (edges
#: located on the tuning seeds 0-1 at 150 steps: none/WN 50-layer linear nets diverge from
#: ~5e-3 to 6e-3, BN from ~0.8, the 10-layer ReLU MLP with WN from ~0.4 to 0.5, cifar10-nv
#: with WN at width 0.25 from ~0.4 to 0.8 at 80 steps).
FULL_LRS: dict[str, tuple[float, ...]] = {
    "linear-none": (2e-3, 3e-3, 3.5e-3, 4e-3, 5e-3, 6e-3, 8e-3, 1.2e-2),
    "linear-wn": (2e-3, 3e-3, 3.5e-3, 4e-3, 5e-3, 6e-3, 8e-3, 1.2e-2),
    "linear-bn": (0.6, 0.8, 1.0, 1.15, 1.3, 1.5, 2.0, 2.5),
    "relu-mlp-wn": (0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5),
    "cifar10-nv-wn": (0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.6),
}
#: The workloads run by default: all of them (cifar10-nv at ``cifar_width`` 0.25, about
#: 0.15 s a step at batch 32 on one loaded core).
DEFAULT_WORKLOADS = WORKLOADS

#: Preset name -> the config values it sets (flags given explicitly override them).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {
        "iters": 40,
        "tuning_seeds": (0,),
        "reporting_seeds": (1,),
        "lr_points": 4,
        "cifar_iters": 12,
        "subset": 4096,
    },
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """One warning benchmark (written into the output folder as ``config.json``).

    Attributes:
        preset: ``full`` or ``quick`` (its values, :data:`PRESETS`, are applied by the
            command line, or by ``BenchmarkConfig(**PRESETS[name], preset=name)``).
        out: Output folder, new or empty (default ``runs/warning_benchmark/<timestamp>``).
        workloads: Subset of :data:`WORKLOADS` (default :data:`DEFAULT_WORKLOADS`).
        tuning_seeds: Seeds whose runs choose the detector's thresholds.
        reporting_seeds: Held-out seeds whose runs are reported (disjoint from tuning).
        iters: Training steps of the linear nets and the ReLU MLP (150: long enough that on
            the tuning seeds every BN run that was still growing at 45 steps reached the
            divergence rule's onset, the latest at step 117; runs whose fate is still open at
            the end are labelled undecided and left out, see :mod:`.scoring`).
        cifar_iters: Training steps of cifar10-nv (a diverged run stops at its first
            non-finite loss).
        lr_points: Keep this many learning rates per workload, evenly spread over
            :data:`FULL_LRS` (None: all).
        subset: Fashion-MNIST training samples used (None: all 60000).
        batch_size: Batch of the linear nets and the MLP (cifar10-nv: ``cifar_batch``).
        cifar_batch: Batch of cifar10-nv.
        cifar_width: Channel multiplier of cifar10-nv (``stability.paper.models.cifar10_nv``
            ``width``: 0.25 gives 32 / 64 / 80 channels, ~16x cheaper than Table 2's 1.0).
        mlp_depth: Linear layers of the ReLU MLP (width 64).
        data_dir: Fashion-MNIST folder (None: the data module's default search).
        threads: ``torch.set_num_threads`` (1: robust on a shared CPU).
        threshold: The divergence rule's ``output_rms`` threshold.
    """

    preset: str = "full"
    out: str | None = None
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    tuning_seeds: tuple[int, ...] = (0, 1)
    reporting_seeds: tuple[int, ...] = (2, 3)
    iters: int = 150
    cifar_iters: int = 100
    lr_points: int | None = None
    subset: int | None = 16384
    batch_size: int = 256
    cifar_batch: int = 32
    cifar_width: float = 0.25
    mlp_depth: int = 10
    data_dir: str | None = None
    threads: int = 1
    threshold: float = 1e6

    def __post_init__(self) -> None:
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        if unknown:
            raise ValueError(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
        if set(self.tuning_seeds) & set(self.reporting_seeds):
            raise ValueError(
                f"tuning seeds {self.tuning_seeds} and reporting seeds {self.reporting_seeds} "
                "must be disjoint"
            )
        if not self.tuning_seeds or not self.reporting_seeds:
            raise ValueError("the benchmark needs at least one tuning and one reporting seed")
        width = self.cifar_width
        number = isinstance(width, int | float) and not isinstance(width, bool)
        if not (number and math.isfinite(width) and width > 0):
            raise ValueError(f"cifar_width must be a positive number, got {self.cifar_width!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {list(PRESETS)}")

    def lrs(self, workload: str) -> tuple[float, ...]:
        """The learning rates of ``workload`` (``lr_points`` of them, evenly spread)."""
        grid = FULL_LRS[workload]
        if self.lr_points is None or self.lr_points >= len(grid):
            return grid
        step = (len(grid) - 1) / max(self.lr_points - 1, 1)
        return tuple(grid[round(i * step)] for i in range(self.lr_points))

    def to_dict(self) -> dict:
        return asdict(self)
