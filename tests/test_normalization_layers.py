"""Tests for stability.paper.normalization.layers: weight norm, the NP and TReLU activations,
the residual sum.

WN is compared with torch's own ``parametrizations.weight_norm`` and with its formula on raw
tensors; the NP statistics state their sample size and use a tolerance of 5 standard errors.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from normalization_support import WN_EPS, layer_input, mean_var_with_stderr, raw_layer, row_norm
from torch import nn
from torch.nn.utils import parametrize

from stability.paper.normalization.layers import (
    NP_MEAN,
    NP_STD,
    NPActivation,
    ResidualAdd,
    TReLU,
    activation_after,
    set_bias,
    weight_norm,
    weight_norm_parameters,
)


@pytest.mark.parametrize("conv", [True, False], ids=["conv2d", "linear"])
def test_wn_equals_torch_weight_norm_at_eps_zero(conv):
    ours = raw_layer(conv)
    theirs = copy.deepcopy(ours)
    weight_norm(ours, eps=0.0)
    torch.nn.utils.parametrizations.weight_norm(theirs, dim=0)
    v, g = weight_norm_parameters(ours)
    t_g = theirs.parametrizations.weight.original0
    t_v = theirs.parametrizations.weight.original1
    with torch.no_grad():  # same, non-default g in both
        g.copy_(torch.rand_like(g) + 0.5)
        t_g.copy_(g.view_as(t_g))
    torch.testing.assert_close(v, t_v, rtol=0, atol=0)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-12, atol=1e-12)

    x = layer_input(conv).double()
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = ours(x1), theirs(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(y1)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g.grad, t_g.grad.view_as(g), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v.grad, t_v.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-10, atol=1e-12)


def test_wn_is_a_parametrization_that_keeps_the_module_class():
    conv = weight_norm(nn.Conv2d(3, 8, 3))
    assert isinstance(conv, nn.Conv2d)
    assert parametrize.is_parametrized(conv, "weight")
    assert conv.weight.ndim == 4
    v, g = weight_norm_parameters(conv)
    assert g.shape == (8,)
    expected = g.view(-1, 1, 1, 1) * v / (row_norm(v).view(-1, 1, 1, 1) + 1e-8)
    torch.testing.assert_close(conv.weight, expected)
    lin = weight_norm(nn.Linear(4, 3, bias=False), gain=False)
    assert isinstance(lin, nn.Linear)
    assert weight_norm_parameters(lin).g is None
    assert [n for n, _ in lin.named_parameters()] == ["parametrizations.weight.original"]
    with pytest.raises(ValueError, match="already parametrized"):
        weight_norm(lin)
    with pytest.raises(ValueError, match="not weight-normalized"):
        weight_norm_parameters(nn.Linear(2, 2))


def test_wn_init_keeps_the_weight_and_assignment_sets_the_effective_weight():
    """g_j starts at ||v_j|| + eps, so WN of a Xavier layer has the Xavier weight."""
    layer = nn.Conv2d(16, 32, 3).double()
    nn.init.xavier_uniform_(layer.weight)
    w0 = layer.weight.detach().clone()
    weight_norm(layer, eps=WN_EPS)
    v, g = weight_norm_parameters(layer)
    torch.testing.assert_close(v, w0, rtol=0, atol=0)
    torch.testing.assert_close(g, row_norm(w0) + WN_EPS)
    torch.testing.assert_close(layer.weight, w0)
    w1 = torch.randn_like(w0)
    layer.weight = w1
    torch.testing.assert_close(layer.weight, w1)


@pytest.mark.parametrize("conv", [True, False], ids=["conv1x1", "linear"])
def test_wn_preserves_norm_for_orthonormal_rows(conv):
    """Section 3: with W orthogonal (up to the row scales WN removes) and g = 1,
    ||o||_2 = ||x||_2 exactly, per sample."""
    n = 32
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    row_scales = torch.rand(n, 1, dtype=torch.float64) * 3 + 0.1
    w = q * row_scales
    layer = nn.Conv2d(n, n, 1, bias=False) if conv else nn.Linear(n, n, bias=False)
    layer = layer.double()
    with torch.no_grad():
        layer.weight.copy_(w.view_as(layer.weight))
    weight_norm(layer, eps=0.0)
    with torch.no_grad():
        weight_norm_parameters(layer).g.fill_(1.0)
    x = torch.randn(8, n, 5, 5, dtype=torch.float64) if conv else torch.randn(8, n).double()
    o = layer(x)
    torch.testing.assert_close(o.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    # the assumption matters: with highly coherent rows (all close to q_0) an input
    # along q_0 is amplified about sqrt(n) times
    with torch.no_grad():
        weight_norm_parameters(layer).v.copy_((q[:1] + 0.1 * q).view_as(layer.weight))
    x0 = q[0].view(1, n, 1, 1) if conv else q[:1]
    assert layer(x0).norm() > 0.5 * math.sqrt(n) * x0.norm()


def test_np_constants():
    assert NP_MEAN == pytest.approx(0.39894, abs=1e-5)
    assert NP_STD == pytest.approx(0.58382, abs=1e-5)


def test_np_activation_has_zero_mean_unit_variance_for_gaussianlayer_input():
    """1e6 standard Gaussian samples; mean within 5 SE of 0 and variance within 5 SE of 1."""
    z = torch.randn(10**6, dtype=torch.float64)
    mean, se_mean, var, se_var = mean_var_with_stderr(NPActivation()(z))
    assert abs(mean) < 5 * se_mean
    assert abs(var - 1.0) < 5 * se_var
    # and without the NP shift/scale ReLU(z) is clearly not normalized
    _, _, raw_var, _ = mean_var_with_stderr(torch.relu(z))
    assert abs(raw_var - 1.0) > 100 * se_var


def test_np_residual_sum_keeps_unit_variance():
    """Independent unit-variance branch and shortcut, 1e6 samples, 5 SE tolerance."""
    branch = torch.randn(10**6, dtype=torch.float64)
    shortcut = torch.randn(10**6, dtype=torch.float64)
    mean, se_mean, var, se_var = mean_var_with_stderr(ResidualAdd.for_kind("np")(branch, shortcut))
    assert abs(mean) < 5 * se_mean
    assert abs(var - 1.0) < 5 * se_var
    _, _, plain_var, plain_se = mean_var_with_stderr(ResidualAdd.for_kind("wn")(branch, shortcut))
    assert abs(plain_var - 2.0) < 5 * plain_se
    assert ResidualAdd.for_kind("np").scale == pytest.approx(1 / math.sqrt(2))
    for kind in ("none", "bn", "wn", "trelu"):
        assert ResidualAdd.for_kind(kind).scale == 1.0


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (10, 3)], ids=["4d", "2d"])
def test_trelu_equals_translated_relu(shape):
    act = TReLU(3)
    with torch.no_grad():
        act.a.copy_(torch.tensor([-0.5, 0.3, 1.2]))
    z = torch.randn(shape) * 2
    a = act.a.detach().view(1, 3, *([1] * (len(shape) - 2)))
    expected = torch.where(z > a, z, a.expand_as(z))  # ReLU(z - a) + a, written casewise
    torch.testing.assert_close(act(z), expected)
    assert TReLU(7).a.abs().sum() == 0  # a starts at 0


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("none", nn.ReLU), ("bn", nn.ReLU), ("wn", nn.ReLU), ("np", NPActivation), ("trelu", TReLU)],
)
def test_activation_after_is_sized_by_the_layer_outputs(kind, expected):
    layer = nn.Conv2d(3, 6, 1).double()
    act = activation_after(kind, layer)
    assert type(act) is expected
    if kind == "trelu":
        assert act.a.shape == (6,) and act.a.dtype == torch.float64


def test_set_bias_adds_a_zero_bias_keeps_an_existing_one_and_removes():
    layer = nn.Linear(3, 4, bias=False).double()
    set_bias(layer, True)
    assert layer.bias.shape == (4,) and layer.bias.dtype == torch.float64
    assert torch.equal(layer.bias, torch.zeros(4, dtype=torch.float64))
    with torch.no_grad():
        layer.bias.fill_(2.0)
    set_bias(layer, True)
    assert torch.all(layer.bias == 2.0)
    set_bias(layer, False)
    assert layer.bias is None
