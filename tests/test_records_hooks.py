"""Tests of :mod:`stability.records.hooks`: what the forward and gradient hooks record per call.

References: layer outputs computed by hand or cloned by a test-owned hook, float64 numpy
norms, gradients from ``torch.autograd.grad`` on an out-of-place copy of the model.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from records_support import (
    WEIGHT,
    InplaceNet,
    SharedNet,
    assert_frame_matches,
    lookup,
    mlp,
    one_step,
    ref_norm,
    ref_weight_metrics,
)
from torch import nn

from stability import Recorder


def test_shared_module_values_per_call():
    """A module run twice: call_idx 0 and 1, each with its own forward and grad_norm values
    (autograd.grad reference), weight metrics once (call 0)."""
    model = SharedNet().double()
    x = torch.randn(5, 4, dtype=torch.float64)

    h0 = model.inp(x)
    s0 = model.shared(torch.tanh(h0))
    s1 = model.shared(torch.tanh(s0))
    out = model.head(torch.tanh(s1))
    loss = out.pow(2).mean()
    grads = torch.autograd.grad(loss, [h0, s0, s1, out])

    with Recorder(model, weight_every=1) as rec:
        one_step(model, x, rec)
    frame = rec.to_frame()

    calls = [
        ("inp", 0, x, h0, grads[0]),
        ("shared", 0, torch.tanh(h0), s0, grads[1]),
        ("shared", 1, torch.tanh(s0), s1, grads[2]),
        ("head", 0, torch.tanh(s1), out, grads[3]),
    ]
    expected = {}
    for name, call, inp, o, g in calls:
        expected[(0, name, call, "output_norm")] = ref_norm(o)
        expected[(0, name, call, "output_rms")] = ref_norm(o) / math.sqrt(o.numel())
        expected[(0, name, call, "gain")] = ref_norm(o) / ref_norm(inp)
        expected[(0, name, call, "grad_norm")] = ref_norm(g)
    for name in ("inp", "shared", "head"):
        for metric, value in ref_weight_metrics(getattr(model, name).weight).items():
            expected[(0, name, 0, metric)] = value
    assert_frame_matches(frame, expected, rel=1e-10)


def test_inplace_relu_after_recorded_layer_grad_norm():
    """grad_norm of a layer followed by ReLU(inplace) and ``+=`` equals autograd.grad of the
    same layer's output in an out-of-place copy of the model."""
    model = InplaceNet(inplace=True)
    reference = InplaceNet(inplace=False)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(6, 5)

    h1 = reference.fc1(x)
    out = reference.fc2(torch.relu(h1 + 0.5))
    g1, g2 = torch.autograd.grad(out.pow(2).mean(), [h1, out])

    with Recorder(model) as rec:
        one_step(model, x, rec)
    frame = rec.to_frame()
    assert lookup(frame, "fc1", "grad_norm") == pytest.approx(ref_norm(g1), rel=1e-6)
    assert lookup(frame, "fc2", "grad_norm") == pytest.approx(ref_norm(g2), rel=1e-6)
    # the norm of what fc1 produced, before the in-place ops changed it
    assert lookup(frame, "fc1", "output_norm") == pytest.approx(ref_norm(h1), rel=1e-6)


def test_autocast_values_match_cloned_outputs():
    """Under CPU bf16 autocast: output/grad norms vs a test-owned hook cloning the outputs."""
    model = mlp()
    x = torch.randn(16, 8)
    captured = {}

    def capture(name):
        def hook(module, args, output):
            captured[name] = (args[0].detach().clone(), output.detach().clone())
            output.register_hook(lambda g: captured.__setitem__(name + ".grad", g.clone()))

        return hook

    handles = [model[i].register_forward_hook(capture(str(i))) for i in (0, 2, 4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().pow(2).mean().backward()
    for handle in handles:
        handle.remove()
    model.zero_grad()

    with Recorder(model) as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().pow(2).mean().backward()
        rec.step()
    frame = rec.to_frame()
    for name in ("0", "2", "4"):
        inp, o = captured[name]
        assert o.dtype == torch.bfloat16
        assert lookup(frame, name, "output_norm") == pytest.approx(ref_norm(o), rel=1e-5)
        assert lookup(frame, name, "gain") == pytest.approx(ref_norm(o) / ref_norm(inp), rel=1e-5)
        grad = captured[name + ".grad"]
        assert lookup(frame, name, "grad_norm") == pytest.approx(ref_norm(grad), rel=1e-5)


class _SkipAtFirstStep(nn.Module):
    """Four Linear layers; ``skip`` names the one left out while ``dropping`` (LayerDrop)."""

    def __init__(self, skip: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
        self.skip, self.dropping = skip, True

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            if not (self.dropping and i == self.skip):
                x = torch.tanh(block(x))
        return x


@pytest.mark.parametrize("skip", [0, 1, 3])
def test_layer_idx_is_depth_order_when_a_layer_is_skipped_at_step_0(skip):
    """A layer skipped at step 0 (LayerDrop) still gets its depth as layer_idx, for every
    step: the reference is the call order of a full forward, seen by a test-owned hook."""
    model = _SkipAtFirstStep(skip)
    order = []
    handles = [
        block.register_forward_hook(lambda m, a, o, name=f"blocks.{i}": order.append(name))
        for i, block in enumerate(model.blocks)
    ]
    model.dropping = False
    model(torch.randn(2, 4))
    for handle in handles:
        handle.remove()
    depth = {name: i for i, name in enumerate(order)}

    model.dropping = True
    with Recorder(model) as rec:
        one_step(model, torch.randn(2, 4), rec)
        model.dropping = False
        for _ in range(2):
            one_step(model, torch.randn(2, 4), rec)
    frame = rec.to_frame()
    got = frame.groupby("layer").layer_idx.unique().apply(list).to_dict()
    assert got == {name: [i] for name, i in depth.items()}
    assert rec._layer_idx == depth
    assert set(frame[frame.step == 0].layer) == set(depth) - {f"blocks.{skip}"}


def test_gain_of_inplace_module_reads_the_input_before_it_is_overwritten():
    """ReLU(inplace=True) selected by a callable: gain = ||relu(h)|| / ||h|| with h the
    input before the forward overwrote it (brute force on a copy), not 1.0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    x = torch.randn(5, 6)
    with torch.no_grad():
        h = model[0](x)
        expected = ref_norm(torch.relu(h)) / ref_norm(h)
    assert expected < 0.9
    with Recorder(model, include=lambda name, m: name in ("0", "1")) as rec:
        one_step(model, x, rec)
    frame = rec.to_frame()
    assert lookup(frame, "1", "gain") == pytest.approx(expected, rel=1e-6)
    assert lookup(frame, "1", "output_norm") == pytest.approx(ref_norm(torch.relu(h)), rel=1e-6)
    assert lookup(frame, "0", "output_norm") == pytest.approx(ref_norm(h), rel=1e-6)


def test_gain_of_zero_input_is_nan_and_not_a_divergence():
    """An all-zero input: gain is undefined (NaN, not inf), and the divergence rule reports
    no onset for a run whose every norm is finite (stability.fitting.divergence_onset)."""
    from stability.fitting import divergence_onset

    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].bias.fill_(0.5)
    with Recorder(model) as rec:
        for _ in range(3):
            one_step(model, torch.zeros(2, 4), rec)
    frame = rec.to_frame()
    gains = frame[(frame.layer == "0") & (frame.metric == "gain")].value
    assert len(gains) == 3 and gains.isna().all()
    assert lookup(frame, "2", "gain") > 0  # a nonzero input still has its gain
    assert divergence_onset(frame) is None


def test_norms_of_huge_finite_activations_and_gradients_are_recorded_finite():
    """Activations ~1e20 and gradients ~1e20 (float32 squares overflow): the recorded
    output_norm, output_rms and grad_norm equal float64 references (the old float32 norm
    recorded inf, which read as a divergence)."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.mul_(1e20)
    x = torch.randn(3, 4)
    outputs, grads = {}, {}

    def keep(module, args, out, name):
        outputs[name] = out.detach()
        out.register_hook(lambda grad: grads.__setitem__(name, grad.detach()))

    for name in ("0", "1"):
        model.get_submodule(name).register_forward_hook(partial(keep, name=name))
    with Recorder(model) as rec:
        one_step(model, x, rec, loss_fn=lambda out: out.sum() * 1e20)
    frame = rec.to_frame()
    for name in ("0", "1"):
        assert math.isinf(torch.linalg.vector_norm(outputs[name]).item())  # float32 overflows
        assert lookup(frame, name, "output_norm") == pytest.approx(ref_norm(outputs[name]))
        assert lookup(frame, name, "grad_norm") == pytest.approx(ref_norm(grads[name]))
    assert (
        frame[frame.metric.isin(["output_norm", "output_rms", "grad_norm"])]
        .value.map(math.isfinite)
        .all()
    )


def test_transformer_encoder_records_attention_and_every_selected_layer():
    """nn.TransformerEncoder in training: each self_attn is a layer whose output is the
    attention output (a test-owned hook on the model without the Recorder), with gain
    against the query; its out_proj and in_proj weights have weight rows; every selected
    layer has rows and the outputs are bitwise those of the model without the Recorder."""
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    twin = copy.deepcopy(model)
    x = torch.randn(3, 5, 8)
    seen = {}
    for name, module in twin.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            hook = lambda m, a, out, name=name: seen.__setitem__(name, (a[0], out[0]))  # noqa: E731
            module.register_forward_hook(hook)
    expected = twin(x)
    with Recorder(model, weight_every=1) as rec:
        out = model(x)
        out.pow(2).mean().backward()
        rec.step()
    assert torch.equal(out, expected)
    frame = rec.to_frame()
    assert set(frame.layer) == set(rec.layer_names)
    for i in (0, 1):
        name = f"layers.{i}.self_attn"
        query, attended = seen[name]
        assert lookup(frame, name, "output_norm") == pytest.approx(ref_norm(attended), rel=1e-5)
        gain = ref_norm(attended) / ref_norm(query)
        assert lookup(frame, name, "gain") == pytest.approx(gain, rel=1e-5)
        assert set(frame[frame.layer == name + ".out_proj"].metric) == set(WEIGHT)
        assert set(frame[frame.layer == name].metric) >= set(WEIGHT) | {"grad_norm"}


def test_complex_layer_is_skipped_and_training_runs():
    """A complex-valued Linear is skipped with one warning naming it; the real layers are
    recorded and the model trains (the hook never sees a complex weight)."""
    model = nn.ModuleDict({"c": nn.Linear(3, 3, dtype=torch.cfloat), "r": nn.Linear(3, 2)})
    with pytest.warns(UserWarning, match=r"c \(Linear, complex"):
        rec = Recorder(model, weight_every=1)
    with rec:
        z = model["c"](torch.randn(2, 3, dtype=torch.cfloat))
        model["r"](z.abs()).pow(2).mean().backward()
        rec.step()
    assert set(rec.to_frame().layer) == {"r"}
