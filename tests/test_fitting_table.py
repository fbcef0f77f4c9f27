"""The main-path rule of the depth fits (stability.fitting.table.main_path_layers).

A depth fit over a peft LoRA model must fit the chain of wrapped layers, not the wrapper,
its ``base_layer`` and the low-rank ``lora_A``/``lora_B`` side branch as if they were four
successive layers. The reference is the same network without LoRA: its B matrices start at
zero, so at initialisation the wrapped model computes exactly the plain one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from stability import Recorder, fitting
from stability.fitting.table import main_path_layers


def test_main_path_keeps_outermost_layers():
    names = [
        "blocks.0",
        "blocks.0.conv",
        "blocks.0.lora_A.default",
        "blocks.1",
        "blocks.10",  # not nested in blocks.1: the prefix must end at a dot
        "head",
        "(model)",
    ]
    assert main_path_layers(names) == ["blocks.0", "blocks.1", "blocks.10", "head", "(model)"]
    assert main_path_layers(["a.b", "a.c"]) == ["a.b", "a.c"]  # siblings stay


def _chain(depth: int, width: int, gain: float, seed: int = 0) -> nn.Sequential:
    """``depth`` bias-free linear layers, each scaled-orthogonal (norm x gain per layer)."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layer = nn.Linear(width, width, bias=False)
        nn.init.orthogonal_(layer.weight, gain=gain)
        layers.append(layer)
    return nn.Sequential(*layers)


def _record(model: nn.Module, x: torch.Tensor) -> pd.DataFrame:
    with Recorder(model, metrics=["output_rms"]) as rec:
        model(x).square().mean().backward()
        rec.step()
        return rec.to_frame()


def test_depth_fit_of_a_lora_model_follows_the_main_path():
    peft = pytest.importorskip("peft")
    depth, width, gain = 12, 32, 1.1
    x = torch.randn(64, width, generator=torch.Generator().manual_seed(1))
    plain = _chain(depth, width, gain)
    reference = fitting.depth_growth(_record(plain, x))
    assert reference["factor"].iloc[0] == pytest.approx(gain, rel=1e-6)

    config = peft.LoraConfig(r=4, target_modules=[str(i) for i in range(depth)])
    lora = peft.get_peft_model(_chain(depth, width, gain), config)
    frame = _record(lora, x)
    layers = set(frame["layer"])
    assert any(name.endswith("lora_A.default") for name in layers)  # the branches are recorded
    assert any(name.endswith("base_layer") for name in layers)

    growth = fitting.depth_growth(frame)
    assert growth["n_layers"].iloc[0] == depth
    assert growth["factor"].iloc[0] == pytest.approx(reference["factor"].iloc[0], rel=1e-6)
    assert growth["r2"].iloc[0] == pytest.approx(1.0, abs=1e-9)

    # Every recorded layer in one chain is the fit the main-path rule prevents.
    mixed = fitting.depth_growth(frame, main_path=False)
    assert mixed["n_layers"].iloc[0] > depth
    assert mixed["r2"].iloc[0] < 0.9


def test_explicit_layers_then_main_path():
    values = np.array([[1.0, 2.0, 4.0, 8.0, 100.0]])
    names = ["a", "b", "c", "d", "d.inner"]
    frame = pd.DataFrame(
        {
            "step": 0,
            "layer": names,
            "layer_idx": np.arange(5),
            "call_idx": 0,
            "metric": "output_rms",
            "value": values[0],
        }
    )
    assert fitting.depth_growth(frame)["factor"].iloc[0] == pytest.approx(2.0)
    only_inner = fitting.depth_growth(frame, layers=["b", "c", "d.inner"])
    assert only_inner["n_layers"].iloc[0] == 3  # d is not selected, so d.inner is kept


def test_fits_read_the_first_training_call_by_default():
    """Two calls per step (two micro-batches, call 1 growing twice as fast across depth):
    the default of metric_table / depth_growth / time_growth is call 0
    (table.TRAINING_CALL), the same as asking for it; call 1 is fitted only on request."""
    from stability.fitting.table import TRAINING_CALL

    rows = [
        (step, f"l{k}", k, call, "output_rms", float(np.exp((1 + call) * 0.1 * k + 0.01 * step)))
        for step in range(4)
        for k in range(5)
        for call in (1, 0)
    ]
    frame = pd.DataFrame(
        rows, columns=["step", "layer", "layer_idx", "call_idx", "metric", "value"]
    )
    assert TRAINING_CALL == 0
    first = frame[frame.call_idx == 0]
    pd.testing.assert_frame_equal(fitting.depth_growth(frame), fitting.depth_growth(first))
    assert np.allclose(fitting.depth_growth(frame).slope, 0.1)
    assert np.allclose(fitting.depth_growth(frame, call_idx=1).slope, 0.2)
    pd.testing.assert_frame_equal(
        fitting.metric_table(frame, "output_rms"), fitting.metric_table(first, "output_rms")
    )
    assert fitting.time_growth(frame, "l2").slope.item() == pytest.approx(0.01)
