"""Reference tests for :class:`stability.Recorder`.

References used throughout: layer outputs captured independently (running the layers by
hand, or a test-owned forward hook that clones outputs), float64 numpy norms, gradients
from ``torch.autograd.grad`` with respect to those outputs, an explicit double loop for row
coherence, a recorder-free copy of the model (bitwise comparisons with ``torch.equal``) and
row counts derived from the schedule by hand.
"""

from __future__ import annotations

import copy
import gc
import math
import tracemalloc
import warnings
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from records_support import (
    COLUMNS,
    FORWARD,
    WEIGHT,
    InplaceNet,
    Named,
    SharedNet,
    assert_frame_matches,
    assert_no_hooks,
    lookup,
    mlp,
    one_step,
    ref_norm,
    ref_weight_metrics,
)
from torch import nn

from stability import Recorder

# --------------------------------------------------------------------------- models


class ConvNet(nn.Module):
    """conv -> tanh -> conv(stride 2) -> tanh -> flatten -> fc, for 6x6 inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2)
        self.fc = nn.Linear(20, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


class Reordered(nn.Module):
    """Registration order last, middle, first; execution order first, middle, last."""

    def __init__(self):
        super().__init__()
        self.last = nn.Linear(4, 2)
        self.middle = nn.Linear(5, 4)
        self.first = nn.Linear(3, 5)

    def forward(self, x):
        return self.last(torch.tanh(self.middle(torch.tanh(self.first(x)))))


class DictBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 6)

    def forward(self, x):
        h = self.lin(x)
        return {"h": h, "aux": h.detach().abs().mean()}


class DictNet(nn.Module):
    """A block returning a dict, and a model returning a dict."""

    def __init__(self):
        super().__init__()
        self.body = DictBlock()
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.body(x)["h"]
        return {"logits": self.head(torch.relu(h)), "features": h}


class InfLinear(nn.Module):
    """A Linear layer that multiplies its output by inf while ``blow_up`` is set."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n) / math.sqrt(n))
        self.blow_up = False

    def forward(self, x):
        y = x @ self.weight.T
        return y * math.inf if self.blow_up else y


class InfNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.l0 = nn.Linear(4, 6)
        self.mid = InfLinear(6)
        self.l2 = nn.Linear(6, 2)

    def forward(self, x):
        return self.l2(torch.tanh(self.mid(torch.tanh(self.l0(x)))))


# --------------------------------------------------------------------------- 2. values


def test_values_match_layers_run_by_hand():
    """Every row of one step vs numpy norms of outputs from running the layers by hand,
    grad_norm from torch.autograd.grad(loss, layer_output), weights from the double loop."""
    model = ConvNet().double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 2])

    h1 = model.conv1(x)
    a1 = torch.tanh(h1)
    h2 = model.conv2(a1)
    a2 = torch.tanh(h2).flatten(1)
    h3 = model.fc(a2)
    g1, g2, g3 = torch.autograd.grad(F.cross_entropy(h3, y), [h1, h2, h3])

    with Recorder(model, weight_every=1) as rec:
        one_step(model, x, rec, loss_fn=lambda out: F.cross_entropy(out, y))
    frame = rec.to_frame()

    expected = {}
    for name, inp, out, grad in (("conv1", x, h1, g1), ("conv2", a1, h2, g2), ("fc", a2, h3, g3)):
        norm = ref_norm(out)
        expected[(0, name, 0, "output_norm")] = norm
        expected[(0, name, 0, "output_rms")] = norm / math.sqrt(out.numel())
        expected[(0, name, 0, "gain")] = norm / ref_norm(inp)
        expected[(0, name, 0, "grad_norm")] = ref_norm(grad)
        weights = ref_weight_metrics(getattr(model, name).weight)
        for metric, value in weights.items():
            expected[(0, name, 0, metric)] = value
    assert_frame_matches(frame, expected, rel=1e-10)
    assert list(frame.columns) == COLUMNS
    depth = frame.groupby("layer").layer_idx.first().to_dict()
    assert depth == {"conv1": 0, "conv2": 1, "fc": 2}


def test_no_grad_records_forward_metrics_only():
    """Under torch.no_grad() with record_no_grad=True: forward + weight rows equal to a
    hand-run reference, no grad_norm."""
    model = ConvNet().double()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        h1 = model.conv1(x)
        h2 = model.conv2(torch.tanh(h1))
        h3 = model.fc(torch.tanh(h2).flatten(1))
    with Recorder(model, weight_every=1, record_no_grad=True) as rec, torch.no_grad():
        model(x)
        rec.step()
    frame = rec.to_frame()
    assert "grad_norm" not in set(frame.metric)
    assert set(frame.metric) == set(FORWARD + WEIGHT)
    assert len(frame) == 3 * 6
    for name, out in (("conv1", h1), ("conv2", h2), ("fc", h3)):
        assert lookup(frame, name, "output_norm") == pytest.approx(ref_norm(out), rel=1e-12)


def test_inference_mode_records_forward_metrics():
    """torch.inference_mode() with record_no_grad=True: same forward rows as a hand-run
    reference, no grad_norm."""
    model = mlp()
    x = torch.randn(4, 8)
    with torch.no_grad():
        h0 = model[0](x)
    with Recorder(model, record_no_grad=True) as rec, torch.inference_mode():
        model(x)
        rec.step()
    frame = rec.to_frame()
    assert "grad_norm" not in set(frame.metric)
    assert lookup(frame, "0", "output_norm") == pytest.approx(ref_norm(h0), rel=1e-6)


# --------------------------------------------------------------------------- 3. bitwise


def _run(model, x, loss_fn, rec_kwargs):
    rec = Recorder(model, **rec_kwargs) if rec_kwargs is not None else None
    torch.manual_seed(1234)
    out = model(x)
    loss_fn(out).backward()
    frame = None
    if rec is not None:
        rec.step()
        rec.close()
        frame = rec.to_frame()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return out, grads, frame


def assert_bitwise_identical(model, x, loss_fn, **rec_kwargs) -> pd.DataFrame:
    """Run a deep copy without and one with the Recorder; outputs, parameter gradients and
    buffers must be torch.equal. Returns the recorded frame."""
    plain, recorded = copy.deepcopy(model), copy.deepcopy(model)
    out_a, grads_a, _ = _run(plain, x, loss_fn, None)
    out_b, grads_b, frame = _run(recorded, x, loss_fn, rec_kwargs)
    if isinstance(out_a, dict):
        assert out_a.keys() == out_b.keys()
        for key in out_a:
            assert torch.equal(out_a[key], out_b[key]), key
    else:
        assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        a, b = grads_a[name], grads_b[name]
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), name
    for (name, a), (_, b) in zip(plain.named_buffers(), recorded.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    assert_no_hooks(recorded)
    return frame


def test_bitwise_resnet18():
    """torchvision resnet18 (in-place ReLU, ``+=``), train mode: bitwise equal to no Recorder."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    frame = assert_bitwise_identical(model, x, lambda out: F.cross_entropy(out, y), weight_every=1)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(convs) == 21
    assert set(frame.layer) == set(convs)
    grad = frame[frame.metric == "grad_norm"]
    assert set(grad.layer) == set(convs)
    assert np.isfinite(frame.value).all() and (frame.value >= 0).all()
    assert len(frame) == 21 * 7


def test_bitwise_shared_module():
    """A module called twice: bitwise equal, rows for call_idx 0 and 1 incl. grad_norm."""
    frame = assert_bitwise_identical(SharedNet(), torch.randn(3, 4), lambda o: o.pow(2).sum())
    shared = frame[frame.layer == "shared"]
    assert sorted(set(shared.call_idx)) == [0, 1]
    for call in (0, 1):
        metrics = set(shared[shared.call_idx == call].metric)
        assert set(FORWARD) | {"grad_norm"} <= metrics


def test_bitwise_inplace_ops():
    """ReLU(inplace) and ``+=`` on a recorded output: bitwise equal to no Recorder."""
    frame = assert_bitwise_identical(
        InplaceNet(inplace=True), torch.randn(4, 5), lambda o: o.pow(2).sum()
    )
    assert set(frame[frame.metric == "grad_norm"].layer) == {"fc1", "fc2"}


def test_bitwise_input_without_requires_grad_and_frozen_first_layer():
    """First layer fed a tensor without requires_grad (also with frozen weights): bitwise
    equal; grad_norm exists exactly for the outputs that require grad."""
    model = mlp()
    x = torch.randn(3, 8)
    assert not x.requires_grad
    frame = assert_bitwise_identical(model, x, lambda o: o.pow(2).sum())
    assert set(frame[frame.metric == "grad_norm"].layer) == {"0", "2", "4"}

    for p in model[0].parameters():
        p.requires_grad_(False)
    frame = assert_bitwise_identical(model, x, lambda o: o.pow(2).sum())
    assert set(frame[frame.metric == "grad_norm"].layer) == {"2", "4"}
    assert set(frame[frame.metric == "output_norm"].layer) == {"0", "2", "4"}


def test_bitwise_dict_outputs():
    """A model returning a dict (and a selected block returning a dict): bitwise equal, and
    the block's output_norm equals the norm of its dict's first tensor."""
    model = DictNet()
    x = torch.randn(4, 5)
    with torch.no_grad():
        h = model.body.lin(x)
    frame = assert_bitwise_identical(
        model,
        x,
        lambda out: out["logits"].pow(2).sum() + out["features"].sum(),
        include=lambda name, m: name in ("body", "body.lin", "head"),
    )
    assert set(frame.layer) == {"body", "body.lin", "head"}
    assert lookup(frame, "body", "output_norm") == pytest.approx(ref_norm(h), rel=1e-6)
    assert lookup(frame, "body", "grad_norm") == pytest.approx(
        lookup(frame, "body.lin", "grad_norm"), rel=1e-6
    )


# --------------------------------------------------------------------------- 4. lifecycle


def test_hooks_removed_and_recorder_collectable():
    """After the with block: no hook dict of any module is non-empty, no global module hook
    was added, and a weakref to the recorder dies after del + gc.collect()."""
    from torch.nn.modules import module as module_mod

    globals_before = {
        name: len(getattr(module_mod, name))
        for name in dir(module_mod)
        if name.startswith("_global_") and isinstance(getattr(module_mod, name), dict)
    }
    model = SharedNet()
    x = torch.randn(2, 4)
    with Recorder(model, weight_every=1) as rec:
        one_step(model, x, rec)
        assert any(module._forward_hooks for module in model.modules())
    assert_no_hooks(model)
    for name, count in globals_before.items():
        assert len(getattr(module_mod, name)) == count, name
    frame = rec.to_frame()
    assert len(frame) > 0
    ref = weakref.ref(rec)
    del rec
    gc.collect()
    assert ref() is None

    rec = Recorder(model)
    one_step(model, x, rec)
    rec.close()
    rec.close()  # idempotent
    assert_no_hooks(model)
    ref = weakref.ref(rec)
    del rec
    gc.collect()
    assert ref() is None


def test_attaching_twice_records_once():
    """Re-entering ``with rec`` (already attached at construction) and nesting it: one forward
    hook per module and one set of rows (count from the schedule)."""
    model = mlp()
    x = torch.randn(2, 8)
    rec = Recorder(model, weight_every=1)
    with rec:
        with rec:
            for i in (0, 2, 4):
                assert len(model[i]._forward_hooks) == 1
            one_step(model, x, rec)
    assert_no_hooks(model)
    frame = rec.to_frame()
    assert len(frame) == 3 * 7
    assert not frame.duplicated(["step", "layer", "call_idx", "metric"]).any()
    assert set(frame.call_idx) == {0}


def test_nested_with_keeps_recording_until_outer_exit():
    """Re-entering ``with rec`` inside an active ``with rec``: leaving the inner block must not
    silently detach the outer one (reference: rows for a step taken between the two exits)."""
    model = mlp()
    x = torch.randn(2, 8)
    with Recorder(model, weight_every=1000) as rec:
        with rec:
            one_step(model, x, rec)  # step 0
        one_step(model, x, rec)  # step 1, still inside the outer block
        assert len(model[0]._forward_hooks) == 1
    assert_no_hooks(model)
    frame = rec.to_frame()
    assert sorted(set(frame.step)) == [0, 1]
    assert len(frame[frame.step == 1]) == 3 * 4


def test_second_recorder_on_active_model_raises():
    """A second Recorder while the first is attached: RuntimeError, and the model keeps one
    hook per layer; after closing the first, a new one attaches and records."""
    model = mlp()
    x = torch.randn(2, 8)
    first = Recorder(model)
    with pytest.raises(RuntimeError):
        Recorder(model)
    assert len(model[0]._forward_hooks) == 1
    first.close()
    assert_no_hooks(model)
    with Recorder(model) as second:
        one_step(model, x, second)
    assert len(second.to_frame()) == 3 * 7  # weight_every=100: step 0 has weight rows
    assert len(first.to_frame()) == 0


def test_recorder_selecting_nothing_warns_and_releases_model():
    """A selection with no layer (callable matching nothing): a UserWarning, usable as a
    context manager, records no row, and does not block a later Recorder on the model."""
    model = mlp()
    x = torch.randn(2, 8)
    with pytest.warns(UserWarning, match="selected no layer"):
        empty = Recorder(model, include=lambda name, module: False)
    with empty:
        one_step(model, x, empty)
    assert len(empty.to_frame()) == 0
    assert_no_hooks(model)
    with Recorder(model) as rec:
        one_step(model, x, rec)
    assert len(rec.to_frame()) == 3 * 7


def test_reopen_after_close_records_again():
    """``with rec`` after close re-attaches: rows from both blocks, none from in between."""
    model = mlp()
    x = torch.randn(2, 8)
    rec = Recorder(model, weight_every=1000)
    one_step(model, x, rec)  # step 0: forward + grad + weights
    rec.close()
    one_step(model, x, rec)  # step 1 of the recorder, not attached: nothing recorded
    with rec:
        one_step(model, x, rec)  # step 2
    frame = rec.to_frame()
    assert sorted(set(frame.step)) == [0, 2]
    assert len(frame[frame.step == 2]) == 3 * 4


# --------------------------------------------------------------------------- 5. wrappers


def test_ddp_wrapped_names(tmp_path):
    """DDP (gloo, world_size 1): layer names equal the bare model's named_modules names."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = SharedNet()
        ddp = DDP(model)
        with Recorder(ddp, weight_every=1) as rec:
            with pytest.raises(RuntimeError):
                Recorder(model)  # the same model, unwrapped
            one_step(ddp, torch.randn(3, 4), rec)
        frame = rec.to_frame()
    finally:
        dist.destroy_process_group()
    assert set(frame.layer) == {"inp", "shared", "head"}
    assert set(rec.layer_names) == {"inp", "shared", "head"}
    assert "grad_norm" in set(frame.metric)
    assert_no_hooks(ddp)


@pytest.mark.slow
def test_compiled_model_names_and_values():
    """torch.compile after attaching and a Recorder on a compiled model: no ``_orig_mod.``
    prefix; forward/grad values match an eager hand-run reference (rtol 1e-4)."""
    model = ConvNet()
    x = torch.randn(2, 3, 6, 6)
    h1 = model.conv1(x)
    h2 = model.conv2(torch.tanh(h1))
    h3 = model.fc(torch.tanh(h2).flatten(1))
    g1, g2, g3 = torch.autograd.grad(h3.pow(2).mean(), [h1, h2, h3])

    with Recorder(model, weight_every=1) as rec:
        compiled = torch.compile(model)
        one_step(compiled, x, rec)
    frame = rec.to_frame()
    assert set(frame.layer) == {"conv1", "conv2", "fc"}
    for name, out, grad in (("conv1", h1, g1), ("conv2", h2, g2), ("fc", h3, g3)):
        assert lookup(frame, name, "output_norm") == pytest.approx(ref_norm(out), rel=1e-4)
        assert lookup(frame, name, "grad_norm") == pytest.approx(ref_norm(grad), rel=1e-4)

    torch._dynamo.reset()
    compiled = torch.compile(ConvNet())
    with Recorder(compiled) as rec:
        assert rec.layer_names == ["conv1", "conv2", "fc"]
        one_step(compiled, x, rec)
    frame = rec.to_frame()
    assert set(frame.layer) == {"conv1", "conv2", "fc"}
    assert not any(name.startswith(("_orig_mod", "module")) for name in frame.layer)
    assert_no_hooks(compiled)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- 6. schedule


def test_row_counts_every_and_weight_every():
    """every=3, weight_every=5 over 11 steps: rows counted from first principles.

    SharedNet has 3 layers and 4 calls per forward (``shared`` twice). Forward/grad steps
    {0, 3, 6, 9}: 4 steps x 4 calls x (3 forward + 1 grad). Weight steps {0, 5, 10}:
    3 steps x 3 layers x 3 weight metrics, call 0 only.
    """
    model = SharedNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, every=3, weight_every=5) as rec:
        for _ in range(11):
            one_step(model, torch.randn(4, 4), rec)
            opt.step()
            opt.zero_grad()
    frame = rec.to_frame()
    fwd = frame[frame.metric.isin(FORWARD + ("grad_norm",))]
    wgt = frame[frame.metric.isin(WEIGHT)]
    assert len(fwd) == 4 * 4 * 4
    assert len(frame[frame.metric == "grad_norm"]) == 4 * 4
    assert len(wgt) == 3 * 3 * 3
    assert len(frame) == 64 + 27
    assert sorted(set(fwd.step)) == [0, 3, 6, 9]
    assert sorted(set(wgt.step)) == [0, 5, 10]
    assert set(wgt.call_idx) == {0}
    assert sorted(set(fwd[fwd.layer == "shared"].call_idx)) == [0, 1]
    assert not frame.duplicated(["step", "layer", "call_idx", "metric"]).any()
    assert np.isfinite(frame.value).all() and (frame.value >= 0).all()
    for column in ("step", "layer_idx", "call_idx"):
        assert frame[column].dtype == np.int64, column
    assert frame["value"].dtype == np.float64
    assert pd.api.types.is_string_dtype(frame["layer"])
    assert pd.api.types.is_string_dtype(frame["metric"])


def test_layer_idx_follows_forward_order():
    """layer_idx is execution order (first, middle, last), not registration order, and the
    frame is sorted by step then layer_idx."""
    model = Reordered()
    assert [n for n, _ in model.named_children()] == ["last", "middle", "first"]
    with Recorder(model) as rec:
        for _ in range(2):
            one_step(model, torch.randn(2, 3), rec)
    frame = rec.to_frame()
    assert frame.groupby("layer").layer_idx.unique().apply(list).to_dict() == {
        "first": [0],
        "middle": [1],
        "last": [2],
    }
    order = frame.drop_duplicates(["step", "layer"])[["step", "layer"]]
    assert list(order.itertuples(index=False, name=None)) == [
        (s, n) for s in (0, 1) for n in ("first", "middle", "last")
    ]


def test_selection_and_argument_errors():
    """include matching nothing -> ValueError naming the available layers; unknown metric,
    every=0 (and the other schedule arguments) -> ValueError."""
    model = Named()
    with pytest.raises(ValueError) as info:
        Recorder(model, include="nothing.*")
    for name in ("enc.0", "enc.2", "dec.0", "head"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="bogus"):
        Recorder(model, metrics=["output_norm", "bogus"])
    for arg in ("every", "weight_every", "flush_every"):
        with pytest.raises(ValueError, match=arg):
            Recorder(model, **{arg: 0})
    with pytest.raises(ValueError):
        Recorder(model, every=-1)
    assert_no_hooks(model)


def test_metric_subset():
    """metrics=["output_rms"] records exactly one row per layer-call per step (no weights)."""
    model = SharedNet()
    with Recorder(model, metrics=["output_rms"], weight_every=1) as rec:
        for _ in range(3):
            one_step(model, torch.randn(2, 4), rec)
    frame = rec.to_frame()
    assert set(frame.metric) == {"output_rms"}
    assert len(frame) == 3 * 4


def test_paused_records_nothing():
    """Forward/backward inside ``rec.paused()``: no rows and no call index consumed."""
    model = SharedNet()
    x = torch.randn(2, 4)
    with Recorder(model, weight_every=1) as rec:
        with rec.paused():
            one_step(model, x)
        assert len(rec.to_frame()) == 0
        with rec.paused():
            one_step(model, x)
        one_step(model, x, rec)
    frame = rec.to_frame()
    assert set(frame.step) == {0}
    assert sorted(set(frame[frame.layer == "shared"].call_idx)) == [0, 1]
    assert len(frame) == 4 * 4 + 3 * 3


def test_empty_batch_output_rms_is_nan():
    """A batch of size 0: output_rms = ||o|| / sqrt(numel) = 0/0 = NaN (the definition, and
    metrics.output_rms' documented value), output_norm 0, nothing raises."""
    model = mlp()
    with Recorder(model) as rec:
        one_step(model, torch.randn(0, 8), rec)
    frame = rec.to_frame()
    for name in ("0", "2", "4"):
        assert lookup(frame, name, "output_norm") == 0.0
        assert math.isnan(lookup(frame, name, "output_rms"))


# --------------------------------------------------------------------------- 7. divergence


def test_injected_inf_appears_at_its_step_and_layer():
    """An inf injected into ``mid`` at step k: its output_norm is non-finite at k, the layer
    before it is finite at k, and every value at steps < k is finite."""
    k = 4
    model = InfNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, weight_every=1) as rec:
        for step in range(k + 1):
            model.mid.blow_up = step == k
            one_step(model, torch.randn(3, 4), rec)
            opt.step()
            opt.zero_grad()
    frame = rec.to_frame()
    before = frame[frame.step < k]
    assert len(before) == k * 3 * 7
    assert np.isfinite(before.value).all()
    assert not math.isfinite(lookup(frame, "mid", "output_norm", step=k))
    assert not math.isfinite(lookup(frame, "mid", "output_rms", step=k))
    assert math.isfinite(lookup(frame, "l0", "output_norm", step=k))
    forward_at_k = frame[(frame.step == k) & frame.metric.isin(FORWARD)]
    first_bad = forward_at_k[~np.isfinite(forward_at_k.value)].sort_values("layer_idx")
    assert first_bad.layer.iloc[0] == "mid"


def test_injected_inf_divergence_onset():
    """fitting.divergence_onset on the same run returns (k, mid) for the output norm."""
    fitting = pytest.importorskip("stability.fitting")
    if not hasattr(fitting, "divergence_onset"):
        pytest.skip("stability.fitting.divergence_onset not written yet")
    k = 3
    model = InfNet()
    with Recorder(model) as rec:
        for step in range(k + 2):
            model.mid.blow_up = step == k
            one_step(model, torch.randn(3, 4), rec)
    onset = fitting.divergence_onset(rec.to_frame(), metric="output_norm")
    assert (onset.step, onset.layer) == (k, "mid")


# --------------------------------------------------------------------------- 8. memory


def test_memory_flat_over_1000_steps():
    """1000 steps of a 3-layer MLP with flush_every=100.

    Reference bounds: device tensors waiting for a flush never exceed flush_every plus the
    values of one step (12 forward/grad + 9 weight), and are 0 right after each flush;
    tracemalloc growth over steps 100..1000 exceeds the host records themselves (36 bytes a
    row: int64 keys x 4 + one float32 value, ~390 kB) by less than 256 kB, and stays under
    2 MB in total.
    """
    model = mlp()
    x = torch.randn(4, 8)
    values_per_step = 3 * 4 + 3 * 3
    rec = Recorder(model, flush_every=100, weight_every=100)

    def step(i):
        one_step(model, x, rec)
        assert rec.pending_device_tensors <= 100 + values_per_step
        if (i + 1) % 100 == 0:
            assert rec.pending_device_tensors == 0
        else:
            assert rec.pending_device_tensors == (i + 1) % 100

    for i in range(100):
        step(i)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        peak_pending = 0
        for i in range(100, 1000):
            out = model(x)
            peak_pending = max(peak_pending, rec.pending_device_tensors)
            out.pow(2).mean().backward()
            peak_pending = max(peak_pending, rec.pending_device_tensors)
            del out
            rec.step()
            assert rec.pending_device_tensors == (0 if (i + 1) % 100 == 0 else (i + 1) % 100)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rows = 900 * 12 + 9 * 9
    host_bytes = rows * (4 * 8 + 4)
    assert peak_pending <= 100 + values_per_step
    # measured here: growth ~350 kB against ~390 kB of host records
    assert end - start - host_bytes < 256_000, (end - start, host_bytes)
    assert end - start < 2_000_000
    rec.close()
    frame = rec.to_frame()
    assert len(frame) == 1000 * 12 + 10 * 9


# --------------------------------------------------------------------------- 9. save


def test_save_parquet_columns_and_overwrite(tmp_path):
    """save(): parquet read back by pandas with exactly the six columns and the same rows;
    an existing file -> FileExistsError unless overwrite=True; a bad suffix -> ValueError."""
    model = SharedNet()
    with Recorder(model, weight_every=1) as rec:
        for _ in range(2):
            one_step(model, torch.randn(2, 4), rec)
    path = tmp_path / "runs" / "x" / "records.parquet"
    assert rec.save(path) == path
    back = pd.read_parquet(path)
    assert list(back.columns) == COLUMNS
    pd.testing.assert_frame_equal(back, rec.to_frame())
    assert len(back) == 2 * (4 * 4 + 3 * 3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["records.parquet"]

    mtime = path.stat().st_mtime_ns
    with pytest.raises(FileExistsError):
        rec.save(path)
    assert path.stat().st_mtime_ns == mtime
    rec.save(path, overwrite=True)
    pd.testing.assert_frame_equal(pd.read_parquet(path), back)
    for bad in ("records.txt", "records", "records.parquet.bak"):
        with pytest.raises(ValueError):
            rec.save(tmp_path / bad)
        assert not (tmp_path / bad).exists()


# --------------------------------------------------------------------------- 10. gpu


@pytest.mark.gpu
def test_no_host_sync_on_cuda():
    """50 recorded training steps under torch.cuda.set_sync_debug_mode("error") raise nothing
    (forward, backward, rec.step(), weight metrics every 10 steps); flush afterwards."""
    device = torch.device("cuda")
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, foreach=True)
    xs = torch.randn(50, 4, 3, 16, 16, device=device)
    ys = torch.randint(0, 10, (50, 4), device=device)
    F.cross_entropy(model(xs[0]), ys[0]).backward()  # warm up kernels outside the check
    opt.zero_grad()
    torch.cuda.synchronize()
    rec = Recorder(model, flush_every=1000, weight_every=10)
    try:
        for i in range(50):
            torch.cuda.set_sync_debug_mode("error")
            try:
                F.cross_entropy(model(xs[i]), ys[i]).backward()
                rec.step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
            opt.step()
            opt.zero_grad()
        assert rec.pending_device_tensors == 50
    finally:
        rec.close()
    frame = rec.to_frame()
    assert len(frame) == 50 * 3 * 4 + 5 * 3 * 3
    assert np.isfinite(frame.value).all()


def test_pop_frame_returns_each_row_once():
    """pop_frame() hands out rows once; concatenated parts equal a single to_frame()."""
    import pandas as pd

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    twin = copy.deepcopy(model)
    parts = []
    with Recorder(model, weight_every=2) as rec, Recorder(twin, weight_every=2) as whole:
        for step in range(5):
            model(x).sum().backward()
            twin(x).sum().backward()
            rec.step()
            whole.step()
            if step in (1, 3):
                parts.append(rec.pop_frame())
        parts.append(rec.pop_frame())
    assert rec.pop_frame().empty
    joined = pd.concat(parts, ignore_index=True)
    expected = whole.to_frame()
    pd.testing.assert_frame_equal(joined.drop(columns="value"), expected.drop(columns="value"))
    assert np.allclose(joined["value"], expected["value"])


def test_single_layer_model_and_string_metric():
    """A bare nn.Linear is recorded under the root name; metrics='output_rms' is one metric."""
    layer = nn.Linear(4, 3)
    with Recorder(layer, metrics="output_rms") as rec:
        out = layer(torch.randn(2, 4))
        rec.step()
    frame = rec.to_frame()
    assert set(frame["metric"]) == {"output_rms"}
    assert frame["value"].iloc[0] == pytest.approx(
        float(out.detach().norm() / out.numel() ** 0.5), rel=1e-6
    )


class _Bypassed(nn.Module):
    """``inner``'s weight is used through F.linear, never by calling ``inner``."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(F.linear(x, self.inner.weight, self.inner.bias))


def test_selected_layer_without_rows_warns_once_at_first_flush():
    """A selected module its parent bypasses has no row: one warning naming it at the first
    flush (none later); the layer that ran is recorded as usual."""
    model = _Bypassed()
    x = torch.randn(4, 3)
    with Recorder(model, flush_every=2) as rec:
        one_step(model, x, rec)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            one_step(model, x, rec)  # step 2: the first flush
            for _ in range(3):
                one_step(model, x, rec)
    silent = [w for w in caught if "never ran" in str(w.message)]
    assert len(silent) == 1
    assert "inner" in str(silent[0].message) and "head" not in str(silent[0].message)
    frame = rec.to_frame()
    assert set(frame.layer) == {"head"}
    assert sorted(frame.step.unique()) == [0, 1, 2, 3, 4]


def test_no_warning_when_every_selected_layer_has_rows():
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Recorder(model, flush_every=1) as rec:
            one_step(model, torch.randn(2, 8), rec)
    assert set(rec.to_frame().layer) == {"0", "2", "4"}
