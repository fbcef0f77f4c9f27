"""Reliability of the Recorder on arbitrary models, under faults and on bad input (issue 8).

What is *not* repeated here (``tests/test_recorder.py`` has it): the values of each metric
on hand-run layers, resnet18 / shared-module / in-place / dict-output bitwise checks, the
schedule row counts of one fixed model, hook removal and garbage collection, DDP and
compile, basic argument errors (``every=0``, unknown metric name, an unmatched include
glob), the callable-matching-nothing warning, and ``save`` to an existing parquet file.

References used throughout:

* a recorder-free ``copy.deepcopy`` of the model run with the same seed: outputs,
  parameter gradients and buffers compared with ``torch.equal`` (bitwise);
* test-owned plain forward hooks on that copy: which modules ran, how often, and the
  float64 norms of what they produced, captured at the moment they produced it;
* row counts derived from first principles (calls per step per layer x recorded steps x
  metrics; weight metrics only at weight steps and only on call 0);
* the module types of each model, for the set of layers the default selection takes.

Conventions the tests pin down (and document):

* A selected module that exists but whose ``forward`` never runs has no row at all. The
  canonical case is ``nn.MultiheadAttention.out_proj`` (torchvision's ViT): the attention
  reads ``out_proj.weight`` inside ``F.multi_head_attention_forward`` without calling the
  module, so its forward hook never fires. "Every selected layer recorded" therefore
  means: exactly the selected layers whose forward ran, found by the test's own hooks;
  the others are reported here as never-called.
* For a tuple / list / dict output (or input), the recorded tensor is the first floating
  point tensor, depth first in iteration order (LSTM: ``output`` of ``(output, (h, c))``;
  MultiheadAttention: ``attn_output`` of ``(attn_output, attn_weights)``; a
  ``PackedSequence``: its ``data``).
* Recurrent layers keep their matrices in ``weight_ih_l0`` ... and own no ``weight``: the
  default selection skips them; a callable include selects them (forward and gradient
  metrics, no weight metrics).

Each test states the behaviour the contract asks for; several were written against
earlier bugs (views modified in place, activation checkpointing, deep copies of a recorded
model, keyword inputs, zero-width layers, argument types, temporary files left by save).
"""

from __future__ import annotations

import copy
import gc
import inspect
import math
import os
import subprocess
import sys
import textwrap
import warnings
import weakref
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from records_support import FORWARD, HOOK_DICTS, WEIGHT
from torch import nn

from stability import Recorder
from stability.fitting import divergence_onset

ALL_METRICS = FORWARD + ("grad_norm",) + WEIGHT
NORMS = ("output_norm", "output_rms", "grad_norm", "weight_norm")

# --------------------------------------------------------------------------- helpers


def ref_norm(t: torch.Tensor) -> float:
    """||t||_2 as a float64 numpy sum of squares."""
    a = t.detach().to(torch.float64).cpu().numpy()
    return math.sqrt(float(np.sum(a**2)))


def first_float(value):
    """The test's own depth-first search for the first floating tensor of a structure."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    items = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list | tuple):
        for item in items:
            found = first_float(item)
            if found is not None:
                return found
    return None


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            assert not getattr(module, attr, {}), f"{name or '<root>'}.{attr} not empty"


def assert_same(a, b, where="output") -> None:
    """Bitwise equality of two (nested) outputs: same structure, torch.equal leaves."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def grads_of(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] is None) == (b[name] is None), name
        assert a[name] is None or torch.equal(a[name], b[name]), name


class CallLog:
    """Plain forward hooks of the test's own on every module: calls and output norms.

    ``calls[name]`` counts forward runs; ``records[(name, call)]`` holds the float64 norms
    of the first floating input and output at the moment the module produced them (None
    where there is none) and whether that output requires grad.
    """

    def __init__(self, model: nn.Module):
        self.calls: dict[str, int] = defaultdict(int)
        self.records: dict[tuple[str, int], tuple[float | None, float | None, bool]] = {}
        self.handles = [
            module.register_forward_hook(self._hook(name or "(model)"))
            for name, module in model.named_modules()
        ]

    def _hook(self, name):
        def hook(module, args, output):
            call = self.calls[name]
            self.calls[name] = call + 1
            x, o = first_float(args), first_float(output)
            self.records[(name, call)] = (
                None if x is None else ref_norm(x),
                None if o is None else ref_norm(o),
                o is not None and o.requires_grad,
            )

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def default_layers(model: nn.Module) -> set[str]:
    """Reference for the default selection of these models: Linear, Conv and attention."""
    kinds = nn.Linear | nn.Conv2d | nn.MultiheadAttention
    return {n for n, m in model.named_modules() if isinstance(m, kinds)}


def output_unit_rows(module: nn.Module) -> list[torch.Tensor]:
    """Reference output-unit rows of the layers of these tests: an embedding's rows are its
    table's columns (one_hot -> vector), attention's are its q, k, v projections."""
    if isinstance(module, nn.MultiheadAttention):
        return list(module.in_proj_weight.detach().chunk(3))
    weight = module.weight.detach()
    if isinstance(module, nn.Embedding):
        return [weight.t()]
    return [weight.reshape(weight.shape[0], -1)]


def check_model(model, x, loss_fn, *, expected_layers=None, **rec_kwargs):
    """One training step of a deep copy without and one with the Recorder (same seed).

    Asserts bitwise-identical outputs, gradients and buffers, no hook left behind, the
    recorded layer set == the selected layers whose forward ran (test-owned hooks), call
    counts equal to the observed calls and the exact row count of one recorded step at a
    weight step. Returns ``(frame, recorder, never_called, log)``.
    """
    plain, recorded = copy.deepcopy(model), copy.deepcopy(model)
    log = CallLog(plain)
    torch.manual_seed(99)
    out_a = plain(x)
    loss_fn(out_a).backward()
    log.remove()

    torch.manual_seed(99)
    with Recorder(recorded, **rec_kwargs) as rec:
        out_b = recorded(x)
        loss_fn(out_b).backward()
        rec.step()
    frame = rec.to_frame()

    assert_same(out_a, out_b)
    assert_same_grads(grads_of(plain), grads_of(recorded))
    for (name, a), (_, b) in zip(plain.named_buffers(), recorded.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    assert_no_hooks(recorded)

    selected = set(rec.layer_names)
    if expected_layers is not None:
        assert selected == expected_layers
    modules = dict(recorded.named_modules())
    # an attention's out_proj never runs as a module: its weight rows hang on the attention
    owner = {n + ".out_proj": n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)}
    ran = {name for name in selected if log.calls.get(owner.get(name, name), 0) > 0}
    weights_only = {name for name in ran if name in owner}
    never_called = selected - ran
    assert set(frame.layer) == ran
    calls = frame.groupby("layer").call_idx.max().add(1).to_dict()
    assert calls == {name: 1 if name in weights_only else log.calls[name] for name in ran}
    metrics = set(rec.metrics)
    expected_rows = 0
    for name in ran:
        for call in range(0 if name in weights_only else log.calls[name]):
            x_norm, o_norm, needs_grad = log.records[(name, call)]
            if o_norm is not None:  # output_norm, output_rms; gain needs a float input
                expected_rows += len(metrics & {"output_norm", "output_rms"})
                expected_rows += "gain" in metrics and x_norm is not None
                expected_rows += "grad_norm" in metrics and needs_grad
        weight = getattr(modules[name], "weight", None)
        is_attention = isinstance(modules[name], nn.MultiheadAttention)
        if is_attention or (isinstance(weight, torch.Tensor) and weight.ndim >= 2):
            expected_rows += len(metrics & set(WEIGHT))
            rows = output_unit_rows(modules[name])
            zero = sum(int((r.abs().sum(dim=1) == 0).sum()) for r in rows)
            expected_rows += "zero_rows" in metrics and zero > 0  # recorded where not 0
    assert len(frame) == expected_rows
    assert not frame.duplicated(["step", "layer", "call_idx", "metric"]).any()
    values = frame[frame.metric.isin(NORMS)].value
    assert np.isfinite(values).all() and (values >= 0).all()
    for row in frame[frame.metric.isin(("coherence", "coherence_mean"))].itertuples():
        assert 0 <= row.value <= 1, (row.layer, row.metric)  # zero rows are left out
    return frame, rec, never_called, log


def sum_loss(out) -> torch.Tensor:
    """Sum over every floating tensor of a (nested) output of its mean square."""
    if isinstance(out, torch.Tensor):
        return out.float().pow(2).mean() if out.is_floating_point() else out.new_zeros(())
    items = out.values() if isinstance(out, dict) else out
    return sum((sum_loss(item) for item in items), torch.zeros(()))


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """One intra-op thread per test, restored afterwards. On a 2-core machine shared with
    other jobs, OpenMP barriers wait for descheduled threads: mobilenet_v3_small's step
    measured 30-55 s with 2 threads against 0.3 s with 1. Both copies of a model run with
    the same thread count, so the bitwise comparisons are unaffected."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- 1. property tests


class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: list[nn.Module]):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return x + self.body(x)


class Generated(nn.Module):
    """``shared`` is registered first (so it keeps that name) and may be called 0..n times
    from ``body``; a shared Linear that is never referenced is a selected, never-called
    layer."""

    def __init__(self, shared: nn.Linear, body: list[nn.Module]):
        super().__init__()
        self.shared = shared
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return self.body(x)


@st.composite
def model_specs(draw):
    """(spec, shape): spec is a list of 1-5 blocks; every block keeps the (N, C, H, W)
    shape: Linear acts on the last dimension, Conv2d uses same padding."""
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 2, 4]))
    h = draw(st.integers(1, 4))
    w = draw(st.integers(1, 5))
    groups = [g for g in (1, 2, 4) if c % g == 0]
    leaf = st.one_of(
        st.just(("linear",)),
        st.tuples(st.just("conv"), st.sampled_from([1, 3]), st.sampled_from(groups)),
        st.tuples(st.just("relu"), st.booleans()),
        st.just(("tanh",)),
        st.just(("gelu",)),
        st.just(("dropout",)),
        st.just(("shared",)),
    )
    block = st.one_of(leaf, st.tuples(st.just("residual"), st.lists(leaf, min_size=1, max_size=2)))
    spec = draw(st.lists(block, min_size=1, max_size=5))
    return spec, (n, c, h, w)


def build(spec, shape):
    """The model of a spec, and from first principles: layer name -> calls per forward."""
    _, c, _, w = shape
    shared = nn.Linear(w, w)
    calls = {"shared": 0}

    def leaf(item, name):
        kind = item[0]
        if kind == "linear":
            calls[name] = 1
            return nn.Linear(w, w)
        if kind == "conv":
            calls[name] = 1
            return nn.Conv2d(c, c, item[1], padding="same", groups=item[2])
        if kind == "shared":
            calls["shared"] += 1
            return shared
        if kind == "relu":
            return nn.ReLU(inplace=item[1])
        return {"tanh": nn.Tanh, "gelu": nn.GELU, "dropout": nn.Dropout}[kind]()

    body = []
    for i, item in enumerate(spec):
        if item[0] == "residual":
            body.append(
                Residual([leaf(sub, f"body.{i}.body.{j}") for j, sub in enumerate(item[1])])
            )
        else:
            body.append(leaf(item, f"body.{i}"))
    return Generated(shared, body), calls


def train(model, xs, seed, rec=None):
    """SGD steps; per step the output and the parameter gradients (before the update)."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    outs, grads = [], []
    for x in xs:
        out = model(x.clone())  # a ReLU(inplace) first block would modify x itself
        out.pow(2).mean().backward()
        outs.append(out.detach().clone())
        grads.append(grads_of(model))
        if rec is not None:
            rec.step()
        opt.step()
        opt.zero_grad()
    return outs, grads


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# always tried: Linear + ReLU(inplace) on a 4-D input (the Linear output is a view), and a
# shared Linear called twice inside and outside a residual with a grouped conv and dropout
@example(([("linear",), ("relu", True)], (1, 1, 1, 1)), 1, 1, 1, None, 0)
@example(
    (
        [("shared",), ("residual", [("conv", 3, 2), ("shared",)]), ("dropout",), ("gelu",)],
        (2, 4, 3, 5),
    ),
    3,
    2,
    3,
    None,
    7,
)
@given(
    spec_shape=model_specs(),
    steps=st.integers(1, 3),
    every=st.integers(1, 3),
    weight_every=st.integers(1, 3),
    metrics=st.one_of(st.none(), st.sets(st.sampled_from(ALL_METRICS), min_size=1).map(sorted)),
    seed=st.integers(0, 2**16),
)
def test_generated_models(spec_shape, steps, every, weight_every, metrics, seed):
    """Random stacks of Linear / Conv2d (same padding, groups) / ReLU (in-place or not) /
    Tanh / GELU / Dropout / residual adds / one shared Linear called 0..n times.

    References: a recorder-free deep copy trained with the same seed (outputs and gradients
    at every step bitwise equal; a model that fails on its own fails identically with the
    Recorder); rows = sum over recorded steps of calls x forward/grad metrics plus, at
    weight steps, selected-and-called layers x weight metrics; output_norm / gain equal the
    float64 norms captured by a test-owned hook on the copy; norms finite and >= 0,
    coherence in [0, 1]."""
    spec, shape = spec_shape
    torch.manual_seed(seed)
    model, calls = build(spec, shape)
    xs = [torch.randn(shape) for _ in range(steps)]
    plain, recorded = copy.deepcopy(model), copy.deepcopy(model)
    log = CallLog(plain)
    kwargs = {"every": every, "weight_every": weight_every, "metrics": metrics}

    try:
        outs_a, grads_a = train(plain, xs, seed)
    except RuntimeError as error:  # e.g. ReLU(inplace) on a tensor autograd saved
        event("the model fails on its own")
        with pytest.raises(type(error)) as info:
            with Recorder(recorded, **kwargs) as rec:
                train(recorded, xs, seed, rec)
        assert str(info.value) == str(error)
        assert_no_hooks(recorded)
        return
    with Recorder(recorded, **kwargs) as rec:
        outs_b, grads_b = train(recorded, xs, seed, rec)
    assert_no_hooks(recorded)
    for a, b in zip(outs_a, outs_b, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert_same_grads(a, b)

    assert set(rec.layer_names) == set(calls)
    chosen = set(ALL_METRICS if metrics is None else metrics)
    per_call = len(chosen & set(FORWARD + ("grad_norm",)))
    per_layer = len(chosen & set(WEIGHT))
    called = [name for name, n in calls.items() if n > 0]
    expected = 0
    for step in range(steps):
        if step % every == 0:
            expected += sum(calls.values()) * per_call
        if step % weight_every == 0:
            expected += len(called) * per_layer
    frame = rec.to_frame()
    assert len(frame) == expected
    assert not frame.duplicated(["step", "layer", "call_idx", "metric"]).any()
    assert set(frame.layer) <= set(called)
    assert set(frame[frame.metric.isin(WEIGHT)].call_idx) <= {0}

    norms = frame[frame.metric.isin(NORMS)].value
    assert np.isfinite(norms).all() and (norms >= 0).all()
    coherence = frame[frame.metric.isin(("coherence", "coherence_mean"))].value
    assert ((coherence >= 0) & (coherence <= 1)).all()

    # forward values vs the test's hook on the plain copy; calls restart at every step
    log.remove()
    step_of_call: dict[tuple[str, int], int] = {}
    for name, n in calls.items():
        for k in range(n * steps):
            step_of_call[(name, k)] = k // n
    for row in frame[frame.metric.isin(("output_norm", "gain"))].itertuples():
        global_call = row.step * calls[row.layer] + row.call_idx
        assert step_of_call[(row.layer, global_call)] == row.step
        x_norm, o_norm, _ = log.records[(row.layer, global_call)]
        if row.metric == "output_norm":
            assert row.value == pytest.approx(o_norm, rel=1e-5, abs=1e-6)
        elif x_norm > 0:
            assert row.value == pytest.approx(o_norm / x_norm, rel=1e-5, abs=1e-6)
        else:
            assert row.value == math.inf or math.isnan(row.value)


# --------------------------------------------------------------------------- 2. named models


def test_densenet121():
    """torchvision densenet121 (weights=None), train mode, 2x3x32x32 (the smallest input
    its four poolings allow): bitwise equal to a recorder-free copy, every Conv/Linear
    recorded once, none never-called."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.densenet121(weights=None, num_classes=10).train()
    y = torch.tensor([1, 7])
    frame, rec, never, _ = check_model(
        model,
        torch.randn(2, 3, 32, 32),
        lambda out: F.cross_entropy(out, y),
        expected_layers=default_layers(model),
    )
    assert len(rec.layer_names) == 121
    assert never == set()
    assert set(frame.call_idx) == {0}


def test_mobilenet_v3_small():
    """torchvision mobilenet_v3_small (in-place Hardswish, squeeze-excitation, BN), train
    mode, batch 2 at 32x32: bitwise equal (BN running stats too), every layer recorded."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10).train()
    y = torch.tensor([3, 4])
    frame, rec, never, _ = check_model(
        model,
        torch.randn(2, 3, 32, 32),
        lambda out: F.cross_entropy(out, y),
        expected_layers=default_layers(model),
    )
    assert never == set()
    assert len(rec.layer_names) == 54


def _vit_out_projs(model) -> set[str]:
    return {
        n + ".out_proj" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
    }


def test_small_vision_transformer():
    """torchvision VisionTransformer (image 32, patch 16, 2 layers, width 32): bitwise
    equal; every selected layer has rows: the attention modules, and their out_proj
    (applied by F.multi_head_attention_forward, never called) through them."""
    vt = pytest.importorskip("torchvision.models.vision_transformer")
    model = vt.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).train()
    y = torch.tensor([5, 0])
    frame, rec, never, _ = check_model(
        model,
        torch.randn(2, 3, 32, 32),
        lambda out: F.cross_entropy(out, y),
        expected_layers=default_layers(model),
    )
    assert never == set() and _vit_out_projs(model) <= set(frame.layer)
    assert "conv_proj" in set(frame.layer)
    # torchvision zero-initialises the classifier head: every row is zero, no pair is left
    head = frame[frame.layer == "heads.head"].set_index("metric").value
    assert head["coherence"] == 0.0 and head["weight_norm"] == 0.0
    assert head["zero_rows"] == model.heads.head.out_features


@pytest.mark.slow
def test_vit_b_16_at_224():
    """torchvision vit_b_16 (weights=None) at 1x3x224x224 with all metrics: bitwise equal;
    every selected layer recorded (the 12 attention out_proj through their attention). Slow: ~25 s
    on one core (two 86M-parameter steps and coherence of 3072-row weights)."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.vit_b_16(weights=None).train()
    frame, rec, never, _ = check_model(
        model,
        torch.randn(1, 3, 224, 224),
        lambda out: out.pow(2).mean(),
        expected_layers=default_layers(model),
    )
    assert never == set() and len(_vit_out_projs(model)) == 12
    assert set(frame.layer) == set(rec.layer_names)


class RecurrentNet(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(4, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        if isinstance(out, nn.utils.rnn.PackedSequence):
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        return self.head(out[:, -1])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_recurrent_models(cls):
    """LSTM / GRU: by default only ``head`` (the recurrent weights are not named
    ``weight``); a callable include selects the recurrent module, whose recorded output is
    the first tensor of its tuple output: output_norm == norm of ``output`` (test hook) and
    grad_norm == torch.autograd.grad of the loss w.r.t. that tensor; bitwise equal."""
    model = RecurrentNet(cls)
    x = torch.randn(3, 7, 4)
    frame, *_ = check_model(model, x, sum_loss, expected_layers={"head"})
    assert set(frame.layer) == {"head"}

    include = lambda name, m: isinstance(m, nn.RNNBase) or name == "head"  # noqa: E731
    frame, _, never, log = check_model(model, x, sum_loss, include=include)
    assert never == set()
    rnn = frame[frame.layer == "rnn"]
    assert set(rnn.metric) == set(FORWARD) | {"grad_norm"}  # no `weight`: no weight metrics
    twin = copy.deepcopy(model)
    out, _ = twin.rnn(x)
    (grad,) = torch.autograd.grad(twin.head(out[:, -1]).pow(2).mean(), [out])
    value = dict(zip(rnn.metric, rnn.value, strict=True))
    assert value["output_norm"] == pytest.approx(ref_norm(out), rel=1e-5)
    assert value["output_norm"] == pytest.approx(log.records[("rnn", 0)][1], rel=1e-5)
    assert value["gain"] == pytest.approx(ref_norm(out) / ref_norm(x), rel=1e-5)
    assert value["grad_norm"] == pytest.approx(ref_norm(grad), rel=1e-5)


def test_lstm_packed_sequence():
    """An LSTM fed a PackedSequence (a tuple subclass): input and output norms are those of
    the packed ``data`` tensors (padding excluded), bitwise equal to no Recorder."""
    model = RecurrentNet(nn.LSTM)
    padded = torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 3, 2])
    packed = nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True)
    include = lambda name, m: isinstance(m, nn.LSTM)  # noqa: E731
    frame, *_ = check_model(model, packed, sum_loss, include=include)
    with torch.no_grad():
        out, _ = copy.deepcopy(model).rnn(packed)
    norms = dict(zip(frame.metric, frame.value, strict=True))
    assert norms["output_norm"] == pytest.approx(ref_norm(out.data), rel=1e-5)
    assert norms["gain"] == pytest.approx(ref_norm(out.data) / ref_norm(packed.data), rel=1e-5)


class AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        attended, weights = self.attn(x, x, x, need_weights=True)
        return self.head(attended), weights


def test_multihead_attention():
    """nn.MultiheadAttention: the default selection takes ``attn`` and ``attn.out_proj``
    (a Linear whose forward never runs: its weight rows come through ``attn``); a callable include
    records ``attn`` with output = attn_output (first of the tuple; test-hook norm) and
    gain against the query. Bitwise equal in train mode and under eval + no_grad (the
    fast path)."""
    model = AttentionNet()
    x = torch.randn(2, 5, 8)
    expected = {"attn", "attn.out_proj", "head"}
    frame, _, never, _ = check_model(model, x, sum_loss, expected_layers=expected)
    assert never == set()

    include = lambda name, m: isinstance(m, nn.MultiheadAttention)  # noqa: E731
    frame, _, never, log = check_model(model, x, sum_loss, include=include)
    assert set(frame.layer) == {"attn"}
    value = dict(zip(frame.metric, frame.value, strict=True))
    with torch.no_grad():
        attended, _ = copy.deepcopy(model).attn(x, x, x)
    assert value["output_norm"] == pytest.approx(ref_norm(attended), rel=1e-5)
    assert value["gain"] == pytest.approx(ref_norm(attended) / ref_norm(x), rel=1e-5)

    model.eval()
    plain = copy.deepcopy(model)
    with torch.no_grad():
        expected = plain(x)
        with Recorder(model, include=include, record_no_grad=True) as rec:
            got = model(x)
            rec.step()
    assert_same(expected, got)
    assert set(rec.to_frame().metric) == set(FORWARD) | set(WEIGHT)  # step 0: a weight step


class TupleLayer(nn.Module):
    """Owns a matrix weight; returns (int argmax, float output, {"scale": float})."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 5) / 3)

    def forward(self, x):
        h = x @ self.weight.T
        return h.argmax(dim=1), h, {"scale": h.abs().mean()}


class IntOnlyLayer(nn.Module):
    """Owns a matrix weight; returns only an integer tensor."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6))

    def forward(self, x):
        return (x @ self.weight.T).argmax(dim=1)


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.split = TupleLayer()
        self.head = nn.Linear(6, 2)
        self.index = IntOnlyLayer()

    def forward(self, x):
        idx, h, extra = self.split(x)
        out = self.head(torch.tanh(h))
        return (out, [idx, self.index(h.detach())], {"scale": extra["scale"], "h": h})


def test_tuple_list_dict_outputs():
    """A layer returning (int, float, dict) and a model returning (tensor, [int, int],
    dict): bitwise equal; ``split`` records its first *floating* tensor (test-hook norm);
    a layer returning only an int tensor records weight metrics and no forward row."""
    model = TupleNet()
    x = torch.randn(4, 5)
    frame, _, never, log = check_model(model, x, sum_loss, weight_every=1)
    assert set(frame.layer) == {"split", "head", "index"} and never == set()
    split = frame[frame.layer == "split"]
    assert set(split.metric) == set(FORWARD) | {"grad_norm"} | set(WEIGHT)
    with torch.no_grad():
        h = x @ model.split.weight.T
    value = dict(zip(split.metric, split.value, strict=True))
    assert value["output_norm"] == pytest.approx(ref_norm(h), rel=1e-6)
    assert value["output_norm"] == pytest.approx(log.records[("split", 0)][1], rel=1e-6)
    assert set(frame[frame.layer == "index"].metric) == set(WEIGHT)


# --------------------------------------------------------------------------- 3. divergence


class Chain(nn.Module):
    """Four Linear+Tanh blocks; ``blocks.2.0`` is also used twice via ``shared``."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(5, 5), nn.Tanh()) for _ in range(4))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _injected_run(layer: str, k: int, steps: int = 6, call: int = 0, **rec_kwargs):
    """Train a Chain for ``steps`` steps; at step ``k`` a hook registered before the
    Recorder multiplies the output of call ``call`` of ``layer`` by NaN."""
    model = Chain()
    state = {"step": -1, "call": 0}

    def inject(module, args, output):
        hit = state["step"] == k and state["call"] == call
        state["call"] += 1
        return output * math.nan if hit else None

    model.get_submodule(layer).register_forward_hook(inject)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, **rec_kwargs) as rec:
        for step in range(steps):
            state["step"], state["call"] = step, 0
            model(torch.randn(3, 5)).pow(2).mean().backward()
            rec.step()
            opt.step()
            opt.zero_grad()
    return rec.to_frame()


@pytest.mark.parametrize(("layer", "k"), [("blocks.0.0", 2), ("blocks.2.0", 0), ("blocks.3.0", 4)])
def test_nan_injection_located_by_forward_metrics(layer, k):
    """A NaN injected into one layer's output at step k: divergence_onset on the Recorder's
    frame, restricted to the forward metrics, returns (k, that layer, call 0); every row
    before step k is finite (reference: the injection schedule)."""
    frame = _injected_run(layer, k, weight_every=1)
    onset = divergence_onset(frame, metric=list(FORWARD))
    assert (onset.step, onset.layer, onset.call_idx) == (k, layer, 0)
    assert onset.reason == "non-finite"
    assert np.isfinite(frame[frame.step < k].value).all()


def test_nan_injection_in_second_call_of_shared_layer():
    """A layer called twice per step, NaN injected into call 1 only: the onset names that
    layer and call_idx 1; call 0 of the same step is finite."""
    block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    model = nn.Sequential(block, block, nn.Linear(4, 2))
    state = {"n": 0}

    def inject(module, args, output):
        state["n"] += 1
        return output * math.nan if state["n"] == 4 else None  # step 1, call 1

    block[0].register_forward_hook(inject)
    with Recorder(model) as rec:
        for _ in range(3):
            model(torch.randn(2, 4)).sum().backward()
            rec.step()
    frame = rec.to_frame()
    onset = divergence_onset(frame, metric="output_norm")
    assert (onset.step, onset.layer, onset.call_idx) == (1, "0.0", 1)
    call0 = frame[(frame.step == 1) & (frame.layer == "0.0") & (frame.call_idx == 0)]
    assert np.isfinite(call0[call0.metric.isin(FORWARD)].value).all()


def test_nan_in_input_batch_located_at_first_layer():
    """A NaN in the data at step k (no layer at fault): onset (k, blocks.0.0) over all
    metrics; gain is NaN there; rows of earlier steps finite."""
    model = Chain()
    k = 2
    with Recorder(model) as rec:
        for step in range(4):
            x = torch.randn(3, 5)
            if step == k:
                x[1, 2] = math.nan
            model(x).pow(2).mean().backward()
            rec.step()
    onset = divergence_onset(rec.to_frame())
    assert (onset.step, onset.layer) == (k, "blocks.0.0")


def test_nan_injection_located_by_default_onset():
    """Issue 8: 'a NaN injected at a given step into one layer is reported with that step
    and layer' with divergence_onset's defaults (all metrics). Reference: the injection
    (blocks.2.0 at step 3); the NaN grad_norm of earlier layers in that step must not win."""
    frame = _injected_run("blocks.2.0", 3, weight_every=1)
    onset = divergence_onset(frame)
    assert (onset.step, onset.layer) == (3, "blocks.2.0")


def test_nan_weight_at_non_recorded_step_reported_at_next_recorded_step():
    """every=2, weight_every=2: a weight set to NaN (and kept NaN) at step 3, a step that
    is not recorded, shows up at step 4 in that layer; steps 0 and 2 are finite."""
    model = Chain()
    with Recorder(model, every=2, weight_every=2) as rec:
        for step in range(6):
            if step == 3:
                with torch.no_grad():
                    model.blocks[1][0].weight[0, 0] = math.nan
            model(torch.randn(3, 5)).pow(2).mean().backward()
            rec.step()
            model.zero_grad()
    frame = rec.to_frame()
    assert sorted(set(frame.step)) == [0, 2, 4]
    onset = divergence_onset(frame, metric=list(FORWARD) + ["weight_norm"])
    assert (onset.step, onset.layer) == (4, "blocks.1.0")
    assert np.isfinite(frame[frame.step < 4].value).all()


# --------------------------------------------------------------------------- 4. bad input


def test_model_without_selectable_layers_warns_and_records_nothing(tmp_path):
    """Only activations and 1-D weights (LayerNorm, BatchNorm1d): a UserWarning naming the
    model, bitwise equal forward, an empty frame with the six columns, an empty file saved;
    divergence_onset on it raises ValueError (empty table)."""
    model = nn.Sequential(nn.LayerNorm(4), nn.ReLU(), nn.BatchNorm1d(4), nn.Tanh())
    x = torch.randn(3, 4)
    twin = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="Sequential"):
        rec = Recorder(model)
    with rec:
        assert_same(twin(x), model(x))
        rec.step()
    frame = rec.to_frame()
    assert list(frame.columns) == ["step", "layer", "layer_idx", "call_idx", "metric", "value"]
    assert len(frame) == 0
    back = pd.read_parquet(rec.save(tmp_path / "empty.parquet"))
    assert len(back) == 0 and list(back.columns) == list(frame.columns)
    with pytest.raises(ValueError, match="empty"):
        divergence_onset(frame)
    assert_no_hooks(model)


@pytest.mark.parametrize(
    "kwargs", [{"exclude": "*"}, {"exclude": ["0", "2"]}, {"include": []}], ids=str
)
def test_selection_emptied_warns(kwargs):
    """exclude of everything (glob or list) and an empty include list: the 'selected no
    layer' UserWarning, no hook attached, no row."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="selected no layer"):
        rec = Recorder(model, **kwargs)
    assert_no_hooks(model)
    with rec:
        model(torch.randn(2, 4)).sum().backward()
        rec.step()
    assert len(rec.to_frame()) == 0


def test_include_error_lists_names():
    """Include errors name the pattern and list recordable layers only: a glob matching an
    activation (not recordable), one bad glob among good ones, and a model with > 40
    candidates (first 40 listed, then the total). No hook is left on the model."""
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(45)], nn.ReLU())
    with pytest.raises(ValueError) as info:
        Recorder(model, include="45")  # the ReLU
    message = str(info.value)
    assert "'45'" in message and "0, 1, 2" in message and "(45 in all)" in message
    assert ", 39" in message and ", 40," not in message
    with pytest.raises(ValueError, match="'nope'"):
        Recorder(model, include=["0", "nope", "1"])
    assert_no_hooks(model)


@pytest.mark.parametrize(
    "metrics",
    [5, 3.5, [["gain"]], [1, "gain"], [1, "bogus"], [None], b"gain", ["Output_Norm"]],
    ids=repr,
)
def test_metrics_of_wrong_type_give_a_clear_error(metrics):
    """metrics that are not strings / iterables of metric names: TypeError or ValueError
    whose message says 'metric' (the argument at fault); no hook attached."""
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises((TypeError, ValueError), match="metric"):
        Recorder(model, metrics=metrics)
    assert_no_hooks(model)


@pytest.mark.parametrize("arg", ["every", "weight_every", "flush_every"])
@pytest.mark.parametrize("value", [2.0, "2", None, True, 1.5, [2], torch.tensor(2)], ids=repr)
def test_schedule_arguments_of_wrong_type(arg, value):
    """every / weight_every / flush_every not a Python int (float, str, None, bool, list,
    tensor): TypeError or ValueError naming the argument; no hook attached."""
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises((TypeError, ValueError), match=arg):
        Recorder(model, **{arg: value})
    assert_no_hooks(model)


@pytest.mark.parametrize("arg", ["every", "weight_every", "flush_every"])
def test_schedule_arguments_accept_numpy_integers(arg):
    """np.int64(2) is a positive integer (e.g. from np.arange in a sweep): accepted and
    equivalent to 2. Reference: the schedule of a plain int 2 (rows of 4 steps)."""
    frames = []
    for value in (2, np.int64(2)):
        model = nn.Sequential(nn.Linear(4, 4))
        with Recorder(model, **{arg: value}) as rec:
            for _ in range(4):
                model(torch.randn(2, 4)).sum().backward()
                rec.step()
        frames.append(rec.to_frame().drop(columns="value"))
    pd.testing.assert_frame_equal(frames[0], frames[1])


@pytest.mark.parametrize("selector", [3, 2.5, [3], b"0", ["0", None]], ids=repr)
@pytest.mark.parametrize("which", ["include", "exclude"])
def test_selector_of_wrong_type(which, selector):
    """include / exclude neither glob string(s) nor a callable: TypeError naming
    include/exclude; no hook attached."""
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="include/exclude"):
        Recorder(model, **{which: selector})
    assert_no_hooks(model)


def test_zero_norm_weight_rows_are_left_out_of_coherence():
    """A Linear with a zero row, a Conv2d with a zero output channel and a grouped Conv2d
    with a zero channel: coherence and coherence_mean over the pairs of nonzero rows
    (double-loop reference over the dense rows), zero_rows 1, the weight norm equal to the
    numpy reference, forward/grad rows finite, no warning, outputs bitwise equal."""
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 4, 1, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    )
    with torch.no_grad():
        model[0].weight[1].zero_()
        model[2].weight[3].zero_()
        model[4].weight[2].zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame, *_ = check_model(model, torch.randn(2, 4, 3, 3), sum_loss, weight_every=1)
    dense_grouped = torch.zeros(4, 4, 1, 1, dtype=torch.float64)
    for c in range(4):
        g = c // 2
        dense_grouped[c, 2 * g : 2 * g + 2] = model[2].weight[c].detach().double()
    references = {"0": model[0].weight, "2": dense_grouped, "4": model[4].weight}
    for name, weight in references.items():
        rows = weight.detach().double().reshape(weight.shape[0], -1)
        nonzero = rows[rows.abs().sum(dim=1) > 0]
        cosines = [
            abs(float(nonzero[i] @ nonzero[j])) / (ref_norm(nonzero[i]) * ref_norm(nonzero[j]))
            for i in range(len(nonzero))
            for j in range(len(nonzero))
            if i != j
        ]
        got = frame[frame.layer == name].set_index("metric").value
        assert got["coherence"] == pytest.approx(max(cosines), rel=1e-5), name
        assert got["coherence_mean"] == pytest.approx(np.mean(cosines), rel=1e-5), name
        assert got["zero_rows"] == 1.0
        assert got["weight_norm"] == pytest.approx(ref_norm(model.get_submodule(name).weight))
        assert np.isfinite(got[list(FORWARD) + ["grad_norm"]]).all()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_zero_width_layers_do_not_crash_the_model():
    """Layers with an empty weight, ``Linear(4, 0)`` (no rows: weight (0, 4)) and
    ``Linear(0, 2)`` (rows of length 0), run fine without the Recorder; with it (weight
    metrics due) the model must still run, with bitwise-equal outputs and gradients.
    Reference values: weight_norm 0; coherence 0 for rows of length 0 (two zero rows, left
    out: no pair remains) and for no rows at all (no pair of rows, like one row). (Once,
    metrics.weight_rows' ``reshape(0, -1)`` raised inside the forward hook.)"""
    model = nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 2))
    twin = copy.deepcopy(model)
    x = torch.randn(3, 4)
    expected = twin(x)
    expected.pow(2).sum().backward()
    with Recorder(model, weight_every=1) as rec:
        out = model(x)
        out.pow(2).sum().backward()
        rec.step()
    assert torch.equal(out, expected)
    assert_same_grads(grads_of(model), grads_of(twin))
    frame = rec.to_frame()
    for name in ("0", "1"):
        rows = frame[frame.layer == name].set_index("metric").value
        assert rows["weight_norm"] == 0.0
    no_rows = frame[frame.layer == "0"].set_index("metric").value
    assert no_rows["coherence"] == 0.0 and "zero_rows" not in no_rows
    empty_rows = frame[frame.layer == "1"].set_index("metric").value
    assert empty_rows["coherence"] == 0.0 and empty_rows["zero_rows"] == 2.0


@pytest.mark.parametrize("case", ["embedding", "vit"])
def test_zero_weight_row_is_not_divergence(case):
    """Healthy models with a zero weight row at initialisation, selected by default:
    nn.Embedding(padding_idx=0) (the padding row) and torchvision's VisionTransformer (its
    classifier head is zero-initialised). Their zero rows are left out of coherence at every
    weight step; a healthy two-step run must not report a divergence onset (reference:
    every norm finite and small)."""
    if case == "embedding":
        model = nn.Sequential(nn.Embedding(10, 4, padding_idx=0), nn.Linear(4, 2))
        x = torch.tensor([[1, 2, 0]])
    else:
        vt = pytest.importorskip("torchvision.models.vision_transformer")
        model = vt.VisionTransformer(
            image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16
        )
        x = torch.randn(2, 3, 32, 32)
    with Recorder(model, weight_every=1) as rec:
        for _ in range(2):
            model(x).sum().backward()
            rec.step()
            model.zero_grad()
    frame = rec.to_frame()
    norms = frame[frame.metric.isin(NORMS)].value
    assert np.isfinite(norms).all() and (norms < 100).all()
    assert divergence_onset(frame) is None


# --------------------------------------------------------------------------- 5. save


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_save_to_existing_path_leaves_it_untouched(tmp_path, suffix):
    """save() onto an existing file (any content): FileExistsError, the bytes and mtime
    unchanged, no temporary file left in the folder; same for a directory at that path."""
    model = nn.Linear(3, 2)
    with Recorder(model) as rec:
        model(torch.randn(2, 3)).sum().backward()
        rec.step()
    path = tmp_path / f"records{suffix}"
    path.write_bytes(b"not a table")
    before = path.stat().st_mtime_ns
    with pytest.raises(FileExistsError):
        rec.save(path)
    with pytest.raises(FileExistsError):
        rec.save(str(path))
    assert path.read_bytes() == b"not a table" and path.stat().st_mtime_ns == before
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    with pytest.raises(FileExistsError):
        rec.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, folder.name])


def test_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A save that fails while writing (the writer raises ENOSPC after a partial write) or
    when replacing (overwrite=True onto a directory): the error propagates, the existing
    target is untouched, and no ``.records.*.tmp-*`` file is left behind."""
    model = nn.Linear(3, 2)
    with Recorder(model) as rec:
        model(torch.randn(2, 3)).sum().backward()
        rec.step()
    path = tmp_path / "records.parquet"
    path.write_bytes(b"old")

    def failing_writer(self, target, **kwargs):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing_writer)
    with pytest.raises(OSError, match="No space"):
        rec.save(path, overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    folder = tmp_path / "dir.parquet"
    folder.mkdir()
    with pytest.raises(OSError):
        rec.save(folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.parquet", "records.parquet"]


# --------------------------------------------------------------------------- 6. faults


class Fragile(nn.Module):
    """a -> (raises between the layers when ``fail``) -> b; ``b`` raises itself when
    ``fail_inside``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.fail = False
        self.error = KeyError("boom")

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if self.fail:
            raise self.error
        return self.b(h)


def test_exception_in_forward_inside_with_block():
    """A forward that raises inside ``with Recorder``: the very same exception object
    propagates (traceback through Fragile.forward), every hook is removed on exit, the
    model is released (a new Recorder attaches), and the rows of the layer that ran before
    the error are readable (forward + weight metrics of ``a`` at step 0)."""
    model = Fragile()
    model.fail = True
    with pytest.raises(KeyError) as info:
        with Recorder(model, weight_every=1) as rec:
            model(torch.randn(2, 3))
    assert info.value is model.error
    assert any(entry.name == "forward" for entry in info.traceback)
    assert_no_hooks(model)
    frame = rec.to_frame()
    assert set(frame.layer) == {"a"}
    assert set(frame.metric) == set(FORWARD) | set(WEIGHT)
    model.fail = False
    with Recorder(model) as again:
        model(torch.randn(2, 3)).sum().backward()
        again.step()
    assert set(again.to_frame().layer) == {"a", "b"}


def test_recorder_usable_after_caught_forward_errors():
    """Errors caught by the training loop (between layers, and inside a selected layer's
    own forward): the recorder keeps recording. Reference: after the failing step is
    skipped with rec.step(), the next step has exactly the rows of a clean step (2 layers x
    4 metrics), with call_idx 0; a layer that raised itself was never counted."""
    model = Fragile()
    x = torch.randn(2, 3)
    rec = Recorder(model, weight_every=1000)
    model(x).sum().backward()
    rec.step()  # step 0: clean
    model.fail = True
    with pytest.raises(KeyError):
        model(x)
    rec.step()  # step 1: the failed step is skipped
    model.fail = False

    def broken(inp):
        raise ValueError("inside b")

    model.b.forward = broken
    with pytest.raises(ValueError, match="inside b"):
        model(x)
    del model.b.forward
    rec.step()  # step 2: b raised before producing an output
    model(x).sum().backward()
    rec.step()  # step 3: clean again
    rec.close()
    frame = rec.to_frame()
    assert_no_hooks(model)
    assert len(frame[frame.step == 0]) == 2 * 4 + 2 * 3
    assert set(frame[frame.step == 1].layer) == {"a"}
    assert set(frame[frame.step == 2].layer) == {"a"}
    step3 = frame[frame.step == 3]
    assert len(step3) == 2 * 4 and set(step3.call_idx) == {0}


class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise FloatingPointError("backward failed")


def test_exception_in_backward_propagates():
    """An autograd Function raising in backward between two recorded layers: the same
    error type and message propagate; the grad_norm of the later layer (its hook ran
    first) is kept, the earlier layer has none; the next step records normally."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    x = torch.randn(2, 3)
    with Recorder(model) as rec:
        out = model[1](FailingBackward.apply(model[0](x)))
        with pytest.raises(FloatingPointError, match="backward failed"):
            out.sum().backward()
        rec.step()
        model(x).sum().backward()
        rec.step()
    frame = rec.to_frame()
    grads = frame[frame.metric == "grad_norm"]
    assert set(zip(grads.step, grads.layer, strict=True)) == {(0, "1"), (1, "0"), (1, "1")}


# --------------------------------------------------------------------------- 7. unusual calls


def test_input_passed_by_keyword_still_gives_gain():
    """``layer(input=x)`` (and MultiheadAttention(query=..., key=..., value=...)) are the
    same calls as the positional ones: the same rows, including gain. Reference: the row
    set of the positional call. (Plain forward hooks see only positional args, so gain
    is silently missing, breaking rows = calls x metrics.)"""
    layer = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    metrics = {}
    for mode in ("positional", "keyword"):
        with Recorder(layer) as rec:
            out = layer(x) if mode == "positional" else layer(input=x)
            out.sum().backward()
            rec.step()
        metrics[mode] = sorted(rec.to_frame().metric)
    assert metrics["keyword"] == metrics["positional"]


def test_deepcopy_of_attached_model_is_not_recorded():
    """A deep copy made while the Recorder is attached (an EMA model; torch.optim.swa_utils.
    AveragedModel deep-copies too) must neither feed the original recorder nor keep it
    alive. Reference: rows of the original model alone (one call per layer, 2 x 7 rows),
    no row added by the copy's forwards after close(), and a weakref to the recorder dies
    on ``del`` while the copy lives (DESIGN: the model holds no reference afterwards)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 4)
    rec = Recorder(model)
    ema = copy.deepcopy(model)
    model(x).sum().backward()
    ema(x)
    rec.step()
    frame = rec.to_frame()
    assert set(frame.call_idx) == {0}, "the copy's forward was recorded as call_idx 1"
    assert len(frame) == 2 * 7
    rec.close()
    ema(x)
    assert len(rec.to_frame()) == len(frame), "a closed recorder gained rows"
    alive = weakref.ref(rec)
    del rec
    gc.collect()
    assert alive() is None, "the copy's hooks keep the recorder alive"


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_records_one_call(reentrant):
    """A layer inside torch.utils.checkpoint is run again during backward (recomputation),
    not called again by the model: one call per step, with the grad_norm of call 0 equal
    to torch.autograd.grad of the loss w.r.t. its output (no-checkpoint reference). Before the fix,
    the recomputation is recorded as call_idx 1 (and, reentrant, grad_norm moves to it)."""
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    model = nn.ModuleDict({"a": a, "b": b})
    x = torch.randn(2, 3, requires_grad=True)
    h = a(x)
    (grad,) = torch.autograd.grad(b(torch.tanh(h)).pow(2).sum(), [h])
    with Recorder(model, weight_every=1000) as rec:
        inner = checkpoint.checkpoint(lambda t: torch.tanh(a(t)), x, use_reentrant=reentrant)
        b(inner).pow(2).sum().backward()
        rec.step()
    frame = rec.to_frame()
    rows = frame[frame.layer == "a"]
    assert set(rows.call_idx) == {0}
    value = rows.set_index("metric").value
    assert value["grad_norm"] == pytest.approx(ref_norm(grad), rel=1e-6)


class ViewOutput(nn.Module):
    """fc1 on a 3-D input (its output is a view of a 2-D matmul result), then an in-place
    op on that output, then fc2."""

    def __init__(self, op: str):
        super().__init__()
        self.fc1 = nn.Linear(5, 5)
        self.fc2 = nn.Linear(5, 2)
        self.op = op

    def forward(self, x):
        h = self.fc1(x)
        if self.op == "relu_":
            torch.relu_(h)
        elif self.op == "add_":
            h += 1.0
        else:
            h.mul_(2.0)
        return self.fc2(h)


@pytest.mark.parametrize("op", ["relu_", "add_", "mul_"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5)], ids=["3d", "4d"])
def test_inplace_op_on_view_output_keeps_grad_norm(op, shape):
    """Linear on a >= 3-D input returns a view; an in-place op on it (ReLU(inplace), +=,
    mul_) must not lose its grad_norm. Reference: torch.autograd.grad of the same loss
    w.r.t. fc1's output in an out-of-place twin. (Once the tensor hook sat on the view's
    old grad_fn, which the in-place rebase drops: grad_norm is silently missing (the
    property test finds this with Linear + ReLU(inplace) on its 4-D inputs).)"""
    model = ViewOutput(op)
    x = torch.randn(shape)
    h = model.fc1(x)
    after = {"relu_": torch.relu, "add_": lambda t: t + 1.0, "mul_": lambda t: t * 2.0}[op]
    (grad,) = torch.autograd.grad(model.fc2(after(h)).pow(2).mean(), [h])
    with Recorder(model) as rec:
        model(x).pow(2).mean().backward()
        rec.step()
    frame = rec.to_frame()
    rows = frame[(frame.layer == "fc1") & (frame.metric == "grad_norm")]
    assert len(rows) == 1, "grad_norm of fc1 missing"
    assert rows.value.iloc[0] == pytest.approx(ref_norm(grad), rel=1e-5)


class AliasView(nn.Module):
    """Produces a view, updates it in place through another alias, returns the view."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        out = self.lin(x).view(-1)
        out[:].add_(1)  # in place through another alias of the returned view
        return out


ALIAS_SCRIPT = f"""
import torch
from torch import nn
from stability import Recorder

{textwrap.dedent(inspect.getsource(AliasView))}
model = AliasView()
with Recorder(model, include=lambda name, m: name == "(model)") as rec:
    model(torch.randn(1, 2)).sum().backward()
    rec.step()
assert set(rec.to_frame().metric) >= {{"output_norm", "grad_norm"}}
print("finished")
"""


def test_view_updated_through_alias_does_not_crash():
    """A module returning a view that it updated in place through another alias runs fine
    on its own (reference: in-process forward + backward); recording it must not crash the
    interpreter and must give its output and grad rows. (Once ``out.register_hook`` in the
    Recorder's forward hook hits torch 2.14's stale-view-history bug (pytorch/pytorch#196459)
    and the process dies with SIGSEGV; reading ``out.grad_fn`` before registering avoids it.
    The recorded run is a subprocess so that a crash fails this test instead of pytest.)"""
    AliasView()(torch.randn(1, 2)).sum().backward()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, "-c", ALIAS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=os.getcwd(),
    )
    assert done.returncode == 0 and "finished" in done.stdout, (done.returncode, done.stderr)
