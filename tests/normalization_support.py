"""Helpers shared by the tests of stability.paper.normalization (no tests here)."""

from __future__ import annotations

import math

import torch
from torch import nn

WN_EPS = 0.1  # large enough that ||W|| + eps and sqrt(||W||^2 + eps) differ visibly
C_IN, C_OUT = 3, 5


def row_norm(w: torch.Tensor) -> torch.Tensor:
    """||W_j||_F, by summing squares explicitly."""
    return (w * w).sum(dim=tuple(range(1, w.dim()))).sqrt()


def raw_layer(conv: bool) -> nn.Module:
    """A float64 3x3 conv (C_IN -> C_OUT, padding 1) or a 7 -> C_OUT linear layer."""
    layer = nn.Conv2d(C_IN, C_OUT, 3, padding=1) if conv else nn.Linear(7, C_OUT)
    return layer.double()


def layer_input(conv: bool) -> torch.Tensor:
    """A random input batch for :func:`raw_layer`."""
    return torch.randn(4, C_IN, 6, 6) if conv else torch.randn(6, 7)


def mean_var_with_stderr(y: torch.Tensor) -> tuple[float, float, float, float]:
    """Sample mean and variance with their standard errors (plug-in)."""
    n = y.numel()
    mean = y.mean()
    sq = (y - mean) ** 2
    var = sq.mean()
    return (
        mean.item(),
        (y.std() / math.sqrt(n)).item(),
        var.item(),
        (sq.std() / math.sqrt(n)).item(),
    )
