r"""The paper's normalized layers of each kind, and :func:`convert_norm` for whole models.

For output channel (or unit) :math:`j`, with :math:`W_j * x` the convolution (or dot
product) of row :math:`j` with the input, the per-kind builders (:func:`norm_layer`)
compute:

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

:func:`convert_norm` applies the same treatment to a torchvision-style model (conv ->
BatchNorm -> ReLU), giving torchvision's ResNet classes BN-free subclasses
(:class:`NormResNet`, :class:`NormBottleneck`, :class:`NormBasicBlock`).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from stability.paper.normalization.layers import (
    DEFAULT_EPS,
    WEIGHT_LAYERS,
    activation_after,
    check_norm_kind,
    set_bias,
    weight_norm,
    weight_norm_parameters,
)

__all__ = [
    "bn_layer",
    "convert_norm",
    "norm_layer",
    "np_layer",
    "plain_layer",
    "trelu_layer",
    "wn_layer",
]

_BN_FOR_LAYER = {
    nn.Linear: nn.BatchNorm1d,
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}


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
        set_bias(layer, bias)
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
    return activation_after(kind, layer) if activation else None


def _check_layer(layer: nn.Module) -> None:
    if not isinstance(layer, WEIGHT_LAYERS):
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
    set_bias(layer, False)
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


# --------------------------------------------------------------------------- convert_norm


def _after_weight_layers(
    model: nn.Module, wanted: Callable[[nn.Module], bool]
) -> Iterator[tuple[str, nn.Module, nn.Module | None]]:
    """Yield ``(name, module, layer)`` for each ``wanted`` module of ``model``, with
    ``layer`` the last conv / linear before it in registration order (``None`` if none).

    The modules are listed before the first yield, so the caller may replace them.
    """
    layer: nn.Module | None = None
    for name, module in list(model.named_modules()):
        if isinstance(module, WEIGHT_LAYERS):
            layer = module
        elif wanted(module):
            yield name, module, layer


def _pair_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """Map each BatchNorm's qualified name to the conv / linear layer it normalizes.

    torchvision convention: the BatchNorm follows its layer in registration order
    (``conv1, bn1, conv2, bn2``, ``downsample = Sequential(conv, bn)``).

    Raises:
        ValueError: a BatchNorm with no preceding layer of matching width.
    """
    pairs: dict[str, nn.Module] = {}
    for name, bn, layer in _after_weight_layers(model, lambda m: isinstance(m, _BatchNorm)):
        if layer is None or _out_features(layer) != bn.num_features:
            raise ValueError(
                f"BatchNorm {name!r} ({bn.num_features} features) does not follow a "
                "conv/linear layer of the same width in registration order"
            )
        pairs[name] = layer
    return pairs


def _parent_of(model: nn.Module, qualified_name: str) -> tuple[nn.Module, str]:
    """The module holding ``qualified_name`` and the child's own name in it."""
    parent_name, _, child = qualified_name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _is_norm_resnet_part(module: nn.Module) -> bool:
    """Whether ``module`` is one of our BN-free ResNet classes (they exist only once
    :mod:`.resnet`, which imports torchvision, was imported: torchvision loads lazily)."""
    resnet = sys.modules.get("stability.paper.normalization.resnet")
    return resnet is not None and isinstance(module, resnet.NORM_RESNET_CLASSES)


def _remove_child(model: nn.Module, qualified_name: str) -> None:
    """Delete a child module, or replace it by ``nn.Identity`` if the parent's forward
    may still call it (a parent that is neither ``nn.Sequential`` nor one of ours)."""
    parent, child = _parent_of(model, qualified_name)
    if isinstance(parent, nn.Sequential) or _is_norm_resnet_part(parent):
        delattr(parent, child)
    else:
        setattr(parent, child, nn.Identity())


def _replace_relus(model: nn.Module, kind: str) -> None:
    """Replace each ``nn.ReLU`` by the kind's activation sized by the preceding layer."""
    for name, _, layer in _after_weight_layers(model, lambda m: type(m) is nn.ReLU):
        if layer is None:
            raise ValueError(f"ReLU {name!r} does not follow a conv/linear layer")
        parent, child = _parent_of(model, name)
        setattr(parent, child, activation_after(kind, layer))


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
    layers = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    for layer in layers:
        bias = layer.bias is not None or id(layer) in gets_beta
        _normalize_weight(layer, kind, bias=bias, last=layer is layers[-1], eps=eps)

    if "torchvision.models.resnet" in sys.modules:  # else no torchvision ResNet can be here
        from stability.paper.normalization.resnet import RESNET_CLASSES, convert_resnet_module

        for module in list(model.modules()):
            if type(module) in RESNET_CLASSES:
                convert_resnet_module(module, kind)
    for name in bn_pairs:
        _remove_child(model, name)
    if kind in ("np", "trelu"):
        _replace_relus(model, kind)
    return model
