r"""The paper's networks: ``cifar10_nv`` (Table 2), ResNet-50, and the deep linear network.

Every factory takes ``norm``, one of :data:`stability.paper.normalization.NORM_KINDS`, and
initializes weights with Xavier (Glorot & Bengio, 2010) as the paper does:
:math:`W \sim U[-\sqrt{6 / (n_{in} + n_{out})}, +\sqrt{6 / (n_{in} + n_{out})}]`, variance
:math:`2 / (n_{in} + n_{out})`, with :math:`n_{in} = C_{in} k_h k_w` and
:math:`n_{out} = C_{out} k_h k_w` for a conv (PyTorch's fan convention), biases zero.
(Caffe's ``xavier`` filler, which NVIDIA's cifar10-nv used, defaults to variance
:math:`1 / n_{in}`; we follow the paper's citation, Glorot's formula.) Initialization
happens on the plain layers *before* weight normalization, so a ``wn`` layer's
effective weight equals the Xavier weight at init (:math:`g_j = \|v_j\|`); ``np``
layers start with unit-norm filters (:math:`g_j = 1`) and ``trelu`` layers have no
gain (see :mod:`stability.paper.normalization`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from stability.paper.names import DEEP_LINEAR_NORMS, NORM_KINDS
from stability.paper.normalization import (
    WEIGHT_LAYERS,
    check_norm_kind,
    convert_norm,
    weight_norm,
)

__all__ = [
    "DEEP_LINEAR_NORMS",
    "Cifar10NV",
    "DeepLinear",
    "cifar10_nv",
    "deep_linear",
    "resnet50",
    "xavier_init_",
]


def xavier_init_(model: nn.Module) -> nn.Module:
    """Xavier-uniform init of every conv / linear weight and zero biases, in place.

    Call it on plain layers, before :func:`~stability.paper.normalization.convert_norm`.
    BatchNorm keeps :math:`\\gamma = 1, \\beta = 0`.

    Raises:
        ValueError: if a layer's weight is already parametrized.
    """
    for module in model.modules():
        if isinstance(module, WEIGHT_LAYERS):
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError("xavier_init_ expects plain layers (initialize before WN)")
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


# --------------------------------------------------------------------------- cifar10-nv


class Cifar10NV(nn.Sequential):
    """``nn.Sequential`` that checks its input is ``(N, C, 28, 28)`` (Table 2's size)."""

    input_size: tuple[int, int] = (28, 28)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"cifar10_nv expects (N, C, 28, 28) inputs, got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if (h, w) != self.input_size:
            raise ValueError(f"cifar10_nv expects 28x28 inputs, got {h}x{w}")
        return super().forward(x)


def cifar10_nv(
    norm: str,
    in_channels: int = 3,
    num_classes: int = 10,
    *,
    final_activation: bool = True,
    width: float = 1.0,
) -> Cifar10NV:
    """The paper's cifar10-nv network, exactly as in Table 2, for 28x28 inputs.

    ============  =================  ===============
    module        kernel             output
    ============  =================  ===============
    conv1-act1    3x3x128, pad 1     128x28x28
    conv2-act2    3x3x128, pad 1     128x28x28
    conv3-(bn3)-act3  3x3x128, pad 1 128x28x28
    pool3         max 3x3, s2, pad 1 128x14x14
    conv4-act4    3x3x256, pad 1     256x14x14
    conv5-act5    3x3x256, pad 1     256x14x14
    conv6-(bn6)-act6  3x3x256, pad 1 256x14x14
    pool6         max 3x3, s2, pad 1 256x7x7
    conv7-act7    3x3x320, no pad    320x5x5
    conv8-act8    1x1x320            320x5x5
    conv9-act9    1x1xK              Kx5x5
    pool9         avg 5x5            Kx1x1
    flatten                          K (logits)
    ============  =================  ===============

    Max pools use padding 1, giving 28 -> 14 -> 7 (Caffe's ceil-mode pooling without
    padding gives the same sizes). ``norm="bn"`` puts BatchNorm after conv3 and conv6
    only, as Table 2 does (those two convs then have no bias; BN's :math:`\\beta` takes
    its place); the WN kinds normalize every conv (``trelu``: conv9 is the last layer
    and has the gain and bias); ``none`` has no normalization and a bias on every conv.

    Table 2 writes "conv9-ReLU" before the average pool, and we follow it: the logits
    are the average of rectified class maps (for ``np``/``trelu`` the kind's
    activation). Pass ``final_activation=False`` to drop ``act9`` and pool the raw
    conv9 maps instead.

    Args:
        norm: one of :data:`~stability.paper.normalization.NORM_KINDS`.
        in_channels: input channels (3 for CIFAR-10, 1 for Fashion-MNIST).
        num_classes: output classes :math:`K`.
        final_activation: keep Table 2's ReLU after conv9.
        width: channel multiplier: the 128 / 256 / 320 channels become
            ``round(c * width)`` (at least 1); 1 is Table 2. A conv's cost scales with
            ``width**2`` (the ``mini`` preset's 0.25 is ~16x cheaper per image).

    Raises:
        ValueError: unknown ``norm``; a ``width`` that is not a positive number; at
            forward, an input that is not 28x28.
    """
    norm = check_norm_kind(norm)
    c1, c2, c3 = (_scaled_channels(c, width) for c in (128, 256, 320))

    def conv(cin: int, cout: int, k: int, pad: int, bias: bool = True) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel_size=k, padding=pad, bias=bias)

    spec: list[tuple[str, nn.Module]] = [
        ("conv1", conv(in_channels, c1, 3, 1)),
        ("act1", nn.ReLU()),
        ("conv2", conv(c1, c1, 3, 1)),
        ("act2", nn.ReLU()),
        ("conv3", conv(c1, c1, 3, 1, bias=False)),
        ("bn3", nn.BatchNorm2d(c1)),
        ("act3", nn.ReLU()),
        ("pool3", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ("conv4", conv(c1, c2, 3, 1)),
        ("act4", nn.ReLU()),
        ("conv5", conv(c2, c2, 3, 1)),
        ("act5", nn.ReLU()),
        ("conv6", conv(c2, c2, 3, 1, bias=False)),
        ("bn6", nn.BatchNorm2d(c2)),
        ("act6", nn.ReLU()),
        ("pool6", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ("conv7", conv(c2, c3, 3, 0)),
        ("act7", nn.ReLU()),
        ("conv8", conv(c3, c3, 1, 0)),
        ("act8", nn.ReLU()),
        ("conv9", conv(c3, num_classes, 1, 0)),
        ("act9", nn.ReLU()),
        ("pool9", nn.AvgPool2d(kernel_size=5)),
        ("flatten", nn.Flatten(1)),
    ]
    if not final_activation:
        spec = [(name, m) for name, m in spec if name != "act9"]
    model = xavier_init_(Cifar10NV(OrderedDict(spec)))
    return model if norm == "bn" else convert_norm(model, norm)


# --------------------------------------------------------------------------- ResNet-50


def _scaled_channels(channels: int, width: float) -> int:
    """``round(channels * width)``, at least 1; ``width`` must be a positive number."""
    number = isinstance(width, int | float) and not isinstance(width, bool)
    if not (number and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive finite number, got {width!r}")
    return max(1, round(channels * width))


def resnet50(norm: str, num_classes: int = 1000, *, width: float = 1.0) -> nn.Module:
    """torchvision's ResNet-50 (v1.5, random weights) with Xavier init, converted to ``norm``.

    ``width`` scales the bottleneck's inner width (torchvision's ``width_per_group``,
    ``round(64 * width)``): depth, strides and the 256 ... 2048 block outputs stay
    ResNet-50's; 1 is the paper's network.

    ``bn`` is torchvision's model (BatchNorm after every conv); the other kinds go
    through :func:`~stability.paper.normalization.convert_norm` (BatchNorm removed, convs
    given a bias, ``np`` residual sums scaled by :math:`1/\\sqrt2`). No pretrained
    weights are ever downloaded.

    Raises:
        ValueError: unknown ``norm``; a ``width`` that is not a positive number.
    """
    norm = check_norm_kind(norm)
    inner = _scaled_channels(64, width)
    from torchvision.models import resnet50 as tv_resnet50

    model = xavier_init_(tv_resnet50(weights=None, num_classes=num_classes, width_per_group=inner))
    return model if norm == "bn" else convert_norm(model, norm)


# --------------------------------------------------------------------------- deep linear


class DeepLinear(nn.Module):
    """A purely linear network: flatten, then ``layers.0`` ... ``layers.{depth-1}``.

    With ``norms`` (the ``bn`` variant), ``norms.i`` (BatchNorm1d) follows
    ``layers.i`` for every hidden layer ``i < depth - 1``. There is no activation.
    """

    def __init__(self, layers: list[nn.Linear], norms: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms) if norms is not None else None

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.norms is not None and i < len(self.norms):
                x = self.norms[i](x)
        return x


def deep_linear(
    depth: int = 50,
    width: int = 64,
    in_features: int = 784,
    num_classes: int = 10,
    norm: str = "wn",
    bias: bool = False,
) -> DeepLinear:
    r"""The paper's section-5 network: ``depth`` linear layers, no activations.

    Layer widths are ``in_features -> width -> ... -> width -> num_classes``
    (``depth = 1`` is a single ``in_features -> num_classes`` layer); the input is
    flattened. ``none``: plain layers; ``wn``: every layer weight-normalized,
    :math:`o = g \odot (W x) / \|W_j\| (+ b)`, with :math:`g` only for the default
    bias-free network; ``bn``: BatchNorm1d after every hidden layer (not after the
    last). Xavier init (a ``wn`` layer's effective weight is the Xavier weight).

    Args:
        depth: number of ``nn.Linear`` layers (>= 1).
        width: hidden width (64 in the paper).
        in_features: flattened input size (784 for 28x28 grey images).
        num_classes: output size.
        norm: ``none``, ``bn`` or ``wn``.
        bias: give the linear layers a bias (the paper's network has none).

    Raises:
        ValueError: a bad ``depth``, or a ``norm`` outside ``none``/``bn``/``wn``
            (``np`` and ``trelu`` are defined by their activation functions, which a
            purely linear network does not have).
    """
    norm = check_norm_kind(norm)
    if norm not in DEEP_LINEAR_NORMS:
        raise ValueError(
            f"deep_linear is purely linear and supports norm in {DEEP_LINEAR_NORMS}, got "
            f"{norm!r} ({norm} is defined by its activation function); all kinds: {NORM_KINDS}"
        )
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"deep_linear needs depth >= 1, got {depth!r}")
    sizes = [in_features] + [width] * (depth - 1) + [num_classes]
    layers = [nn.Linear(n_in, n_out, bias=bias) for n_in, n_out in pairwise(sizes)]
    for layer in layers:
        xavier_init_(layer)
        if norm == "wn":
            weight_norm(layer, gain=True)
    norms = [nn.BatchNorm1d(width) for _ in range(depth - 1)] if norm == "bn" else None
    return DeepLinear(layers, norms)
