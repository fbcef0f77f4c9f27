r"""Normalization layers of Gitman & Ginsburg (2017), section 3, and :func:`convert_norm`.

Five kinds, listed in :data:`NORM_KINDS`, each usable with ``nn.Conv2d`` and
``nn.Linear`` (any layer whose weight has the outputs on dimension 0). For output
channel (or unit) :math:`j`, with :math:`W_j * x` the convolution (or dot product)
of row :math:`j` with the input:

============  ==================================================================================
``none``      :math:`o_j = \mathrm{ReLU}(W_j * x + b_j)`
``bn``        :math:`o_j = \mathrm{ReLU}(\gamma_j \frac{y_j - E_B[y_j]}{\sqrt{Var_B[y_j] +
              \epsilon}} + \beta_j)`, :math:`y = W * x`
``wn``        :math:`o_j = \mathrm{ReLU}(g_j \frac{W_j * x}{\|W_j\|_F + \epsilon} + b_j)`
``np``        :math:`o_j = \frac{\mathrm{ReLU}(g_j \frac{W_j * x}{\|W_j\|_F + \epsilon} + b_j)
              - \sqrt{1/(2\pi)}}{\sqrt{\frac12 (1 - 1/\pi)}}`
``trelu``     :math:`o_j = \mathrm{ReLU}(\frac{W_j * x}{\|W_j\|_F + \epsilon} - a_j) + a_j`;
              :math:`g, b` on the last layer only
============  ==================================================================================

Weight normalization is a parametrization (:class:`WeightNorm`, registered with
``torch.nn.utils.parametrize``): a normalized conv is still an ``nn.Conv2d`` and
``module.weight`` *is* the effective weight :math:`g_j W_j / (\|W_j\| + \epsilon)`,
which is what the Recorder reads for row coherence. The trainable tensors are the
direction :math:`v` (``parametrizations.weight.original1``, or ``.original`` when the
layer has no gain) and the gain :math:`g` (``parametrizations.weight.original0``, shape
``(out,)``); :func:`weight_norm_parameters` returns them by role. Parametrized modules
can be deep-copied and their ``state_dict`` saved, but ``torch.save`` of the whole
module object is refused by PyTorch; save state dicts.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "DEFAULT_EPS",
    "NORM_KINDS",
    "NP_MEAN",
    "NP_STD",
    "NPActivation",
    "NormBasicBlock",
    "NormBottleneck",
    "NormResNet",
    "ResidualAdd",
    "TReLU",
    "WeightNorm",
    "WeightNormParameters",
    "bn_layer",
    "check_norm_kind",
    "convert_norm",
    "make_activation",
    "norm_layer",
    "np_layer",
    "plain_layer",
    "trelu_layer",
    "weight_norm",
    "weight_norm_parameters",
    "wn_layer",
]

NORM_KINDS: tuple[str, ...] = ("none", "bn", "wn", "np", "trelu")
"""The normalization kinds, in the order the paper introduces them."""

DEFAULT_EPS: float = 1e-8
r"""The :math:`\epsilon` of :math:`\|W_j\|_F + \epsilon`: a guard against an all-zero row
only. For rows of norm ~1 it is below float32 resolution, so ``wn`` then equals
``torch.nn.utils.parametrizations.weight_norm`` to rounding."""

NP_MEAN: float = math.sqrt(1.0 / (2.0 * math.pi))
r""":math:`E[\mathrm{ReLU}(z)] = \sqrt{1/(2\pi)} \approx 0.39894` for :math:`z \sim N(0, 1)`."""

NP_STD: float = math.sqrt(0.5 * (1.0 - 1.0 / math.pi))
r""":math:`\mathrm{sd}[\mathrm{ReLU}(z)] = \sqrt{\frac12(1 - 1/\pi)} \approx 0.58382` for
:math:`z \sim N(0, 1)`."""

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_FOR_LAYER = {
    nn.Linear: nn.BatchNorm1d,
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}


def check_norm_kind(kind: object) -> str:
    """Return ``kind`` if it is one of :data:`NORM_KINDS`.

    Raises:
        ValueError: naming the bad kind and listing the valid ones.
    """
    if not isinstance(kind, str) or kind not in NORM_KINDS:
        raise ValueError(
            f"unknown normalization kind {kind!r}; valid kinds are: {', '.join(NORM_KINDS)}"
        )
    return kind


# --------------------------------------------------------------------------- weight norm


def _row_norms(v: Tensor, run_dims: int = 0) -> Tensor:
    """Frobenius norm of each output row, :math:`\\|v_j\\|_F`, shape ``(*runs, out)``."""
    return torch.linalg.vector_norm(v.flatten(run_dims + 1), dim=-1)


def _per_row(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``(*runs, out)`` tensor to broadcast over the rows of ``like``."""
    return t.view(*t.shape, *([1] * (like.dim() - t.dim())))


class WeightNorm(nn.Module):
    r"""Parametrization :math:`w_j = g_j \, v_j / (\|v_j\|_F + \epsilon)` of a weight.

    Row :math:`j` is output unit / channel :math:`j` (weight dimension 0), flattened
    over the remaining dimensions, so for a conv :math:`\|v_j\|_F` is the Frobenius
    norm of filter :math:`j`. Then :math:`o_j = g_j (v_j * x) / (\|v_j\|_F + \epsilon)
    + b_j`, the paper's WN layer. With ``gain=False`` the gain is absent
    (:math:`g_j = 1`): the layer applies unit-norm filters, as TReLU WN requires.

    ``right_inverse`` (called when the parametrization is registered and whenever
    ``module.weight`` is assigned) takes an effective weight :math:`w` and returns
    :math:`v = w` and :math:`g_j = \|w_j\| + \epsilon`, so the effective weight is
    exactly :math:`w` again: registering WN on a Xavier-initialised layer keeps its
    weight (the paper's "WN with Xavier init"). Without a gain only the direction can
    be set, and :math:`w / (\|w\| + \epsilon)` results.

    Args:
        gain: learn a per-output gain :math:`g`.
        eps: the :math:`\epsilon` added to the row norm.
        run_dims: leading dimensions indexing independent runs (a stacked weight
            ``(runs, out, ...)`` has ``run_dims=1``; see :mod:`stability.paper.stacked`).
    """

    def __init__(self, gain: bool = True, eps: float = DEFAULT_EPS, run_dims: int = 0) -> None:
        super().__init__()
        self.gain = gain
        self.eps = eps
        self.run_dims = run_dims

    def forward(self, *originals: Tensor) -> Tensor:
        if self.gain:
            g, v = originals
            scale = g / (_row_norms(v, self.run_dims) + self.eps)
        else:
            (v,) = originals
            scale = 1.0 / (_row_norms(v, self.run_dims) + self.eps)
        return v * _per_row(scale, v)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor] | Tensor:
        if not self.gain:
            return weight
        return _row_norms(weight, self.run_dims) + self.eps, weight

    def extra_repr(self) -> str:
        return f"gain={self.gain}, eps={self.eps}"


class WeightNormParameters(NamedTuple):
    """The trainable tensors of a weight-normalized layer, by role."""

    v: nn.Parameter
    """direction (the original weight), same shape as the weight"""
    g: nn.Parameter | None
    """per-output gain, shape ``(out,)``; ``None`` for a gain-free layer"""


def _weight_norm_of(module: nn.Module) -> WeightNorm | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, WeightNorm):
            return p
    return None


def weight_norm_parameters(module: nn.Module) -> WeightNormParameters:
    """Return ``(v, g)`` of a layer normalized by :func:`weight_norm`.

    Raises:
        ValueError: if the module's weight is not parametrized by :class:`WeightNorm`.
    """
    wn = _weight_norm_of(module)
    if wn is None:
        raise ValueError(f"{type(module).__name__} is not weight-normalized")
    plist = module.parametrizations.weight
    if wn.gain:
        return WeightNormParameters(v=plist.original1, g=plist.original0)
    return WeightNormParameters(v=plist.original, g=None)


def _set_bias(layer: nn.Module, present: bool) -> None:
    """Give ``layer`` a zero bias, or remove its bias; an existing bias is kept."""
    if present and layer.bias is None:
        w = layer.weight
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))
    elif not present:
        layer.bias = None


def weight_norm(
    module: nn.Module,
    *,
    gain: bool = True,
    bias: bool | None = None,
    eps: float = DEFAULT_EPS,
) -> nn.Module:
    r"""Weight-normalize a conv / linear layer in place and return it.

    :math:`o_j = g_j \frac{W_j * x}{\|W_j\|_F + \epsilon} + b_j`. The module keeps its
    class (``isinstance(m, nn.Conv2d)`` stays true) and ``module.weight`` becomes the
    effective weight. With ``gain=True`` :math:`g_j` is initialised to
    :math:`\|W_j\|_F + \epsilon`, so the effective weight equals the weight the layer
    had (e.g. its Xavier initialisation); see :class:`WeightNorm`.

    Args:
        module: an ``nn.Linear`` or ``nn.Conv{1,2,3}d`` (not already parametrized).
        gain: learn the per-output gain :math:`g`.
        bias: ``True`` adds a zero bias if the layer has none, ``False`` removes it,
            ``None`` keeps the layer's bias as it is.
        eps: the :math:`\epsilon` of the row norm.

    Raises:
        TypeError: for an unsupported module type.
        ValueError: if the weight is already parametrized.
    """
    if not isinstance(module, _WEIGHT_LAYERS):
        raise TypeError(f"weight_norm supports Linear and Conv1d/2d/3d, got {type(module)}")
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"the weight of {type(module).__name__} is already parametrized")
    if bias is not None:
        _set_bias(module, bias)
    parametrize.register_parametrization(module, "weight", WeightNorm(gain=gain, eps=eps))
    return module


# --------------------------------------------------------------------------- activations


class NPActivation(nn.Module):
    r"""Normalization-propagation ReLU: :math:`(\mathrm{ReLU}(o) - \sqrt{1/(2\pi)}) /
    \sqrt{\frac12 (1 - 1/\pi)}`.

    For :math:`o \sim N(0, 1)` the rectified Gaussian :math:`\mathrm{ReLU}(o)` has mean
    :math:`\sqrt{1/(2\pi)} \approx 0.39894` and variance :math:`\frac12(1 - 1/\pi)`
    (standard deviation :math:`\approx 0.58382`), so the output has zero mean and unit
    variance again (Arpit et al., 2016). It is not a normalizer: for input
    :math:`N(0, \sigma^2)` the output has variance :math:`\sigma^2` and mean
    :math:`0.683(\sigma - 1)`, so deviations from the assumptions are not corrected
    and compound with depth.
    """

    def forward(self, x: Tensor) -> Tensor:
        return (F.relu(x) - NP_MEAN) / NP_STD


class TReLU(nn.Module):
    r"""Translated ReLU: :math:`\mathrm{TReLU}_{a}(z)_j = \mathrm{ReLU}(z_j - a_j) + a_j`.

    One learned threshold :math:`a_j` per channel (dimension 1 of the input),
    initialised to 0 (Xiang & Li, 2017).

    Args:
        num_channels: number of channels :math:`C`; ``a`` has shape ``(C,)``.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.a = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        a = self.a.view(1, -1, *([1] * (x.dim() - 2)))
        return F.relu(x - a) + a

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}"


def make_activation(
    kind: str,
    channels: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """The activation that follows a layer of the given kind.

    ``none``/``bn``/``wn``: ``nn.ReLU()`` (not in place); ``np``: :class:`NPActivation`;
    ``trelu``: :class:`TReLU` with ``channels`` thresholds.
    """
    kind = check_norm_kind(kind)
    if kind == "np":
        return NPActivation()
    if kind == "trelu":
        return TReLU(channels, device=device, dtype=dtype)
    return nn.ReLU()


class ResidualAdd(nn.Module):
    r"""Residual sum :math:`o = s \, (f(x) + \mathrm{shortcut}(x))`.

    ``scale`` :math:`s = 1` is the ordinary ResNet sum (``none``, ``bn``, ``wn``,
    ``trelu``). Normalization propagation uses :math:`s = 1/\sqrt{2}`
    (:meth:`for_kind`). The paper says NP needed "a modification ... to work with
    residual connections to ensure that output of each layer stays normal" without
    giving it; this is ours. Under NP's assumptions both terms are zero-mean and
    unit-variance per unit: the branch ends in a unit-norm WN conv (:math:`g = 1`,
    :math:`b = 0` at init) applied to NP-normalized, uncorrelated activations; the
    shortcut is the block input (an NP activation output) or a unit-norm WN 1x1 conv
    of it. At initialisation the branch, a random-weight function of :math:`x`, is
    uncorrelated with the shortcut, so :math:`Var[f + s] = 2` and scaling by
    :math:`1/\sqrt{2}` restores unit variance before the next NP activation, whose
    derivation assumes :math:`N(0, 1)` input. It is the equal-weight case of
    :math:`\alpha f + \beta s` with :math:`\alpha^2 + \beta^2 = 1`, adds no
    parameters, and favours neither path.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)

    @classmethod
    def for_kind(cls, kind: str) -> ResidualAdd:
        """:math:`s = 1/\\sqrt{2}` for ``np``, :math:`s = 1` otherwise."""
        return cls(1.0 / math.sqrt(2.0) if check_norm_kind(kind) == "np" else 1.0)

    def forward(self, branch: Tensor, shortcut: Tensor) -> Tensor:
        out = branch + shortcut
        return out if self.scale == 1.0 else out * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


# --------------------------------------------------------------------------- single layers


def _out_features(layer: nn.Module) -> int:
    return layer.weight.shape[0]


def _normalize_weight(layer: nn.Module, kind: str, *, bias: bool, last: bool, eps: float) -> None:
    """Apply kind's weight treatment to one conv/linear layer, in place.

    ``none``: plain, bias as asked; ``wn``: WN with gain :math:`g = \\|W_j\\| + \\epsilon`
    (effective weight unchanged); ``np``: WN with :math:`g = 1` (the NP derivation
    assumes :math:`\\gamma = 1`, unit-norm filters); ``trelu``: WN without gain and
    bias, except the last layer, which gets both. ``bn`` is not handled here.
    """
    if kind == "none":
        _set_bias(layer, bias)
    elif kind == "wn":
        weight_norm(layer, gain=True, bias=bias, eps=eps)
    elif kind == "np":
        weight_norm(layer, gain=True, bias=bias, eps=eps)
        with torch.no_grad():
            weight_norm_parameters(layer).g.fill_(1.0)
    elif kind == "trelu":
        weight_norm(layer, gain=last, bias=last, eps=eps)
    else:  # pragma: no cover - guarded by callers
        raise AssertionError(kind)


def _layer_block(layer: nn.Module, norm: nn.Module | None, act: nn.Module | None) -> nn.Sequential:
    block = nn.Sequential()
    block.add_module("layer", layer)
    if norm is not None:
        block.add_module("bn", norm)
    if act is not None:
        block.add_module("act", act)
    return block


def _activation_for(kind: str, layer: nn.Module, activation: bool) -> nn.Module | None:
    if not activation:
        return None
    w = layer.weight
    return make_activation(kind, _out_features(layer), device=w.device, dtype=w.dtype)


def _check_layer(layer: nn.Module) -> None:
    if not isinstance(layer, _WEIGHT_LAYERS):
        raise TypeError(f"expected nn.Linear or nn.Conv1d/2d/3d, got {type(layer).__name__}")


def plain_layer(
    layer: nn.Module, *, activation: bool = True, last: bool = False, eps: float = DEFAULT_EPS
) -> nn.Sequential:
    r"""``none``: :math:`o_j = \mathrm{ReLU}(W_j * x + b_j)`, the layer unchanged."""
    _check_layer(layer)
    return _layer_block(layer, None, _activation_for("none", layer, activation))


def bn_layer(
    layer: nn.Module, *, activation: bool = True, last: bool = False, eps: float = 1e-5
) -> nn.Sequential:
    r"""``bn``: :math:`o_j = \mathrm{ReLU}(\gamma_j \frac{y_j - E_B[y_j]}{\sqrt{Var_B[y_j] +
    \epsilon}} + \beta_j)` with :math:`y = W * x`.

    Mean and (biased) variance are over the batch and, for a conv, over all pixels of
    channel :math:`j`. The layer's own bias is removed: the mean subtraction cancels
    it and :math:`\beta` takes its place. ``eps`` is BatchNorm's :math:`\epsilon`.
    """
    _check_layer(layer)
    _set_bias(layer, False)
    w = layer.weight
    bn = _BN_FOR_LAYER[type(layer)](_out_features(layer), eps=eps, device=w.device, dtype=w.dtype)
    return _layer_block(layer, bn, _activation_for("bn", layer, activation))


def wn_layer(
    layer: nn.Module, *, activation: bool = True, last: bool = False, eps: float = DEFAULT_EPS
) -> nn.Sequential:
    r"""``wn``: :math:`o_j = \mathrm{ReLU}(g_j \frac{W_j * x}{\|W_j\|_F + \epsilon} + b_j)`.

    :math:`g_j` starts at :math:`\|W_j\|_F + \epsilon`, so the effective weight is the
    layer's initial weight; :math:`b` is the layer's bias (kept as constructed).
    """
    _check_layer(layer)
    _normalize_weight(layer, "wn", bias=layer.bias is not None, last=last, eps=eps)
    return _layer_block(layer, None, _activation_for("wn", layer, activation))


def np_layer(
    layer: nn.Module, *, activation: bool = True, last: bool = False, eps: float = DEFAULT_EPS
) -> nn.Sequential:
    r"""``np``: :math:`o_j = \frac{1}{\sqrt{\frac12(1 - 1/\pi)}}\left[\mathrm{ReLU}\left(
    g_j \frac{W_j * x}{\|W_j\|_F + \epsilon} + b_j\right) - \sqrt{\frac{1}{2\pi}}\right]`.

    :math:`g_j` starts at 1 (the derivation assumes :math:`\gamma = 1, \beta = 0`):
    with unit-norm filters and zero-mean, unit-variance, uncorrelated input the
    pre-activation is :math:`N(0, 1)` per unit, and the NP ReLU keeps it so.
    """
    _check_layer(layer)
    _normalize_weight(layer, "np", bias=layer.bias is not None, last=last, eps=eps)
    return _layer_block(layer, None, _activation_for("np", layer, activation))


def trelu_layer(
    layer: nn.Module, *, activation: bool = True, last: bool = False, eps: float = DEFAULT_EPS
) -> nn.Sequential:
    r"""``trelu``: :math:`o_j = \mathrm{ReLU}\left(\frac{W_j * x}{\|W_j\|_F + \epsilon} - a_j
    \right) + a_j`.

    No gain and no bias, except on the network's last layer (``last=True``), which
    restores the representational power with :math:`o^{last}_j = g_j \frac{W_j *
    x}{\|W_j\|_F + \epsilon} + b_j` (the paper's :math:`\gamma_j x_j^{last} + \beta_j`).
    """
    _check_layer(layer)
    _normalize_weight(layer, "trelu", bias=last, last=last, eps=eps)
    return _layer_block(layer, None, _activation_for("trelu", layer, activation))


_LAYER_BUILDERS = {
    "none": plain_layer,
    "bn": bn_layer,
    "wn": wn_layer,
    "np": np_layer,
    "trelu": trelu_layer,
}


def norm_layer(
    kind: str,
    layer: nn.Module,
    *,
    activation: bool = True,
    last: bool = False,
    eps: float | None = None,
) -> nn.Sequential:
    """Wrap one conv / linear layer as the paper's normalized layer of ``kind``.

    Returns ``nn.Sequential`` with children ``layer`` (modified in place: WN
    parametrization, bias added or removed), ``bn`` (``bn`` only) and ``act``
    (unless ``activation=False``). See :func:`plain_layer`, :func:`bn_layer`,
    :func:`wn_layer`, :func:`np_layer`, :func:`trelu_layer` for the formulas.

    Args:
        kind: one of :data:`NORM_KINDS`.
        layer: a freshly built ``nn.Linear`` / ``nn.Conv2d`` (or Conv1d/3d).
        activation: append the kind's activation.
        last: the network's last layer (TReLU WN gives only it a gain and bias).
        eps: the kind's epsilon; ``None`` for the default (BatchNorm's 1e-5,
            :data:`DEFAULT_EPS` for the WN kinds).
    """
    builder = _LAYER_BUILDERS[check_norm_kind(kind)]
    kwargs = {} if eps is None else {"eps": eps}
    return builder(layer, activation=activation, last=last, **kwargs)


# --------------------------------------------------------------------------- ResNet blocks


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
_RESNET_CLASSES = {
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


def _convert_resnet_module(module: nn.Module, kind: str) -> None:
    """Swap a torchvision ResNet / block to its BN-free class with per-place activations.

    The shared ``relu`` module is replaced by ``act1``, ``act2``(, ``act3``), sized
    by the conv whose output each one follows (in a block the last one follows the
    residual sum, whose width is ``conv{2,3}``'s). BatchNorm children are removed
    afterwards by :func:`convert_norm`.
    """
    new_cls, conv_names, order = _RESNET_CLASSES[type(module)]
    del module.relu
    for i, conv_name in enumerate(conv_names, start=1):
        conv = getattr(module, conv_name)
        w = conv.weight
        act = make_activation(kind, _out_features(conv), device=w.device, dtype=w.dtype)
        module.add_module(f"act{i}", act)
    if new_cls is not NormResNet:
        module.residual = ResidualAdd.for_kind(kind)
    module.__class__ = new_cls
    _reorder_children(module, order)


# --------------------------------------------------------------------------- convert_norm


def _pair_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """Map each BatchNorm's qualified name to the conv / linear layer it normalizes.

    torchvision convention: the BatchNorm follows its layer in registration order
    (``conv1, bn1, conv2, bn2``, ``downsample = Sequential(conv, bn)``).

    Raises:
        ValueError: a BatchNorm with no preceding layer of matching width.
    """
    pairs: dict[str, nn.Module] = {}
    last: nn.Module | None = None
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHT_LAYERS):
            last = module
        elif isinstance(module, _BatchNorm):
            if last is None or _out_features(last) != module.num_features:
                raise ValueError(
                    f"BatchNorm {name!r} ({module.num_features} features) does not follow a "
                    "conv/linear layer of the same width in registration order"
                )
            pairs[name] = last
    return pairs


def _remove_child(model: nn.Module, qualified_name: str) -> None:
    """Delete a child module, or replace it by ``nn.Identity`` if the parent's forward
    may still call it (a parent that is neither ``nn.Sequential`` nor one of ours)."""
    parent_name, _, child = qualified_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential | NormResNet | NormBottleneck | NormBasicBlock):
        delattr(parent, child)
    else:
        setattr(parent, child, nn.Identity())


def _replace_relus(model: nn.Module, kind: str) -> None:
    """Replace each ``nn.ReLU`` by the kind's activation sized by the preceding layer."""
    last: nn.Module | None = None
    for name, module in list(model.named_modules()):
        if isinstance(module, _WEIGHT_LAYERS):
            last = module
        elif type(module) is nn.ReLU:
            if last is None:
                raise ValueError(f"ReLU {name!r} does not follow a conv/linear layer")
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            w = last.weight
            act = make_activation(kind, _out_features(last), device=w.device, dtype=w.dtype)
            setattr(parent, child, act)


def convert_norm(model: nn.Module, kind: str, *, eps: float = DEFAULT_EPS) -> nn.Module:
    r"""Convert a torchvision-style model (conv -> BatchNorm -> ReLU) to ``kind``.

    Returns a converted **deep copy**; the input is never modified. Weights are kept
    (call Xavier init before converting, as the model factories do).

    * ``bn``: an unchanged copy.
    * ``none`` / ``wn`` / ``np`` / ``trelu``: every BatchNorm is **removed** (not left
      as a dead module). The layer it followed gets a zero-initialised bias where the
      BatchNorm had :math:`\beta` (``affine=True``), except under TReLU WN, where only
      the last layer has :math:`g, b`. For ``wn`` every conv / linear is weight
      normalized with :math:`g_j = \|W_j\| + \epsilon` (effective weights unchanged);
      for ``np`` likewise but :math:`g_j = 1`; for ``trelu`` without gain and bias
      except on the last layer (the last conv / linear in registration order:
      ``fc`` for torchvision ResNets).
    * ``np`` / ``trelu``: every ``nn.ReLU`` becomes an :class:`NPActivation` /
      :class:`TReLU` (one module per place, sized by the preceding layer).

    torchvision ``ResNet``, ``Bottleneck`` and ``BasicBlock`` (which call ``self.bn*``
    and reuse one ``self.relu``) are given the BN-free subclasses
    :class:`NormResNet`, :class:`NormBottleneck`, :class:`NormBasicBlock`, with
    activations ``act1..act3`` and a :class:`ResidualAdd` (:math:`1/\sqrt2` for NP).
    In ``nn.Sequential`` containers the BatchNorm is deleted and the other children
    keep their names (``downsample.0`` stays, ``downsample.1`` disappears). In any
    other container the BatchNorm is replaced by ``nn.Identity``, since its
    ``forward`` may still call it; a ReLU *instance* reused at several places outside
    the torchvision ResNet classes is not detected.

    Args:
        model: the model to convert (not modified).
        kind: one of :data:`NORM_KINDS`.
        eps: the WN :math:`\epsilon`.

    Raises:
        ValueError: unknown ``kind``; a model that is already weight-normalized; a
            BatchNorm or ReLU not preceded by a layer of the right width.
    """
    kind = check_norm_kind(kind)
    model = copy.deepcopy(model)
    if kind == "bn":
        return model
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("convert_norm expects a model without parametrizations")

    bn_pairs = _pair_batchnorms(model)
    gets_beta = {id(layer) for name, layer in bn_pairs.items() if model.get_submodule(name).affine}
    layers = [m for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)]
    for layer in layers:
        bias = layer.bias is not None or id(layer) in gets_beta
        _normalize_weight(layer, kind, bias=bias, last=layer is layers[-1], eps=eps)

    for module in list(model.modules()):
        if type(module) in _RESNET_CLASSES:
            _convert_resnet_module(module, kind)
    for name in bn_pairs:
        _remove_child(model, name)
    if kind in ("np", "trelu"):
        _replace_relus(model, kind)
    return model
