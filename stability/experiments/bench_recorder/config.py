"""What a Recorder overhead benchmark is asked to do: its config, presets and names.

Imports nothing heavy (no torch, no pandas), so a command line can be built from it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: The name written into ``config.json`` (``"experiment"``).
EXPERIMENT = "bench_recorder"
#: Where an output folder is made when none is given (``<parent>/<timestamp>``).
DEFAULT_PARENT = "runs/bench"
WORKLOADS = ("resnet50", "deep_linear")
LABELS = {"resnet50": "ResNet-50", "deep_linear": "deep linear (50 x 64)"}
#: The default Recorder's weight schedule, amortized over this many steps.
WEIGHT_EVERY = 100
NO_HOOKS = "no hooks"
#: The peer patterns of :mod:`.peers`, timed beside the Recorder.
EMPTY_HOOKS = "empty hooks"
ITEM_BASELINE = "naive .item() hooks"
BUFFERED = "buffered (stack per step)"
COORD_CHECK = "mup coord check"
PEERS = (EMPTY_HOOKS, ITEM_BASELINE, BUFFERED, COORD_CHECK)
RECORDER = "recorder"
WEIGHTS_EVERY_10 = "recorder weights every 10"
WEIGHTS_AMORTIZED = "recorder weights every 100 (amortized)"
#: The deep linear network's goal for the Recorder every step (launch-bound worst case).
LINEAR_BOUND = 1.13

#: Preset name -> the config values it sets (flags given explicitly override them).
#: ``quick`` also shrinks the workloads (see ``workloads.default_workloads``) and leaves
#: the timing targets unjudged (its sizes are not the issue's).
PRESETS: dict[str, dict[str, Any]] = {"full": {}, "quick": {"memory_steps": 1000}}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run (written into the output folder as ``config.json``).

    Attributes:
        preset: ``full`` or ``quick``: the workload sizes (per device) and whether the
            timing targets are judged; its values (:data:`PRESETS`) are applied by the
            command line, or by ``BenchConfig(**PRESETS[name], preset=name)``.
        out: Output folder, new or empty (default ``runs/bench/<timestamp>``).
        device: Torch device; None: cuda when available, else cpu.
        threads: The ``torch.set_num_threads`` values timed, interleaved in the same
            rounds; empty: 1 and torch's default (``torch.get_num_threads()`` when
            :func:`run` starts), one entry if they are equal.
        workloads: Subset of :data:`WORKLOADS`.
        rounds: Measured rounds per workload; None: the workload's own.
        steps: Timed steps per block, a multiple of 10; None: the workload's own.
        memory_steps: Steps of the memory check (0 skips it).
        sync_steps: Steps of the host-sync count (CUDA only).
        compare_with: Another ``recorder.py`` timed as one more variant.
    """

    preset: str = "full"
    out: Path | None = None
    device: str | None = None
    threads: tuple[int, ...] = ()
    workloads: tuple[str, ...] = WORKLOADS
    rounds: int | None = None
    steps: int | None = None
    memory_steps: int = 10_000
    sync_steps: int = 20
    compare_with: Path | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        unknown = sorted(set(self.workloads) - set(WORKLOADS))
        if unknown or not self.workloads:
            raise ValueError(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
        if self.steps is not None and (self.steps < 10 or self.steps % 10):
            raise ValueError(f"steps must be a positive multiple of 10, got {self.steps}")
        if any(count < 1 for count in self.threads):
            raise ValueError(f"threads must be >= 1, got {list(self.threads)}")
        for name in ("rounds", "sync_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.memory_steps < 0:
            raise ValueError(f"memory_steps must be >= 0, got {self.memory_steps}")

    @property
    def quick(self) -> bool:
        """Whether this is the ``quick`` preset (CI sizes)."""
        return self.preset == "quick"

    def thread_counts(self, default: int) -> tuple[int, ...]:
        """The thread counts to time: ``threads``, or 1 and ``default`` (torch's)."""
        return tuple(dict.fromkeys(self.threads or (1, default)))


@dataclass(frozen=True)
class BenchResult:
    """What :func:`stability.experiments.bench_recorder.run` measured and wrote.

    Attributes:
        out: The output folder.
        summary: Per workload and variant: median step time, IQR, paired ratio.
        targets: The issue's targets: value, bound, met, note.
        report: The Markdown report (also ``report.md``).
        seconds: Wall-clock time of the whole benchmark.
    """

    out: Path
    summary: pd.DataFrame
    targets: pd.DataFrame
    report: str
    seconds: float
