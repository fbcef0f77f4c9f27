"""Which modules a :class:`~stability.records.recorder.Recorder` records.

The default selection is every module owning a matrix ``weight`` (``ndim >= 2``, or
``>= 3`` with a run dimension); glob patterns filter those candidates by qualified name, a
callable ``(name, module) -> bool`` chooses among *all* named modules. Names are those of
the unwrapped model (DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.`` stripped).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from stability.records.schema import ROOT_NAME
from stability.records.weights import effective_weight

Selector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def owns_matrix_weight(module: nn.Module, run_dim: int | None = None) -> bool:
    """Default selection: the module has a ``weight`` tensor with ``ndim >= 2``.

    With a run dimension (stacked independent runs) the weight needs ``ndim >= 3``.
    """
    if _unrecordable(module) is not None:
        return False
    weight = effective_weight(module)
    return isinstance(weight, torch.Tensor) and weight.ndim >= (2 if run_dim is None else 3)


def _unrecordable(module: nn.Module) -> str | None:
    """Why ``module`` cannot be recorded (a lazy module not yet materialised, complex
    parameters), or ``None``. Read off the raw parameters: no parametrization runs."""
    own = list(module.parameters(recurse=False))
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in own):
        return "a lazy module not yet materialised: attach after its first forward"
    if any(p.is_complex() for p in own):
        return "complex-valued"
    return None


def select_modules(
    model: nn.Module,
    include: Selector = None,
    exclude: Selector = None,
    run_dim: int | None = None,
):
    """Return ``[(name, module)]`` chosen by ``include`` / ``exclude``.

    Candidates are the modules owning a matrix ``weight`` (:func:`owns_matrix_weight`)
    and attention modules (:func:`is_attention`). Glob patterns (one or several) filter those
    candidates by qualified name. A callable ``(name, module) -> bool`` is applied to *every*
    named module instead, so it can select modules without weights (activations, residual
    blocks). An include glob that matches no candidate raises ``ValueError`` listing the
    candidates.
    """
    named = [(name or ROOT_NAME, m) for name, m in model.named_modules()]
    skipped = {name: why for name, m in named if (why := _unrecordable(m)) is not None}
    candidates = [
        (name, m)
        for name, m in named
        if owns_matrix_weight(m, run_dim) or (is_attention(m) and run_dim is None)
    ]
    chosen = _apply(include, named, candidates, check=True) if include is not None else candidates
    if exclude is not None:
        dropped = {name for name, _ in _apply(exclude, named, chosen, check=False)}
        chosen = [(name, m) for name, m in chosen if name not in dropped]
    if skipped:
        listed = "; ".join(
            f"{name} ({type(m).__name__}, {skipped[name]})"
            for name, m in named
            if name in skipped and _wanted(name, m, include, exclude)
        )
        if listed:
            warnings.warn(f"Recorder skips layers it cannot record: {listed}", stacklevel=3)
    return [(name, m) for name, m in chosen if name not in skipped]


def _wanted(name: str, module: nn.Module, include: Selector, exclude: Selector) -> bool:
    """Whether a module that cannot be recorded was asked for (to name it in the warning):
    by the default selection (it owns a ``weight``), a matching include pattern or callable,
    and not excluded. A lazy module's weight has no shape yet, so ``weight`` presence counts."""

    def hit(selector) -> bool:
        if callable(selector):
            return bool(selector(name, module))
        patterns = [selector] if isinstance(selector, str) else list(selector)
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    owns_weight = "weight" in module._parameters or parametrize.is_parametrized(module, "weight")
    asked = hit(include) if include is not None else owns_weight
    return asked and not (exclude is not None and hit(exclude))


def _apply(selector, named, candidates, check: bool):
    """The ``(name, module)`` pairs ``selector`` picks: a callable over all ``named``
    modules, glob pattern(s) over ``candidates`` (``check``: a pattern matching nothing
    raises ``ValueError`` listing the candidates)."""
    if callable(selector):
        return [(name, m) for name, m in named if selector(name, m)]
    if not isinstance(selector, str | list | tuple | set | frozenset):
        raise TypeError(f"include/exclude must be glob string(s) or a callable, got {selector!r}")
    patterns = [selector] if isinstance(selector, str) else list(selector)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"include/exclude must be glob string(s) or a callable, got {selector!r}")
    chosen = []
    for pattern in patterns:
        hits = [(n, m) for n, m in candidates if fnmatch.fnmatchcase(n, pattern)]
        if check and not hits:
            names = ", ".join(n for n, _ in candidates[:40]) or "(none)"
            more = f" ... ({len(candidates)} in all)" if len(candidates) > 40 else ""
            raise ValueError(
                f"include pattern {pattern!r} matches no recordable layer; available: {names}{more}"
            )
        chosen.extend(hit for hit in hits if hit[0] not in {n for n, _ in chosen})
    return chosen


def is_attention(module: nn.Module) -> bool:
    """``nn.MultiheadAttention`` (not yet materialised or complex ones are skipped): a
    default candidate, recorded as one layer with its projections' weight metrics."""
    return isinstance(module, nn.MultiheadAttention) and _unrecordable(module) is None


def hook_modules(model: nn.Module, layers) -> list[nn.Module]:
    """The module whose forward hook records each of ``layers``: the layer itself, except
    an attention module's ``out_proj``, which ``F.multi_head_attention_forward`` applies
    without calling it: its (weight-only) record hangs on the attention module."""
    owner = {id(m.out_proj): m for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return [owner.get(id(module), module) for _, module in layers]
