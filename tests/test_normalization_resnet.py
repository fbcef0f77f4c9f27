"""Tests for stability.paper.normalization.resnet: the BN-free torchvision ResNet blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, Bottleneck

from stability.paper.normalization import NPActivation, TReLU, convert_norm
from stability.paper.normalization.resnet import NormBasicBlock


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


def test_norm_basic_block_computes_the_residual_formula():
    """act2(s * (conv2(act1(conv1(x))) + x)), written out with the block's own modules."""
    src = nn.Sequential(BasicBlock(4, 4))
    block = convert_norm(src, "np")[0]
    assert type(block) is NormBasicBlock
    assert [n for n, _ in block.named_children()] == ["conv1", "act1", "conv2", "residual", "act2"]
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    block = block.double()
    expected = block.act2((block.conv2(block.act1(block.conv1(x))) + x) / 2**0.5)
    torch.testing.assert_close(block(x), expected)
