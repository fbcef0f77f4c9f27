"""What a call is: gradient-accumulation micro-batches are calls 0..k-1 of a step; an
evaluation forward (autograd disabled) is no call and, by default, records nothing.

References: the same training run without any validation forward (same seeds, same
batches), compared bitwise, and the fits of that reference table.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.utils.checkpoint as checkpoint
from records_support import lookup, ref_norm
from torch import nn

from stability import Recorder, fitting
from stability.fitting import depth_growth, metric_table, time_growth

STEPS, ACCUMULATION, WIDTH, DEPTH = 4, 2, 6, 5


def _batches(seed: int, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, WIDTH, generator=generator) for _ in range(count)]


def _train(validation: str | None, **options) -> pd.DataFrame:
    """``STEPS`` SGD steps of ``ACCUMULATION`` micro-batches each; after each ``rec.step()``
    an optional validation forward under ``no_grad`` / ``inference_mode``."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train = _batches(1, STEPS * ACCUMULATION)
    held_out = _batches(2, STEPS)
    evaluate = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    with Recorder(model, weight_every=2, **options) as rec:
        for step in range(STEPS):
            for micro in range(ACCUMULATION):
                model(train[step * ACCUMULATION + micro]).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.step()
            if validation is not None:
                with evaluate[validation]():
                    model(held_out[step])
    return rec.to_frame()


@pytest.mark.parametrize("validation", ["no_grad", "inference_mode"])
def test_validation_forward_is_no_call_and_fits_equal_the_reference(validation):
    """Accumulation 2 + a validation forward after every step: by default the table holds
    exactly the training calls 0 and 1 (bitwise the table of the run without validation),
    and depth_growth / time_growth / metric_table on it equal those of the reference."""
    reference = _train(None)
    frame = _train(validation)
    assert set(frame.call_idx) == {0, 1}
    pd.testing.assert_frame_equal(frame, reference, check_exact=True)
    for metric in ("output_rms", "grad_norm", "gain"):
        pd.testing.assert_frame_equal(
            depth_growth(frame, metric), depth_growth(reference, metric), check_exact=True
        )
    pd.testing.assert_frame_equal(
        time_growth(frame, "2"), time_growth(reference, "2"), check_exact=True
    )
    pd.testing.assert_frame_equal(
        metric_table(frame, "output_norm", 1), metric_table(reference, "output_norm", 1)
    )


def test_micro_batches_are_calls_in_order_and_weights_are_call_zero():
    """Call k of a step is the k-th micro-batch: its output_norm equals the norm of that
    micro-batch's output (hand-run, no Recorder); weight metrics are recorded at call 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 2))
    batches = _batches(3, ACCUMULATION)
    with torch.no_grad():
        expected = [ref_norm(model[0](x)) for x in batches]
    with Recorder(model, weight_every=1) as rec:
        for x in batches:
            model(x).sum().backward()
        rec.step()
    frame = rec.to_frame()
    for call, norm in enumerate(expected):
        assert lookup(frame, "0", "output_norm", call=call) == pytest.approx(norm, rel=1e-6)
    weights = frame[frame.metric == "weight_norm"]
    assert set(weights.call_idx) == {0} and len(weights) == 2


def test_record_no_grad_true_makes_validation_the_next_steps_call_zero():
    """``record_no_grad=True`` records every forward as a call: the validation forward
    after ``rec.step()`` becomes call 0 of the next step and the training micro-batches
    move to calls 1 and 2 (the behaviour the default avoids)."""
    frame = _train("no_grad", record_no_grad=True)
    reference = _train(None)
    assert set(frame[frame.step >= 1].call_idx) == {0, 1, 2}
    assert set(frame[frame.step == 0].call_idx) == {0, 1}
    later = frame[(frame.step >= 1) & (frame.metric == "output_norm")]
    shifted = later.assign(call_idx=later.call_idx - 1)
    shifted = shifted[shifted.call_idx >= 0].reset_index(drop=True)
    want = reference[(reference.step >= 1) & (reference.metric == "output_norm")]
    pd.testing.assert_frame_equal(shifted, want.reset_index(drop=True), check_exact=True)
    assert not depth_growth(frame, "output_rms").equals(depth_growth(reference, "output_rms"))


def test_record_no_grad_must_be_a_bool():
    with pytest.raises(TypeError, match="record_no_grad must be True or False"):
        Recorder(nn.Linear(2, 2), record_no_grad="yes")


def test_reentrant_checkpoint_first_forward_is_a_call():
    """Reentrant checkpointing runs the first forward under no_grad; it is a training call:
    its output_norm (reference: the layer run without checkpointing) and grad_norm are
    recorded at call 0, while a no_grad forward outside any checkpoint records nothing."""
    torch.manual_seed(0)
    layer = nn.Linear(WIDTH, WIDTH)
    x = torch.randn(3, WIDTH, requires_grad=True)
    with torch.no_grad():
        expected = ref_norm(layer(x))
    with Recorder(layer, weight_every=1000) as rec:
        out = checkpoint.checkpoint(layer, x, use_reentrant=True)
        out.pow(2).sum().backward()
        with torch.no_grad():
            layer(x)
        rec.step()
    frame = rec.to_frame()
    assert set(frame.call_idx) == {0}
    assert set(frame.metric) >= {"output_norm", "grad_norm"}
    assert lookup(frame, "(model)", "output_norm") == pytest.approx(expected, rel=1e-6)


def test_fit_of_an_absent_call_names_the_calls_present():
    """With validation forwards left out, a fit of call 2 fails naming calls 0 and 1."""
    frame = _train("no_grad")
    with pytest.raises(ValueError, match=r"call_idx=2.*present for it: \[0, 1\]"):
        fitting.depth_growth(frame, "output_rms", call_idx=2)
