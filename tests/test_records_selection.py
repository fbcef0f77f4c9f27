"""Tests of :mod:`stability.records.selection`: which modules a Recorder records."""

from __future__ import annotations

import warnings

import pytest
import torch
from records_support import FORWARD, WEIGHT, Named, lookup, one_step, ref_norm
from torch import nn

from stability import Recorder
from stability.records.selection import owns_matrix_weight, select_modules, unwrap_model


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"enc.0", "enc.2", "dec.0", "head"}),
        ({"include": "enc.*"}, {"enc.0", "enc.2"}),
        ({"include": ["enc.0", "h*"]}, {"enc.0", "head"}),
        ({"include": lambda n, m: isinstance(m, nn.Tanh)}, {"enc.1", "dec.1"}),
        ({"exclude": "enc.*"}, {"dec.0", "head"}),
        ({"include": "enc.*", "exclude": "enc.2"}, {"enc.0"}),
        ({"exclude": lambda n, m: getattr(m, "out_features", 0) == 4}, {"head"}),
    ],
)
def test_include_exclude(kwargs, expected):
    """Selection by glob / list of globs / callable / exclude vs the expected name set."""
    model = Named()
    with Recorder(model, weight_every=1, **kwargs) as rec:
        one_step(model, torch.randn(2, 3), rec)
    frame = rec.to_frame()
    assert set(frame.layer) == expected
    assert set(rec.layer_names) == expected
    for name in expected:
        module = model.get_submodule(name)
        metrics = set(frame[frame.layer == name].metric)
        has_weight = isinstance(getattr(module, "weight", None), torch.Tensor)
        assert metrics == set(FORWARD) | {"grad_norm"} | (set(WEIGHT) if has_weight else set())


def test_select_modules_and_owns_matrix_weight_directly():
    """select_modules / owns_matrix_weight vs the weights' ndim read off the model by hand:
    candidates own a >= 2-d weight (>= 3-d with a run dimension), in registration order."""
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Conv1d(4, 2, 1), nn.Tanh())
    by_hand = [
        str(i) for i, m in enumerate(model) if getattr(m, "weight", torch.zeros(0)).ndim >= 2
    ]
    assert [n for n, _ in select_modules(model)] == by_hand == ["0", "2"]
    assert [n for n, _ in select_modules(model, run_dim=0)] == ["2"]
    assert not owns_matrix_weight(model[1])
    assert owns_matrix_weight(model[2], run_dim=0) and not owns_matrix_weight(model[0], run_dim=0)
    lone = nn.Linear(2, 2)
    assert select_modules(lone) == [("(model)", lone)]


def test_unwrap_model_strips_compile_and_data_parallel():
    """unwrap_model returns the very module under torch.compile and DataParallel wrappers."""
    inner = nn.Linear(2, 2)
    assert unwrap_model(nn.DataParallel(inner)) is inner
    assert unwrap_model(torch.compile(nn.DataParallel(inner))) is inner
    assert unwrap_model(inner) is inner


def test_bad_selector_type_names_the_argument():
    with pytest.raises(TypeError, match="include/exclude"):
        select_modules(Named(), include=3)
    with pytest.raises(TypeError, match="include/exclude"):
        select_modules(Named(), exclude=["enc.*", 1])


class _ComplexThenReal(nn.Module):
    """A complex Linear (modules ``cplx``) feeding a real one (``real``)."""

    def __init__(self):
        super().__init__()
        self.cplx = nn.Linear(3, 4, dtype=torch.cfloat)
        self.real = nn.Linear(4, 2)

    def forward(self, x):
        return self.real(self.cplx(x.to(torch.cfloat)).abs())


def test_lazy_module_before_materialisation_is_skipped_with_one_warning():
    """A LazyLinear not yet materialised is skipped with one warning naming it; the other
    layer is recorded (vs a float64 numpy norm of its output); after one forward a new
    Recorder records both layers without warning."""
    model = nn.Sequential(nn.LazyLinear(4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(3, 5)
    with pytest.warns(UserWarning, match=r"skips layers .*0 \(LazyLinear") as caught:
        rec = Recorder(model)
    assert len([w for w in caught if "skips layers" in str(w.message)]) == 1
    assert rec.layer_names == ["2"]
    one_step(model, x, rec)
    rec.close()
    expected = ref_norm(model[2](model[1](model[0](x))))
    assert lookup(rec.to_frame(), "2", "output_norm") == pytest.approx(expected, rel=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Recorder(model) as rec:
            one_step(model, x, rec)
    assert set(rec.to_frame().layer) == {"0", "2"}


@pytest.mark.parametrize("include", [None, lambda name, module: name in ("cplx", "real")])
def test_complex_layer_is_skipped_with_one_warning_and_training_runs(include):
    """A complex-valued layer (default or callable selection) is skipped with one warning
    naming it; training runs and the real layer's grad_norm equals autograd.grad's."""
    model = _ComplexThenReal()
    x = torch.randn(6, 3)
    out = model.real(model.cplx(x.to(torch.cfloat)).abs())
    (grad,) = torch.autograd.grad(out.pow(2).mean(), [out])
    with pytest.warns(UserWarning, match=r"cplx \(Linear, complex-valued\)") as caught:
        rec = Recorder(model, include=include, weight_every=1)
    assert len([w for w in caught if "skips layers" in str(w.message)]) == 1
    with rec:
        for _ in range(2):
            one_step(model, x, rec)
    frame = rec.to_frame()
    assert set(frame.layer) == {"real"}
    assert lookup(frame, "real", "grad_norm") == pytest.approx(ref_norm(grad), rel=1e-6)
