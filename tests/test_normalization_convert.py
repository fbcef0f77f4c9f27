"""Tests for stability.paper.normalization against references written from the paper's formulas.

Every layer kind is compared, forward and gradients (input and every parameter), with
a direct re-implementation of its formula on raw tensors (``F.conv2d`` / matmul,
autograd for the gradients), in float64. WN is also compared with torch's own
``parametrizations.weight_norm``. Statistical tests state their sample size and use a
tolerance of 5 standard errors.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torchvision.models import resnet18
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck

from stability.paper.normalization import (
    NORM_KINDS,
    NP_MEAN,
    NP_STD,
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

WN_EPS = 0.1  # large enough that ||W|| + eps and sqrt(||W||^2 + eps) differ visibly
BN_EPS = 1e-3
C_IN, C_OUT = 3, 5

# ----------------------------------------------------------------------------- references


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    """||W_j||_F, by summing squares explicitly."""
    return (w * w).sum(dim=tuple(range(1, w.dim()))).sqrt()


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
    scale = (p["g"] if gain else 1.0) / (_row_norm(p["v"]) + WN_EPS)
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


def _raw_layer(conv: bool) -> nn.Module:
    layer = nn.Conv2d(C_IN, C_OUT, 3, padding=1) if conv else nn.Linear(7, C_OUT)
    return layer.double()


def _input(conv: bool) -> torch.Tensor:
    return torch.randn(4, C_IN, 6, 6) if conv else torch.randn(6, 7)


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
    block = norm_layer(kind, _raw_layer(conv), last=last, eps=eps).double()
    params = _module_params(block, kind, last)
    assert set(params) == names
    # move every parameter away from its initial value (g = ||v||, a = 0, b = 0, ...)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 1.0))
    raw = {k: p.detach().clone().requires_grad_(True) for k, p in params.items()}

    x = _input(conv).double()
    x_mod, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_mod, out_ref = block(x_mod), reference(x_ref, raw)
    torch.testing.assert_close(out_mod, out_ref, rtol=1e-10, atol=1e-10)

    upstream = torch.randn_like(out_ref)
    (out_mod * upstream).sum().backward()
    (out_ref * upstream).sum().backward()
    torch.testing.assert_close(x_mod.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    for name in names:
        torch.testing.assert_close(params[name].grad, raw[name].grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("conv", [True, False], ids=["conv2d", "linear"])
def test_wn_equals_torch_weight_norm_at_eps_zero(conv):
    ours = _raw_layer(conv)
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

    x = _input(conv).double()
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
    expected = g.view(-1, 1, 1, 1) * v / (_row_norm(v).view(-1, 1, 1, 1) + 1e-8)
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
    torch.testing.assert_close(g, _row_norm(w0) + WN_EPS)
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


def _mean_var_with_stderr(y: torch.Tensor) -> tuple[float, float, float, float]:
    """Sample mean and variance with their standard errors (plug-in)."""
    n = y.numel()
    mean = y.mean()
    sq = (y - mean) ** 2
    var = sq.mean()
    return (
        mean.item(),
        (y.std() / math.sqrt(n)).item(),
        var.item(),
        (sq.std() / math.sqrt(n)).item(),
    )


def test_np_activation_has_zero_mean_unit_variance_for_gaussian_input():
    """1e6 standard Gaussian samples; mean within 5 SE of 0 and variance within 5 SE of 1."""
    z = torch.randn(10**6, dtype=torch.float64)
    mean, se_mean, var, se_var = _mean_var_with_stderr(NPActivation()(z))
    assert abs(mean) < 5 * se_mean
    assert abs(var - 1.0) < 5 * se_var
    # and without the NP shift/scale ReLU(z) is clearly not normalized
    _, _, raw_var, _ = _mean_var_with_stderr(torch.relu(z))
    assert abs(raw_var - 1.0) > 100 * se_var


def test_np_residual_sum_keeps_unit_variance():
    """Independent unit-variance branch and shortcut, 1e6 samples, 5 SE tolerance."""
    branch = torch.randn(10**6, dtype=torch.float64)
    shortcut = torch.randn(10**6, dtype=torch.float64)
    mean, se_mean, var, se_var = _mean_var_with_stderr(ResidualAdd.for_kind("np")(branch, shortcut))
    assert abs(mean) < 5 * se_mean
    assert abs(var - 1.0) < 5 * se_var
    _, _, plain_var, plain_se = _mean_var_with_stderr(ResidualAdd.for_kind("wn")(branch, shortcut))
    assert abs(plain_var - 2.0) < 5 * plain_se
    assert ResidualAdd.for_kind("np").scale == pytest.approx(1 / math.sqrt(2))
    for kind in ("none", "bn", "wn", "trelu"):
        assert ResidualAdd.for_kind(kind).scale == 1.0


@pytest.mark.parametrize(
    ("inplanes", "planes", "stride"),
    [(256, 64, 1), (64, 64, 1), (256, 128, 2)],
    ids=["identity", "projection", "strided-projection"],
)
def test_np_bottleneck_residual_sum_is_unit_variance(inplanes, planes, stride):
    """A converted NP Bottleneck fed NP-normalized input (zero mean, unit variance per
    unit) produces a residual sum of variance ~1 (~2 without the 1/sqrt(2)). Tolerance
    20%: the branch is unit-variance only approximately (random rows are not exactly
    orthogonal, ReLU features are correlated, zero padding at the 16x16 borders)."""
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * 4),
        )
    block = nn.Sequential(Bottleneck(inplanes, planes, stride=stride, downsample=downsample))
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
    model = convert_norm(block, "np")
    sums = []
    model[0].residual.register_forward_hook(lambda mod, inp, out: sums.append(out))
    x = NPActivation()(torch.randn(16, inplanes, 16, 16))
    with torch.no_grad():
        model(x)
        model[0].residual.scale = 1.0
        model(x)
    assert 0.8 < sums[0].var().item() < 1.2
    assert 1.6 < sums[1].var().item() < 2.4


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


def test_convert_basic_block_resnet():
    src = resnet18(weights=None, num_classes=5)
    for kind in ("wn", "np", "trelu"):
        model = convert_norm(src, kind)
        assert not any(isinstance(m, _BatchNorm) for m in model.modules())
        assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 8
        n_act = sum(isinstance(m, nn.ReLU | NPActivation | TReLU) for m in model.modules())
        assert n_act == 1 + 2 * 8
        out = model(torch.randn(2, 3, 32, 32))
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


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
