"""Tests for stability.paper.normalization.convert against references from the paper's formulas.

Every layer kind is compared, forward and gradients (input and every parameter), with
a direct re-implementation of its formula on raw tensors (``F.conv2d`` / matmul,
autograd for the gradients), in float64; converted ResNet-50s are checked against the
architecture's parameter count and module layout.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from normalization_support import WN_EPS, layer_input, raw_layer, row_norm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import resnet50 as tv_resnet50

from stability.paper.normalization import (
    NORM_KINDS,
    NormBottleneck,
    NormResNet,
    NPActivation,
    ResidualAdd,
    TReLU,
    convert_norm,
    norm_layer,
    weight_norm,
    weight_norm_parameters,
)

BN_EPS = 1e-3

# ----------------------------------------------------------------------------- references


def _apply(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """W * x: the convolution (3x3, padding 1) or the matrix product, no bias."""
    return F.conv2d(x, w, padding=1) if w.dim() == 4 else x @ w.t()


def _per_channel(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1) if y.dim() == 4 else t.view(1, -1)


def ref_none(x, p):
    y = _apply(x, p["weight"])
    return torch.clamp(y + _per_channel(p["bias"], y), min=0)


def ref_bn(x, p):
    y = _apply(x, p["weight"])
    dims = (0, 2, 3) if y.dim() == 4 else (0,)
    mean = y.mean(dim=dims, keepdim=True)
    var = ((y - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as BN's formula
    z = (y - mean) / torch.sqrt(var + BN_EPS)
    return torch.clamp(_per_channel(p["gamma"], y) * z + _per_channel(p["beta"], y), min=0)


def _wn_pre(x, p, gain: bool, bias: bool):
    """g_j (W_j * x) / (||W_j||_F + eps) + b_j, scaling the *output* (not the weight)."""
    y = _apply(x, p["v"])
    scale = (p["g"] if gain else 1.0) / (row_norm(p["v"]) + WN_EPS)
    y = y * _per_channel(scale, y)
    return y + _per_channel(p["b"], y) if bias else y


def ref_wn(x, p):
    return torch.clamp(_wn_pre(x, p, gain=True, bias=True), min=0)


def ref_np(x, p):
    o = _wn_pre(x, p, gain=True, bias=True)
    return (torch.clamp(o, min=0) - math.sqrt(1 / (2 * math.pi))) / math.sqrt(
        0.5 * (1 - 1 / math.pi)
    )


def _trelu(z, a):
    a = _per_channel(a, z)
    return torch.clamp(z - a, min=0) + a


def ref_trelu(x, p):
    return _trelu(_wn_pre(x, p, gain=False, bias=False), p["a"])


def ref_trelu_last(x, p):
    return _trelu(_wn_pre(x, p, gain=True, bias=True), p["a"])


# ----------------------------------------------------------------------------- helpers


def _module_params(block: nn.Sequential, kind: str, last: bool) -> dict[str, nn.Parameter]:
    """The block's trainable tensors, by the names the reference formulas use."""
    layer = block.layer
    if kind in ("none", "bn"):
        params = {"weight": layer.weight}
        if kind == "none":
            params["bias"] = layer.bias
        else:
            params.update(gamma=block.bn.weight, beta=block.bn.bias)
        return params
    v, g = weight_norm_parameters(layer)
    params = {"v": v}
    if g is not None:
        params["g"] = g
    if layer.bias is not None:
        params["b"] = layer.bias
    if kind == "trelu":
        params["a"] = block.act.a
    return params


CASES = [
    ("none", False, ref_none, {"weight", "bias"}),
    ("bn", False, ref_bn, {"weight", "gamma", "beta"}),
    ("wn", False, ref_wn, {"v", "g", "b"}),
    ("np", False, ref_np, {"v", "g", "b"}),
    ("trelu", False, ref_trelu, {"v", "a"}),
    ("trelu", True, ref_trelu_last, {"v", "g", "b", "a"}),
]


@pytest.mark.parametrize("conv", [True, False], ids=["conv2d", "linear"])
@pytest.mark.parametrize(("kind", "last", "reference", "names"), CASES)
def test_layer_matches_paper_formula(kind, last, reference, names, conv):
    eps = BN_EPS if kind == "bn" else WN_EPS
    block = norm_layer(kind, raw_layer(conv), last=last, eps=eps).double()
    params = _module_params(block, kind, last)
    assert set(params) == names
    # move every parameter away from its initial value (g = ||v||, a = 0, b = 0, ...)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 1.0))
    raw = {k: p.detach().clone().requires_grad_(True) for k, p in params.items()}

    x = layer_input(conv).double()
    x_mod, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_mod, out_ref = block(x_mod), reference(x_ref, raw)
    torch.testing.assert_close(out_mod, out_ref, rtol=1e-10, atol=1e-10)

    upstream = torch.randn_like(out_ref)
    (out_mod * upstream).sum().backward()
    (out_ref * upstream).sum().backward()
    torch.testing.assert_close(x_mod.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    for name in names:
        torch.testing.assert_close(params[name].grad, raw[name].grad, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- convert_norm


def _resnet50_shapes(num_classes: int):
    """(c_in, c_out, k) of every conv of torchvision's ResNet-50, the channel count after
    every ReLU application, and the fc shape, from the architecture (He et al. 2016;
    torchvision v1.5 puts the stride on the 3x3, which does not change shapes)."""
    convs, acts = [(3, 64, 7)], [64]
    inplanes = 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            convs += [(inplanes, planes, 1), (planes, planes, 3), (planes, 4 * planes, 1)]
            acts += [planes, planes, 4 * planes]
            if b == 0:
                convs.append((inplanes, 4 * planes, 1))  # downsample projection
            inplanes = 4 * planes
    return convs, acts, (2048, num_classes)


def _expected_params(kind: str, num_classes: int) -> int:
    convs, acts, (f_in, f_out) = _resnet50_shapes(num_classes)
    weights = sum(k * k * ci * co for ci, co, k in convs) + f_in * f_out
    per_conv = {"bn": 2, "none": 1, "wn": 2, "np": 2, "trelu": 0}[kind]  # BN / b / g+b
    fc_extra = {"bn": 1, "none": 1, "wn": 2, "np": 2, "trelu": 2}[kind] * f_out
    total = weights + per_conv * sum(co for _, co, _ in convs) + fc_extra
    return total + (sum(acts) if kind == "trelu" else 0)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tv50():
    """torchvision ResNet-50 (random init, 10 classes); conversions must not touch it."""
    torch.manual_seed(0)
    return tv_resnet50(weights=None, num_classes=10)


def test_resnet50_shape_spec_matches_torchvision(tv50):
    assert _count(tv50) == _expected_params("bn", 10)


@pytest.mark.parametrize("kind", ["none", "wn", "np", "trelu"])
def test_convert_resnet50(tv50, kind):
    before = {k: v.clone() for k, v in tv50.state_dict().items()}
    model = convert_norm(tv50, kind)

    # the input is untouched
    assert tv50.state_dict().keys() == before.keys()
    assert all(torch.equal(tv50.state_dict()[k], v) for k, v in before.items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in tv50.modules()) == 53

    # no BatchNorm left, not even as a stand-in
    assert not any(isinstance(m, _BatchNorm | nn.Identity) for m in model.modules())
    assert _count(model) == _expected_params(kind, 10)
    assert type(model) is NormResNet
    assert sum(type(m) is NormBottleneck for m in model.modules()) == 16

    # activations: one module per place, the kind's type, sized by the preceding conv
    _, acts, _ = _resnet50_shapes(10)
    act_type = {"none": nn.ReLU, "wn": nn.ReLU, "np": NPActivation, "trelu": TReLU}[kind]
    found = [m for m in model.modules() if isinstance(m, nn.ReLU | NPActivation | TReLU)]
    assert len(found) == len(acts) == 49
    assert all(type(m) is act_type for m in found)
    if kind == "trelu":
        assert [m.num_channels for m in found] == acts

    # forward and backward at a small input; every parameter is used
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_convert_resnet50_layer_details(tv50):
    convs = [n for n, m in tv50.named_modules() if isinstance(m, nn.Conv2d)]
    src = dict(tv50.named_modules())

    wn = convert_norm(tv50, "wn")
    for name, m in wn.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            # still a Conv2d / Linear (the Recorder selects these) with the same weight
            torch.testing.assert_close(m.weight, src[name].weight, rtol=1e-5, atol=1e-7)
            assert weight_norm_parameters(m).g is not None and m.bias is not None

    none = convert_norm(tv50, "none")
    assert all(none.get_submodule(n).bias.abs().sum() == 0 for n in convs)
    assert [n for n, _ in none.named_children()][:2] == ["conv1", "act1"]

    np_model = convert_norm(tv50, "np")
    for name, m in np_model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert torch.all(weight_norm_parameters(m).g == 1.0), name
    scales = [m.scale for m in np_model.modules() if isinstance(m, ResidualAdd)]
    assert scales == pytest.approx([1 / math.sqrt(2)] * 16)

    trelu = convert_norm(tv50, "trelu")
    for name in convs:
        conv = trelu.get_submodule(name)
        assert conv.bias is None and weight_norm_parameters(conv).g is None, name
    assert weight_norm_parameters(trelu.fc).g is not None and trelu.fc.bias is not None
    assert all(m.scale == 1.0 for m in trelu.modules() if isinstance(m, ResidualAdd))

    bn = convert_norm(tv50, "bn")
    assert bn is not tv50 and _count(bn) == _count(tv50)
    copy.deepcopy(trelu)  # converted models can be copied


def test_convert_sequential_removes_bn_and_keeps_names():
    src = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    )
    model = convert_norm(src, "trelu")
    assert [n for n, _ in model.named_children()] == ["0", "2", "3", "4"]
    assert isinstance(model[1], TReLU) and model[1].num_channels == 4
    assert model[0].bias is None and model[3].bias is not None  # g, b on the last only
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 2)

    # new tensors (bias, g, a) follow the layer's dtype (and device)
    double = convert_norm(copy.deepcopy(src).double(), "trelu")
    assert all(p.dtype == torch.float64 for p in double.parameters())
    assert double(torch.randn(2, 3, 6, 6, dtype=torch.float64)).dtype == torch.float64

    wn = convert_norm(src, "wn")
    assert wn[0].bias is not None  # where BN had beta
    no_affine = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False), nn.ReLU())
    assert convert_norm(no_affine, "none")[0].bias is not None  # the layer's own bias stays
    no_affine[0].bias = None
    assert convert_norm(no_affine, "none")[0].bias is None  # no beta, no bias


def test_convert_other_container_uses_identity():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    model = convert_norm(Custom(), "wn")
    assert isinstance(model.bn, nn.Identity)
    assert model(torch.randn(1, 3, 2, 2)).shape == (1, 4, 2, 2)


def test_convert_errors():
    with pytest.raises(ValueError, match=r"'batchnorm'.*none, bn, wn, np, trelu"):
        convert_norm(nn.Linear(2, 2), "batchnorm")
    with pytest.raises(ValueError, match="unknown normalization kind"):
        norm_layer("WN", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="parametrizations"):
        convert_norm(nn.Sequential(weight_norm(nn.Linear(2, 2))), "wn")
    with pytest.raises(ValueError, match="does not follow"):
        convert_norm(nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 3)), "wn")
    with pytest.raises(TypeError):
        weight_norm(nn.ConvTranspose2d(2, 2, 3))
    assert NORM_KINDS == ("none", "bn", "wn", "np", "trelu")
