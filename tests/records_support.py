"""References and small models shared by the Recorder's test files.

``tests/test_recorder.py`` and ``tests/test_records_{selection,weights,hooks}.py`` compare
the Recorder against these: float64 numpy norms, an explicit double loop for row coherence,
and the frame lookups they all need.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

FORWARD = ("output_norm", "output_rms", "gain")
WEIGHT = ("weight_norm", "coherence", "coherence_mean")  # zero_rows only when nonzero
COLUMNS = ["step", "layer", "layer_idx", "call_idx", "metric", "value"]
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def ref_norm(t) -> float:
    """||t||_2 by an explicit float64 numpy sum of squares."""
    a = t.detach().to(torch.float64).cpu().numpy() if isinstance(t, torch.Tensor) else t
    return math.sqrt(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)))


def ref_coherence(weight: torch.Tensor) -> tuple[float, float]:
    """(max, mean) |cos| over pairs of distinct nonzero rows (ungrouped layers; the rows as
    stored, ``weight.reshape(out, -1)``): an explicit double loop; (0, 0) with no pair."""
    rows = weight.detach().to(torch.float64).reshape(weight.shape[0], -1).numpy()
    rows = [row for row in rows if np.any(row != 0)]
    n = len(rows)
    values = [
        abs(float(rows[i] @ rows[j])) / (ref_norm(rows[i]) * ref_norm(rows[j]))
        for i in range(n)
        for j in range(n)
        if i != j
    ]
    return (max(values), sum(values) / len(values)) if values else (0.0, 0.0)


def ref_weight_metrics(weight: torch.Tensor) -> dict[str, float]:
    """The weight metrics of a weight stored with its output units first (no zero row)."""
    mx, mean = ref_coherence(weight)
    return {"weight_norm": ref_norm(weight), "coherence": mx, "coherence_mean": mean}


def lookup(frame: pd.DataFrame, layer: str, metric: str, step: int = 0, call: int = 0) -> float:
    """The single value recorded for (step, layer, call, metric)."""
    hit = frame[
        (frame.step == step)
        & (frame.layer == layer)
        & (frame.metric == metric)
        & (frame.call_idx == call)
    ]
    assert len(hit) == 1, (layer, metric, step, call, len(hit))
    return float(hit.value.iloc[0])


def assert_frame_matches(frame: pd.DataFrame, expected: dict, rel: float) -> None:
    """``expected`` maps (step, layer, call, metric) -> reference value; the keys must match."""
    got = {(int(r.step), r.layer, int(r.call_idx), r.metric): r.value for r in frame.itertuples()}
    assert len(got) == len(frame), "duplicate (step, layer, call, metric) rows"
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=rel), key


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            assert not getattr(module, attr, {}), f"{name or '<root>'}.{attr} not empty"


def one_step(model, x, rec=None, loss_fn=None):
    """Forward, backward and ``rec.step()``; returns nothing so the graph dies here."""
    out = model(x)
    loss = loss_fn(out) if loss_fn else out.pow(2).mean()
    loss.backward()
    if rec is not None:
        rec.step()


class SharedNet(nn.Module):
    """``shared`` runs twice per forward."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.head(h)


class InplaceNet(nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.act = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        h = self.fc1(x)
        h += 0.5  # in-place ops directly on the recorded output
        return self.fc2(self.act(h))


def mlp(widths=(8, 8, 8, 8)) -> nn.Sequential:
    layers = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


class Named(nn.Module):
    """Modules enc.0, enc.1 (Tanh), enc.2, dec.0, dec.1 (Tanh), head."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4))
        self.dec = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.dec(self.enc(x)))
