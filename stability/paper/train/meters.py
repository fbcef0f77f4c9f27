"""Running sums kept on the device: accuracy and loss, and the first non-finite loss.

Nothing in a training step reads a device value on the host: the running loss/accuracy
sums (:class:`Meter`) and the first non-finite loss (:class:`LossWatch`) stay on the
device and are read every ``check_every`` steps and at the end of each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from stability.paper.train.distributed import Dist, all_reduce

__all__ = ["TOPK", "LossWatch", "Meter", "topk_correct"]

#: The accuracies reported: top-1 and top-5.
TOPK = (1, 5)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k (k capped at C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(target[:, None])
    return torch.stack([hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


class Meter:
    r"""Sums of loss :math:`\times` samples, top-1 and top-5 hits and samples, on the device."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch whose mean loss is ``loss``."""
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
        loss, top1, top5, n = all_reduce(self.sums.clone(), dist).tolist()
        if n == 0:
            return math.nan, math.nan, math.nan
        return loss / n, 100.0 * top1 / n, 100.0 * top5 / n


class LossWatch:
    """The first step with a non-finite loss, tracked on the device (no host sync).

    Args:
        device: where the loss lives.
        step: the global step number of the next :meth:`update`.
    """

    def __init__(self, device: torch.device, step: int) -> None:
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)
        self.step = torch.full((), step, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor) -> None:
        """Note this step's loss; the first non-finite one (and its step) is kept."""
        newly = ~torch.isfinite(loss.detach()) & (self.first < 0)
        self.first = torch.where(newly, self.step, self.first)
        self.value = torch.where(newly, loss.detach().float(), self.value)
        self.step += 1

    def flag(self) -> torch.Tensor:
        """1.0 (float64, on the device) once a non-finite loss was seen, else 0.0."""
        return (self.first >= 0).to(torch.float64)
