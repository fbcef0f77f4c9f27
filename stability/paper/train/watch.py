"""The live divergence monitor of a training run (``--on-warning``).

:func:`build_monitor` wraps the run's Recorder in a :class:`stability.Monitor` whose
detector is the one :func:`stability.fitting.early_warning` runs on saved tables, with the
default :class:`~stability.fitting.WarningConfig`. Every action first logs the warning
(one line on stderr, through the ``stability.monitor`` logger); then

* ``log``: nothing more;
* ``checkpoint``: save a checkpoint at once (the run can be resumed from just before the
  divergence);
* ``stop``: stop cleanly at the step that raised the warning (status ``stopped``, reason
  ``warning``; ``--resume`` continues it);
* ``lower-lr``: multiply the learning rate schedule by 0.1 from the next step on (the
  factor is part of the checkpoint, so a resumed run keeps it).

Under DDP every rank has its own monitor; ``checkpoint`` and ``lower-lr`` would act on one
rank only, so they are refused there (``log`` and ``stop`` work: a stop is agreed by all
ranks at the next loss check). A resumed run's detector starts with an empty history (it
warms up again).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from stability.fitting.detector import WarningConfig
from stability.monitor import Monitor, log_warning

LOWER_LR_FACTOR = 0.1
#: The detector's parameters for training runs (its documented defaults).
DETECTOR = WarningConfig()

_LOGGER = logging.getLogger("stability.monitor")


def _stderr_logger() -> logging.Logger:
    """The monitor's logger, printing to stderr when nothing else handles it."""
    if not _LOGGER.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _LOGGER.addHandler(handler)
    return _LOGGER


def build_monitor(
    action: str,
    recorder,
    *,
    distributed: bool,
    save_checkpoint: Callable[[], None],
    schedule,
) -> Monitor | None:
    """The run's monitor, or None (action ``none``, or no Recorder).

    Raises:
        ValueError: ``checkpoint`` / ``lower-lr`` under DDP, or a Recorder that does not
            record what the detector watches.
    """
    if action == "none" or recorder is None:
        return None
    if distributed and action in ("checkpoint", "lower-lr"):
        raise ValueError(
            f"--on-warning {action} acts on one process only; under torchrun use log or stop"
        )
    actions = [log_warning(_stderr_logger())]
    if action == "checkpoint":
        actions.append(lambda event: save_checkpoint())
    elif action == "lower-lr":
        actions.append(lambda event: schedule.scale_lr(LOWER_LR_FACTOR))
    return Monitor(recorder, DETECTOR, on_warning=actions, stop=action == "stop")


def warning_summary(monitor: Monitor | None, onset_step: int | None) -> dict[str, Any] | None:
    """The first warning as a JSON-ready dict, with its lead over ``onset_step``."""
    if monitor is None or not monitor.warnings:
        return None
    first = monitor.warnings[0]
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in asdict(first).items()}  # fmt: skip
    summary["onset_step"] = onset_step
    summary["lead"] = None if onset_step is None else onset_step - first.warn_step
    summary["message"] = first.describe()
    return summary
