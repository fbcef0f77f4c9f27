r"""BN-free versions of torchvision's ResNet classes, for the kinds other than ``bn``.

torchvision's ``BasicBlock``, ``Bottleneck`` and ``ResNet`` call ``self.bn*`` and reuse
one ``self.relu``; :func:`convert_resnet_module` gives such a module the subclass below,
one activation module per place (``act1``, ``act2``, ``act3``: TReLU needs per-channel
thresholds at each) and, in a block, the residual sum
:math:`o = s\,(f(x) + \mathrm{shortcut}(x))` of :class:`ResidualAdd`
(:math:`s = 1/\sqrt2` for NP, 1 otherwise).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from stability.paper.normalization.layers import ResidualAdd, activation_after

__all__ = [
    "NORM_RESNET_CLASSES",
    "RESNET_CLASSES",
    "NormBasicBlock",
    "NormBottleneck",
    "NormResNet",
    "convert_resnet_module",
]


def _reorder_children(module: nn.Module, names: list[str]) -> None:
    """Put ``module``'s children in the given order (print / registration order only)."""
    present = [n for n in names if n in module._modules]
    rest = [n for n in module._modules if n not in present]
    children = {n: module._modules[n] for n in present + rest}
    module._modules.clear()
    module._modules.update(children)


class NormBasicBlock(BasicBlock):
    r"""torchvision ``BasicBlock`` without BatchNorm, for the kinds other than ``bn``.

    ``out = act2(residual(conv2(act1(conv1(x))), shortcut(x)))`` with one activation
    module per place (``act1``, ``act2``; TReLU needs per-channel thresholds there)
    and :class:`ResidualAdd` (scaled by :math:`1/\sqrt2` for NP).
    """

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.conv1(x))
        out = self.conv2(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.act2(self.residual(out, identity))


class NormBottleneck(Bottleneck):
    r"""torchvision ``Bottleneck`` without BatchNorm, for the kinds other than ``bn``.

    ``out = act3(residual(conv3(act2(conv2(act1(conv1(x))))), shortcut(x)))``, one
    activation module per place and :class:`ResidualAdd` (scaled by
    :math:`1/\sqrt2` for NP). The downsample shortcut runs after the branch, as in
    torchvision, so the forward (depth) order of the layers is unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.conv1(x))
        out = self.act2(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.act3(self.residual(out, identity))


class NormResNet(ResNet):
    """torchvision ``ResNet`` whose stem is ``conv1 -> act1`` (no ``bn1``)."""

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# (torchvision class, our class, the convs whose outputs get an activation, child order)
RESNET_CLASSES = {
    BasicBlock: (
        NormBasicBlock,
        ("conv1", "conv2"),
        ["conv1", "act1", "conv2", "downsample", "residual", "act2"],
    ),
    Bottleneck: (
        NormBottleneck,
        ("conv1", "conv2", "conv3"),
        ["conv1", "act1", "conv2", "act2", "conv3", "downsample", "residual", "act3"],
    ),
    ResNet: (NormResNet, ("conv1",), ["conv1", "act1"]),
}


def convert_resnet_module(module: nn.Module, kind: str) -> None:
    """Swap a torchvision ResNet / block to its BN-free class with per-place activations.

    The shared ``relu`` module is replaced by ``act1``, ``act2``(, ``act3``), sized
    by the conv whose output each one follows (in a block the last one follows the
    residual sum, whose width is ``conv{2,3}``'s). BatchNorm children are removed
    afterwards by :func:`convert_norm`.
    """
    new_cls, conv_names, order = RESNET_CLASSES[type(module)]
    del module.relu
    for i, conv_name in enumerate(conv_names, start=1):
        module.add_module(f"act{i}", activation_after(kind, getattr(module, conv_name)))
    if new_cls is not NormResNet:
        module.residual = ResidualAdd.for_kind(kind)
    module.__class__ = new_cls
    _reorder_children(module, order)


#: Our BN-free classes (the values' first entries of :data:`RESNET_CLASSES`).
NORM_RESNET_CLASSES: tuple[type, ...] = (NormResNet, NormBottleneck, NormBasicBlock)
