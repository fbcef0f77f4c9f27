"""The weight metrics of one recorded layer: its effective weight, read as output-unit rows.

``weight_norm = ||W||_F``; ``coherence`` / ``coherence_mean`` are the max / mean absolute
cosine between distinct nonzero rows of ``W`` and ``zero_rows`` counts the rows left out
(:func:`stability.metrics.coherence`). The rows are always the layer's *output units*,
whatever the storage layout:

=======================================  ========================  ========================
layer                                    stored as                 output-unit rows
=======================================  ========================  ========================
``nn.Linear``, ``Bilinear``, ``ConvNd``  ``(out, ...)``            as stored
``nn.ConvTransposeNd``                   ``(in, out/groups, *k)``  ``(out, in/groups * k)``
``transformers`` ``Conv1D`` (GPT-2)      ``(in, out)``             the transpose
``nn.Embedding``, ``EmbeddingBag``       ``(tokens, dim)``         the transpose (``dim``)
``nn.MultiheadAttention``                ``in_proj (3E, E)``       q, k, v rows, separately
=======================================  ========================  ========================

An embedding is the linear map ``one_hot(token) -> vector``: its output units are the
``dim`` features, each a row over the vocabulary (a padding token is a zero *column*; a
tied decoder ``nn.Linear`` has one row per token, and its padding row is a zero row). The
query, key and value projections of attention are three linear maps: cosines are taken
within each, never between a query row and a key row.

A peft LoRA layer's effective weight is its base layer's plus the active adapters' deltas
``scale B A`` (peft's own ``get_delta_weight``), read as rows in the base layer's layout.

The effective weight is what the layer's forward used. A weight under a
``torch.nn.utils.parametrize`` parametrization (weight norm, spectral norm, ...) is taken
from that forward, captured by a hook on the parametrization, so reading it costs no
second parametrization forward and advances no state (spectral norm's power iteration);
where no forward captured it (at attach, or a weight read outside a forward), it is the
cached tensor inside ``parametrize.cached()``, else the parametrization runs once in eval
mode on copies of its buffers (the originals untouched: spectral norm returns ``W / sigma``
with the ``sigma`` of its last training forward). Metrics are computed outside any
autocast region, in at least float32.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn.utils import parametrize

from stability import metrics as M


def weight_parametrization(module: nn.Module, name: str = "weight") -> nn.Module | None:
    """The ``ParametrizationList`` computing ``module.<name>``, or ``None``."""
    if not parametrize.is_parametrized(module, name):
        return None
    return module.parametrizations[name]


@contextmanager
def _frozen(parametrizations: nn.Module):
    """Eval mode and copies of the buffers for every module under ``parametrizations``.

    Whatever the parametrization updates in place (spectral norm's ``_u`` / ``_v``) lands
    in the copies; afterwards the original buffer objects are put back, their values and
    version counters untouched (restoring values with ``copy_`` would bump the version of
    a buffer autograd may have saved), and each module's training flag restored. In eval
    mode spectral norm skips its power iteration and divides by the very ``sigma`` the
    last training forward used.
    """
    modules = list(parametrizations.modules())
    modes = [m.training for m in modules]
    originals = [dict(m._buffers) for m in modules]
    try:
        for module, buffers in zip(modules, originals, strict=True):
            module.training = False
            for key, buffer in buffers.items():
                if buffer is not None:
                    module._buffers[key] = buffer.clone()
        yield
    finally:
        for module, mode, buffers in zip(modules, modes, originals, strict=True):
            module.training = mode
            module._buffers.update(buffers)


def _lora_layer(module: nn.Module) -> bool:
    """A peft LoRA adapter layer (checked without importing peft: only a loaded peft can
    have made one)."""
    lora = sys.modules.get("peft.tuners.lora")
    layer = getattr(lora, "LoraLayer", None)
    return layer is not None and isinstance(module, layer)


def _layout_module(module: nn.Module) -> nn.Module:
    """The module whose type says how the weight is stored: a LoRA layer's base layer."""
    return module.get_base_layer() if _lora_layer(module) else module


def _adapted_weight(layer: nn.Module) -> torch.Tensor | None:
    """A peft LoRA layer's effective weight ``W + sum_a scale_a B_a A_a`` over its active,
    unmerged adapters (peft's own ``get_delta_weight``, in the base weight's layout); the
    base weight alone when the adapters are merged into it or disabled. DoRA adapters,
    which rescale ``W + B A`` row by row, are not added (the base weight is returned)."""
    weight = effective_weight(layer.get_base_layer())
    if weight is None or layer.merged or layer.disable_adapters:
        return weight
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    if any(getattr(layer, "use_dora", {}).get(a, False) for a in adapters):
        return weight
    with torch.no_grad():
        for adapter in adapters:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return weight


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """``module.<name>`` as the forward sees it, without changing any state.

    A parametrized weight comes from the cache of ``parametrize.cached()`` when the
    forward filled it, else it is computed once under :func:`torch.no_grad` and
    :func:`_frozen` (eval mode, copied buffers). ``None`` without such a tensor.
    """
    if name == "weight" and _lora_layer(module):
        return _adapted_weight(module)
    plist = weight_parametrization(module, name)
    if plist is None:
        weight = getattr(module, name, None)  # a ParametrizationList's container has modules
        return weight if isinstance(weight, torch.Tensor) else None
    if parametrize._cache_enabled:
        cached = parametrize._cache.get((id(module), name))
        if cached is not None:
            return cached.detach()
    with torch.no_grad(), _frozen(plist):
        return plist().detach()  # not module.<name>: that would fill an active cache


def _hf_conv1d_type() -> type | None:
    """transformers' ``Conv1D`` class if transformers is loaded (no module can be one
    otherwise, so transformers is never imported here)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(utils, "Conv1D", None)


def output_unit_weights(
    module: nn.Module, weight: torch.Tensor, run_dim: int | None = None
) -> tuple[list[torch.Tensor], int]:
    """The layer's weight matrices with output units along dimension 0, and its ``groups``.

    ``weight``: the module's effective weight (ignored for attention, which has several).
    With ``run_dim`` (stacked runs) the weight is ``(runs, out, ...)`` and used as stored.
    """
    if isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:
            return list(module.in_proj_weight.chunk(3)), 1
        return [module.q_proj_weight, module.k_proj_weight, module.v_proj_weight], 1
    module = _layout_module(module)
    groups = module.groups if isinstance(module, nn.modules.conv._ConvNd) else 1
    if run_dim is not None:
        return [weight], groups
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # (in, out/g, *k) -> (g, in/g, out/g, *k) -> (g, out/g, in/g, *k) -> (out, in/g, *k)
        fan_in, out_per_group, *kernel = weight.shape
        blocks = weight.reshape(groups, fan_in // groups, out_per_group, *kernel)
        rows = blocks.transpose(1, 2).reshape(groups * out_per_group, fan_in // groups, *kernel)
        return [rows], groups
    conv1d = _hf_conv1d_type()
    if isinstance(module, nn.Embedding | nn.EmbeddingBag) or (
        conv1d is not None and isinstance(module, conv1d)
    ):
        return [weight.t()], 1
    return [weight], groups


def has_weight_metrics(
    module: nn.Module, run_dim: int | None = None, weight: torch.Tensor | None = None
) -> bool:
    """Whether the layer has weight metrics: a real matrix ``weight`` (``ndim >= 3`` with a
    run dimension), or attention's projection weights. ``weight``: its effective weight,
    if already read."""
    if isinstance(module, nn.MultiheadAttention):
        return run_dim is None
    weight = effective_weight(module) if weight is None else weight
    least = 2 if run_dim is None else 3
    return isinstance(weight, torch.Tensor) and weight.ndim >= least and not weight.is_complex()


def _no_autocast(device: torch.device):
    """A context that turns autocast off on ``device`` (a no-op where autocast is unknown)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def weight_metric_values(
    module: nn.Module,
    wanted: Sequence[str],
    run_dim: int | None = None,
    weight: torch.Tensor | None = None,
    shared: dict | None = None,
) -> dict[str, torch.Tensor]:
    """``{metric: 0-d (or per-run) tensor}`` for the weight metrics in ``wanted``.

    ``weight``: the effective weight the forward just computed, if captured (else it is
    read by :func:`effective_weight`). ``{}`` for a layer without weight metrics
    (:func:`has_weight_metrics`: an activation chosen by a callable ``include``).
    Coherence is :func:`stability.metrics.bounded_coherence`: exact up to
    :data:`~stability.metrics.COHERENCE_ROW_LIMIT` rows, a fixed-sample estimate above.

    ``shared``: a dict that lives for one weight step (the Recorder's). A tied weight, the
    same tensor read as the same output-unit rows by two layers (``b.weight = a.weight``),
    is then computed once and the second layer records the same values. An embedding and
    its tied decoder (GPT-2's ``wte`` / ``lm_head``) read one matrix with different output
    units (``dim`` feature rows vs one row per token): two different weights here, each
    computed once.
    """
    if not isinstance(module, nn.MultiheadAttention):
        weight = effective_weight(module) if weight is None else weight
    if not has_weight_metrics(module, run_dim, weight):
        return {}
    matrices, groups = output_unit_weights(module, weight, run_dim)
    matrices = [m.detach() for m in matrices]
    key = _tie_key(matrices, groups, run_dim, wanted)
    if shared is not None and key in shared:
        return shared[key][1]
    values = {}
    with torch.no_grad(), _no_autocast(matrices[0].device):
        norms = [M.weight_norm(m, run_dim) for m in matrices]
        values["weight_norm"] = norms[0] if len(norms) == 1 else torch.stack(norms).norm(dim=0)
        if {"coherence", "coherence_mean", "zero_rows"} & set(wanted):
            found = M.bounded_coherence(matrices, run_dim=run_dim, groups=groups)
            values["coherence"], values["coherence_mean"] = found.max, found.mean
            values["zero_rows"] = found.zero_rows
    values = {metric: values[metric] for metric in wanted}
    if shared is not None:  # the matrices stay referenced: their memory cannot be reused
        shared[key] = (matrices, values)
    return values


def _tie_key(matrices: Sequence[torch.Tensor], groups: int, run_dim, wanted) -> tuple:
    """What makes two layers' weight metrics equal: the same memory read as the same
    rows (address, shape, strides, dtype, version), the same groups, run_dim and metrics."""
    views = tuple(
        (
            m.data_ptr(),
            m.device,
            m.dtype,
            tuple(m.shape),
            m.stride(),
            -1 if m.is_inference() else m._version,
        )
        for m in matrices
    )
    return views, groups, run_dim, tuple(wanted)
