r"""Learning-rate schedules, step-wise.

With :math:`t` the 0-based optimizer step, :math:`T` the total number of steps
(``epochs * steps_per_epoch``), :math:`\eta_0` the initial and :math:`\eta_T` the final
learning rate, step :math:`t` uses

* ``linear``: :math:`\eta(t) = \eta_0 + (\eta_T - \eta_0)\, t / T`;
* ``poly``: :math:`\eta(t) = \eta_T + (\eta_0 - \eta_T)\, (1 - t / T)^p`
  (Caffe's ``poly`` policy when :math:`\eta_T = 0`);

so :math:`\eta(0) = \eta_0` and :math:`\eta(T) = \eta_T` (the value after the last step;
the last step itself uses :math:`\eta(T - 1)`). Steps outside :math:`[0, T]` are clamped
to it. The paper (section 4.1, footnote 3; section 4.2) gives the per-algorithm choices,
encoded in :func:`stability.paper.train.config.preset_config`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from stability.paper.train.config import TrainConfig

__all__ = ["StepSchedule", "linear_lr", "poly_lr", "schedule_lr"]


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
        self.lr_scale = 1.0  # lowered by the monitor's lower-lr action; saved with the state
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        lr = self.lr_fn(self.last_epoch) * self.lr_scale
        return [lr for _ in self.optimizer.param_groups]

    def scale_lr(self, factor: float) -> None:
        """Multiply the schedule, from now on, and every group's current lr by ``factor``."""
        self.lr_scale *= factor
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * factor

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "lr_fn"}
