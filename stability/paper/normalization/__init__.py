r"""Normalization of Gitman & Ginsburg (2017), section 3: five kinds and :func:`convert_norm`.

The kinds are :data:`~stability.paper.names.NORM_KINDS` (``none``, ``bn``, ``wn``, ``np``,
``trelu``), each usable with ``nn.Conv2d`` and ``nn.Linear`` (any layer whose weight has
the outputs on dimension 0). The package has three modules:

* :mod:`.layers`: the building blocks and their formulas: the weight-norm
  parametrization :math:`w_j = g_j v_j / (\|v_j\|_F + \epsilon)`, the NP activation
  :math:`(\mathrm{ReLU}(o) - \sqrt{1/(2\pi)}) / \sqrt{\frac12(1 - 1/\pi)}`, the translated
  ReLU :math:`\mathrm{ReLU}(z_j - a_j) + a_j` and the residual sum
  :math:`s\,(f(x) + \mathrm{shortcut}(x))`.
* :mod:`.convert`: one normalized layer of a kind (:func:`norm_layer`) and the conversion
  of a whole torchvision-style model (:func:`convert_norm`).
* :mod:`.resnet`: the BN-free subclasses of torchvision's ResNet classes that
  :func:`convert_norm` gives a ResNet.

Every public name of the three is importable from here.
"""

from stability.lazy import lazy_exports
from stability.paper.normalization.convert import (
    bn_layer,
    convert_norm,
    norm_layer,
    np_layer,
    plain_layer,
    trelu_layer,
    wn_layer,
)
from stability.paper.normalization.layers import (
    DEFAULT_EPS,
    NORM_KINDS,
    NP_MEAN,
    NP_STD,
    WEIGHT_LAYERS,
    NPActivation,
    ResidualAdd,
    TReLU,
    WeightNorm,
    WeightNormParameters,
    activation_after,
    check_norm_kind,
    make_activation,
    set_bias,
    weight_norm,
    weight_norm_parameters,
)

# The BN-free ResNet classes load on first use: they import torchvision (seconds).
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        name: "stability.paper.normalization.resnet"
        for name in ("NormBasicBlock", "NormBottleneck", "NormResNet")
    },
)


__all__ = [
    "DEFAULT_EPS",
    "NORM_KINDS",
    "NP_MEAN",
    "NP_STD",
    "WEIGHT_LAYERS",
    "NPActivation",
    "NormBasicBlock",
    "NormBottleneck",
    "NormResNet",
    "ResidualAdd",
    "TReLU",
    "WeightNorm",
    "WeightNormParameters",
    "activation_after",
    "bn_layer",
    "check_norm_kind",
    "convert_norm",
    "make_activation",
    "norm_layer",
    "np_layer",
    "plain_layer",
    "set_bias",
    "trelu_layer",
    "weight_norm",
    "weight_norm_parameters",
    "wn_layer",
]
