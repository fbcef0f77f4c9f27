"""The Recorder's lifecycle on a user's model: saving, copying, forgetting, transforms, compile.

References: the same model without a Recorder (outputs), torch's own save/load, and the
model's hook dictionaries (nothing left behind).
"""

from __future__ import annotations

import copy
import gc
import io
import pickle
import warnings
import weakref

import pytest
import torch
from records_support import assert_no_hooks
from torch import nn
from torch.func import functional_call, grad, vmap

from stability import Recorder


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _train_step(model: nn.Module, rec: Recorder | None, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    out.square().mean().backward()
    if rec is not None:
        rec.step()
    return out.detach()


@pytest.mark.parametrize("how", ["torch.save", "pickle", "deepcopy"])
def test_a_recorded_model_can_be_saved_and_copied(how):
    model, x = _net(), torch.randn(4, 6)
    with Recorder(model) as rec:
        _train_step(model, rec, x)
        with rec.paused():
            expected = model(x)
        if how == "torch.save":
            buffer = io.BytesIO()
            torch.save(model, buffer)
            buffer.seek(0)
            twin = torch.load(buffer, weights_only=False)
        elif how == "pickle":
            twin = pickle.loads(pickle.dumps(model))
        else:
            twin = copy.deepcopy(model)
        rows = len(rec.to_frame())
        # The copy computes what the model computes and never feeds the recorder.
        assert torch.equal(twin(x), expected)
        twin(x).sum().backward()
        assert len(rec.to_frame()) == rows
    # Its hooks are inert placeholders; state_dict round trips are untouched by them.
    assert torch.equal(twin(x), model(x))
    assert_no_hooks(model)


def test_an_unclosed_recorder_is_collected_and_frees_the_model():
    model, x = _net(), torch.randn(4, 6)
    rec = Recorder(model)
    _train_step(model, rec, x)
    alive = weakref.ref(rec)
    del rec
    gc.collect()
    assert alive() is None
    assert_no_hooks(model)
    with Recorder(model) as again:  # not blocked by the forgotten one
        _train_step(model, again, x)
        assert len(again.to_frame()) > 0


def test_a_recorder_lost_to_an_exception_frees_the_model():
    model, x = _net(), torch.randn(4, 6)

    def fails_mid_training():
        rec = Recorder(model)
        _train_step(model, rec, x)
        raise KeyboardInterrupt  # no close(), no with-block

    with pytest.raises(KeyboardInterrupt):
        fails_mid_training()
    gc.collect()
    assert_no_hooks(model)
    Recorder(model).close()


def test_torch_func_transforms_record_nothing_and_break_nothing():
    model, x = _net(), torch.randn(5, 6)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, sample):
        return functional_call(model, p, (sample,)).square().sum()

    expected = vmap(grad(loss), in_dims=(None, 0))(params, x)
    rec = Recorder(model)
    with pytest.warns(UserWarning, match=r"torch\.func transform") as caught:
        got = vmap(grad(loss), in_dims=(None, 0))(params, x)
        vmap(grad(loss), in_dims=(None, 0))(params, x)
    assert sum("torch.func" in str(w.message) for w in caught) == 1  # said once
    for name in expected:
        assert torch.equal(got[name], expected[name])
    rec.step()
    assert len(rec.to_frame()) == 0
    # Training outside the transform is recorded as usual, then close removes every hook.
    _train_step(model, rec, x)
    assert set(rec.to_frame()["step"]) == {1}
    rec.close()
    assert_no_hooks(model)


@pytest.mark.slow
def test_attaching_after_compile_warns_and_before_compile_records(monkeypatch):
    import torch._dynamo

    # A process where no Recorder was attached yet: dynamo's default skips hook guards.
    monkeypatch.setattr(torch._dynamo.config, "skip_nnmodule_hook_guards", True)
    torch.compiler.reset()
    model, x = _net(), torch.randn(4, 6)
    compiled = torch.compile(model)
    _train_step(compiled, None, x)
    with pytest.warns(UserWarning, match=r"after torch\.compile compiled graphs"):
        rec = Recorder(model)
    _train_step(compiled, rec, x)
    assert len(rec.to_frame()) == 0  # what the warning says: the old code skips the hooks
    rec.close()

    torch.compiler.reset()  # the remedy the warning names
    fresh = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing compiled any more: no warning
        rec = Recorder(fresh)
    compiled_fresh = torch.compile(fresh)
    for _ in range(3):
        _train_step(compiled_fresh, rec, x)
    frame = rec.to_frame()
    rec.close()
    assert sorted(set(frame["step"])) == [0, 1, 2]
    assert set(frame["layer"]) == {"0", "2"}  # the Linear layers

    # Attaching turned the hook guards on: a model compiled and run now, with a Recorder
    # attached afterwards, recompiles and records.
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False
    late = _net(seed=1)
    compiled_late = torch.compile(late)
    _train_step(compiled_late, None, x)
    with Recorder(late) as rec:
        _train_step(compiled_late, rec, x)
        assert set(rec.to_frame()["layer"]) == {"0", "2"}


@pytest.mark.slow
def test_compiled_outputs_with_a_recorder_equal_up_to_rounding():
    """The stated guarantee: compiled + Recorder equals compiled alone to float rounding."""
    x, target = torch.randn(16, 6), torch.randn(16, 3)

    def train(record: bool) -> torch.Tensor:
        model = _net(seed=3)
        rec = Recorder(model) if record else None
        compiled = torch.compile(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        outs = []
        for _ in range(5):
            out = compiled(x)
            (out - target).square().mean().backward()
            opt.step()
            opt.zero_grad()
            if rec is not None:
                rec.step()
            outs.append(out.detach())
        if rec is not None:
            assert len(rec.to_frame()) > 0
            rec.close()
        return torch.stack(outs)

    torch.compiler.reset()
    bare = train(False)
    torch.compiler.reset()
    recorded = train(True)
    torch.testing.assert_close(recorded, bare, rtol=1e-5, atol=1e-6)
