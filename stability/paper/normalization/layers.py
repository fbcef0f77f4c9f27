r"""The paper's normalization building blocks: weight norm, the NP and TReLU activations.

Weight normalization is a parametrization (:class:`WeightNorm`, registered with
``torch.nn.utils.parametrize``): a normalized conv is still an ``nn.Conv2d`` and
``module.weight`` *is* the effective weight :math:`g_j W_j / (\|W_j\| + \epsilon)`,
which is what the Recorder reads for row coherence. The trainable tensors are the
direction :math:`v` (``parametrizations.weight.original1``, or ``.original`` when the
layer has no gain) and the gain :math:`g` (``parametrizations.weight.original0``, shape
``(out,)``); :func:`weight_norm_parameters` returns them by role. Parametrized modules
can be deep-copied and their ``state_dict`` saved, but ``torch.save`` of the whole
module object is refused by PyTorch; save state dicts.

Activations: :class:`NPActivation` (normalization propagation,
:math:`(\mathrm{ReLU}(o) - \sqrt{1/(2\pi)}) / \sqrt{\frac12(1 - 1/\pi)}`),
:class:`TReLU` (:math:`\mathrm{ReLU}(z_j - a_j) + a_j`) and the residual sum
:class:`ResidualAdd` (:math:`s\,(f(x) + \mathrm{shortcut}(x))`, :math:`s = 1/\sqrt2`
for NP). How they are put together per kind is :mod:`.convert`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from stability.paper.names import NORM_KINDS

__all__ = [
    "DEFAULT_EPS",
    "NORM_KINDS",
    "NP_MEAN",
    "NP_STD",
    "WEIGHT_LAYERS",
    "NPActivation",
    "ResidualAdd",
    "TReLU",
    "WeightNorm",
    "WeightNormParameters",
    "activation_after",
    "check_norm_kind",
    "make_activation",
    "set_bias",
    "weight_norm",
    "weight_norm_parameters",
]

DEFAULT_EPS: float = 1e-8
r"""The :math:`\epsilon` of :math:`\|W_j\|_F + \epsilon`: a guard against an all-zero row
only. For rows of norm ~1 it is below float32 resolution, so ``wn`` then equals
``torch.nn.utils.parametrizations.weight_norm`` to rounding."""

NP_MEAN: float = math.sqrt(1.0 / (2.0 * math.pi))
r""":math:`E[\mathrm{ReLU}(z)] = \sqrt{1/(2\pi)} \approx 0.39894` for :math:`z \sim N(0, 1)`."""

NP_STD: float = math.sqrt(0.5 * (1.0 - 1.0 / math.pi))
r""":math:`\mathrm{sd}[\mathrm{ReLU}(z)] = \sqrt{\frac12(1 - 1/\pi)} \approx 0.58382` for
:math:`z \sim N(0, 1)`."""

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers a normalization applies to: their weight has the outputs on dimension 0."""


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


def set_bias(layer: nn.Module, present: bool) -> None:
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
    if not isinstance(module, WEIGHT_LAYERS):
        raise TypeError(f"weight_norm supports Linear and Conv1d/2d/3d, got {type(module)}")
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"the weight of {type(module).__name__} is already parametrized")
    if bias is not None:
        set_bias(module, bias)
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


def activation_after(kind: str, layer: nn.Module) -> nn.Module:
    """:func:`make_activation` for the outputs of ``layer`` (a conv / linear): one
    threshold per output channel, on the layer's device and dtype."""
    w = layer.weight
    return make_activation(kind, w.shape[0], device=w.device, dtype=w.dtype)


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
