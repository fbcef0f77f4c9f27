"""Tests for stability.paper.models: Table 2 of the paper, ResNet-50, the deep linear network.

Expected shapes and parameter counts are written out here from the paper's Table 2
and section 5, not taken from the code; Xavier init is checked against Glorot's
variance 2 / (fan_in + fan_out) with a 5-standard-error tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from stability.paper.models import cifar10_nv, deep_linear, resnet50
from stability.paper.normalization import NPActivation, TReLU, weight_norm_parameters

WN_KINDS = ("wn", "np", "trelu")
ALL_KINDS = ("none", "bn", "wn", "np", "trelu")

# Table 2: (stage, output C x H x W) for a 3x28x28 input and 10 classes
TABLE2 = [
    ("conv1", (128, 28, 28)),
    ("conv2", (128, 28, 28)),
    ("conv3", (128, 28, 28)),
    ("pool3", (128, 14, 14)),
    ("conv4", (256, 14, 14)),
    ("conv5", (256, 14, 14)),
    ("conv6", (256, 14, 14)),
    ("pool6", (256, 7, 7)),
    ("conv7", (320, 5, 5)),
    ("conv8", (320, 5, 5)),
    ("conv9", (10, 5, 5)),
    ("pool9", (10, 1, 1)),
    ("flatten", (10,)),
]
# (c_in, c_out, k) of conv1..conv9
CIFAR_CONVS = [
    (3, 128, 3),
    (128, 128, 3),
    (128, 128, 3),
    (128, 256, 3),
    (256, 256, 3),
    (256, 256, 3),
    (256, 320, 3),
    (320, 320, 1),
    (320, 10, 1),
]
CIFAR_ACT_CHANNELS = [128, 128, 128, 256, 256, 256, 320, 320, 10]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _xavier_check(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """Glorot uniform: |w| <= sqrt(6/(fan_in+fan_out)), Var w = 2/(fan_in+fan_out).

    For a uniform distribution Var(s^2) = (mu_4 - sigma^4)/n = 0.8 sigma^4 / n; the
    tolerance is 5 such standard errors (and 5 SE of the mean, sigma/sqrt(n))."""
    w = weight.detach().double().flatten()
    n = w.numel()
    var = 2.0 / (fan_in + fan_out)
    assert w.abs().max() <= math.sqrt(3 * var) + 1e-6
    assert abs(w.mean().item()) < 5 * math.sqrt(var / n)
    assert abs((w**2).mean().item() - var) < 5 * var * math.sqrt(0.8 / n)


# ----------------------------------------------------------------------------- cifar10_nv


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cifar10_nv_walks_table2(kind):
    model = cifar10_nv(kind)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    names = {m: n for n, m in model.named_children()}
    hooks = [
        m.register_forward_hook(lambda mod, i, o: shapes.append((names[mod], tuple(o.shape[1:]))))
        for m in model.children()
    ]
    out = model(torch.randn(2, 3, 28, 28))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10)
    table_names = [n for n, _ in TABLE2]
    assert [s for s in shapes if s[0] in table_names] == TABLE2  # order and shapes
    # every activation / BN keeps the shape of the conv before it
    seen = dict(shapes)
    for i in range(1, 10):
        assert seen[f"act{i}"] == seen[f"conv{i}"]
    if kind == "bn":
        assert seen["bn3"] == seen["conv3"] and seen["bn6"] == seen["conv6"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cifar10_nv_normalization_placement(kind):
    model = cifar10_nv(kind)
    bns = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    assert bns == (["bn3", "bn6"] if kind == "bn" else [])
    children = [n for n, _ in model.named_children()]
    assert [n for n in children if n.startswith("conv")] == [f"conv{i}" for i in range(1, 10)]
    convs = [model.get_submodule(f"conv{i}") for i in range(1, 10)]
    assert all(isinstance(c, nn.Conv2d) for c in convs)
    if kind in WN_KINDS:
        gains = [weight_norm_parameters(c).g is not None for c in convs]
        assert gains == ([False] * 8 + [True] if kind == "trelu" else [True] * 9)
    acts = [model.get_submodule(f"act{i}") for i in range(1, 10)]
    act_type = {"np": NPActivation, "trelu": TReLU}.get(kind, nn.ReLU)
    assert all(type(a) is act_type for a in acts)
    if kind == "trelu":
        assert [a.num_channels for a in acts] == CIFAR_ACT_CHANNELS


def _cifar_expected_params(kind: str) -> int:
    weights = sum(k * k * ci * co for ci, co, k in CIFAR_CONVS)
    outs = [co for _, co, _ in CIFAR_CONVS]
    if kind == "bn":  # conv3/conv6 have no bias; BN gamma, beta on 128 and 256 channels
        return weights + sum(outs) - 128 - 256 + 2 * (128 + 256)
    if kind == "none":
        return weights + sum(outs)
    if kind in ("wn", "np"):
        return weights + 2 * sum(outs)  # g and b per output channel
    return weights + 2 * 10 + sum(CIFAR_ACT_CHANNELS)  # trelu: g, b on conv9; a per act


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cifar10_nv_parameter_count_and_backward(kind):
    model = cifar10_nv(kind)
    assert _count(model) == _cifar_expected_params(kind)
    model(torch.randn(3, 3, 28, 28)).logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_cifar10_nv_options_and_errors():
    model = cifar10_nv("wn", in_channels=1, num_classes=7)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(ValueError, match="cifar10_nv expects 28x28 inputs, got 32x32"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="cifar10_nv expects"):
        model(torch.randn(1, 28, 28))
    # Table 2's conv9-ReLU is kept by default: pooled logits are non-negative
    assert (cifar10_nv("none")(torch.randn(8, 3, 28, 28)) >= 0).all()
    raw = cifar10_nv("none", final_activation=False)
    assert "act9" not in dict(raw.named_children())
    assert (raw(torch.randn(8, 3, 28, 28)) < 0).any()
    with pytest.raises(ValueError, match=r"'batch'.*none, bn, wn, np, trelu"):
        cifar10_nv("batch")


def test_cifar10_nv_bn_biases():
    model = cifar10_nv("bn")
    has_bias = [model.get_submodule(f"conv{i}").bias is not None for i in range(1, 10)]
    assert has_bias == [True, True, False, True, True, False, True, True, True]


@pytest.mark.parametrize("kind", ["none", "bn", "wn"])
def test_cifar10_nv_xavier_init(kind):
    model = cifar10_nv(kind)
    for i in (1, 5, 7, 9):
        ci, co, k = CIFAR_CONVS[i - 1]
        conv = model.get_submodule(f"conv{i}")
        _xavier_check(conv.weight, ci * k * k, co * k * k)  # the effective weight for wn
        if conv.bias is not None:
            assert conv.bias.abs().sum() == 0
    if kind == "wn":  # g_j = ||v_j|| (+ eps): the WN weight *is* the Xavier weight
        v, g = weight_norm_parameters(model.conv5)
        torch.testing.assert_close(g, v.flatten(1).norm(dim=1))
        torch.testing.assert_close(model.conv5.weight, v)


def test_np_and_trelu_directions_are_xavier():
    for kind in ("np", "trelu"):
        v, _ = weight_norm_parameters(cifar10_nv(kind).conv5)
        _xavier_check(v, 256 * 9, 256 * 9)
    v, g = weight_norm_parameters(cifar10_nv("np").conv5)
    assert torch.all(g == 1)  # NP: unit-norm filters at init (gamma = 1 in its derivation)


# ----------------------------------------------------------------------------- resnet50


@pytest.mark.parametrize("kind", ["bn", "wn"])
def test_resnet50_factory(kind):
    model = resnet50(kind, num_classes=7)
    assert model.fc.out_features == 7
    n_bn = sum(isinstance(m, _BatchNorm) for m in model.modules())
    assert n_bn == (53 if kind == "bn" else 0)
    conv = model.layer3[1].conv2  # 3x3, 256 -> 256
    _xavier_check(conv.weight, 256 * 9, 256 * 9)
    _xavier_check(model.fc.weight, 2048, 7)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize("kind", ["bn", "wn"])
def test_width_narrows_the_networks_and_keeps_their_shape(kind):
    """cifar10-nv's 128/256/320 channels become round(c * width); ResNet-50's bottleneck
    inner width becomes 64 * width while depth and block outputs stay ResNet-50's."""
    narrow = cifar10_nv(kind, in_channels=1, width=0.25)
    convs = [m for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 32, 64, 64, 64, 80, 80, 10]
    assert narrow(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    full, small = resnet50(kind, num_classes=10), resnet50(kind, num_classes=10, width=0.25)
    assert len(list(full.modules())) == len(list(small.modules()))
    assert small.layer1[0].conv1.out_channels == 16 and small.layer1[0].conv3.out_channels == 256
    assert small.layer4[2].conv2.out_channels == 128 and small.fc.in_features == 2048
    assert small(torch.randn(2, 3, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), float("inf"), "wide", True])
def test_width_must_be_a_positive_finite_number(width):
    for factory in (cifar10_nv, resnet50):
        with pytest.raises(ValueError, match="width must be a positive finite number"):
            factory("bn", width=width)


def test_resnet50_rejects_unknown_norm():
    with pytest.raises(ValueError, match=r"'gn'.*none, bn, wn, np, trelu"):
        resnet50("gn")


# ----------------------------------------------------------------------------- deep_linear


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("kind", ["none", "bn", "wn"])
def test_deep_linear_structure(kind):
    model = deep_linear(norm=kind)
    linears = _linears(model)
    assert [n for n, _ in linears] == [f"layers.{i}" for i in range(50)]
    shapes = [tuple(m.weight.shape) for _, m in linears]
    assert shapes == [(64, 784)] + [(64, 64)] * 48 + [(10, 64)]
    assert all(m.bias is None for _, m in linears)
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if kind == "bn":
        assert [n for n, _ in bns] == [f"norms.{i}" for i in range(49)]
        assert all(isinstance(m, nn.BatchNorm1d) and m.num_features == 64 for _, m in bns)
    else:
        assert bns == []
    if kind == "wn":  # bias-free WN: v and g only
        assert all(weight_norm_parameters(m).g is not None for _, m in linears)
        assert _count(model) == sum(o * i + o for o, i in shapes)
    elif kind == "none":
        assert _count(model) == sum(o * i for o, i in shapes)

    # forward order is depth order, BatchNorm i right after layer i (not after the last)
    order: list[str] = []
    named = {m: n for n, m in model.named_modules()}
    for m in named:
        if isinstance(m, nn.Linear | _BatchNorm):
            m.register_forward_hook(lambda mod, i, o: order.append(named[mod]))
    out = model(torch.randn(8, 1, 28, 28))
    assert out.shape == (8, 10)
    expected = []
    for i in range(50):
        expected.append(f"layers.{i}")
        if kind == "bn" and i < 49:
            expected.append(f"norms.{i}")
    assert order == expected


@pytest.mark.parametrize("kind", ["none", "wn", "bn"])
def test_deep_linear_is_linear(kind):
    """No activation anywhere: f(a x + b y) = a f(x) + b f(y) (affine for BN in eval)."""
    model = deep_linear(depth=12, width=16, in_features=20, num_classes=5, norm=kind).double()
    model.eval()
    x, y = torch.randn(4, 20).double(), torch.randn(4, 20).double()
    a, b = 1.7, -0.6
    with torch.no_grad():
        f0 = model(torch.zeros(1, 20).double())
        f = lambda t: model(t) - f0  # noqa: E731
        torch.testing.assert_close(f(a * x + b * y), a * f(x) + b * f(y))
        if kind != "bn":
            assert f0.abs().max() == 0
    activations = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU, NPActivation, TReLU)
    assert not any(isinstance(m, activations) for m in model.modules())


def test_deep_linear_options_and_errors():
    model = deep_linear(depth=3, width=8, in_features=6, num_classes=2, norm="wn", bias=True)
    assert [tuple(m.weight.shape) for _, m in _linears(model)] == [(8, 6), (8, 8), (2, 8)]
    assert all(m.bias is not None for _, m in _linears(model))
    assert len(_linears(deep_linear(depth=1, norm="none"))) == 1
    for kind in ("np", "trelu"):
        with pytest.raises(ValueError, match="purely linear"):
            deep_linear(norm=kind)
    with pytest.raises(ValueError, match="unknown normalization kind 'ln'"):
        deep_linear(norm="ln")
    with pytest.raises(ValueError, match="depth"):
        deep_linear(depth=0)


def test_deep_linear_xavier_init():
    """Pool the 48 hidden 64x64 layers: 196608 weights, expected variance 2/128."""
    for kind in ("none", "wn"):
        model = deep_linear(norm=kind)
        hidden = torch.cat([model.layers[i].weight.detach().flatten() for i in range(1, 49)])
        _xavier_check(hidden, 64, 64)
        _xavier_check(model.layers[0].weight, 784, 64)
