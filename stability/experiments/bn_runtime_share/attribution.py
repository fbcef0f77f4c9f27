"""Which operator category each profiled microsecond of a training step belongs to.

Attribution (no double counting: every profiled microsecond is some event's *self* time,
and each event gets exactly one category):

1. Forward. Before profiling, the forward of every leaf module is wrapped in a
   ``record_function`` label naming its category: convolutions (``_ConvNd``) ->
   convolution, ``_BatchNorm`` -> batch norm, the ``WeightNorm`` parametrization ->
   weight norm, ``ReLU`` -> relu, max/average pooling -> pooling, ``Linear`` -> fc,
   ``ResidualAdd`` -> add. An op takes the category of its innermost label, so the WN
   parametrization that a convolution evaluates when it reads its weight is weight norm,
   not convolution. ``Optimizer.step`` / ``Optimizer.zero_grad`` (torch.optim's own
   labels) -> optimizer.
2. Backward. Each autograd node (``autograd::engine::evaluate_function: XBackward0``,
   with everything it runs) takes the category of the forward op that created it, found
   by the profiler's sequence number; so ``MulBackward0`` of the WN parametrization is
   weight norm, and ``AddBackward0`` of a residual sum is add.
3. Ops outside every label (torchvision's ``out += identity``, the loss, ``flatten``) and
   nodes without a forward op (``AccumulateGrad``) fall back to name rules on the
   lower-cased name, first match wins: ``conv`` -> convolution, ``batch_norm`` -> batch
   norm, ``relu``/``threshold`` -> relu, ``pool`` -> pooling, ``addmm``/``linear`` -> fc,
   ``add`` -> add; anything else -> other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pandas as pd
from torch import nn
from torch.autograd.profiler import record_function
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from stability.experiments.bn_runtime_share.config import CATEGORIES
from stability.paper.normalization import ResidualAdd, WeightNorm

LABEL = "normstab::"  # prefix of the record_function labels put on module forwards
MODULE_CATEGORIES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (WeightNorm, "weight norm"),
    (_ConvNd, "convolution"),
    (_BatchNorm, "batch norm"),
    (nn.ReLU, "relu"),
    ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), "pooling"),
    (nn.Linear, "fc"),
    (ResidualAdd, "add"),
)
NAME_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("conv",), "convolution"),
    (("batch_norm", "batchnorm"), "batch norm"),
    (("relu", "threshold"), "relu"),
    (("pool",), "pooling"),
    (("addmm", "linear"), "fc"),
    (("add",), "add"),
)
BACKWARD = "autograd::engine::evaluate_function: "
OPTIMIZER = "Optimizer."  # torch.optim labels: Optimizer.step#SGD.step, Optimizer.zero_grad#...


def module_category(module: nn.Module) -> str | None:
    """The category of a module's own forward, or ``None`` (containers, unknown layers)."""
    for kind, category in MODULE_CATEGORIES:
        if isinstance(module, kind):
            return category
    return None


def _labelled(forward, label: str):
    def run(*args, **kwargs):
        with record_function(label):
            return forward(*args, **kwargs)

    return run


def label_modules(model: nn.Module) -> int:
    """Wrap each categorised module's forward in a ``record_function`` label; returns count."""
    count = 0
    for module in model.modules():
        category = module_category(module)
        if category is not None:
            module.forward = _labelled(module.forward, LABEL + category)
            count += 1
    return count


def name_category(name: str) -> str:
    """Fallback: the category of an op or autograd node from its name (NAME_RULES)."""
    lowered = name.lower()
    for needles, category in NAME_RULES:
        if any(needle in lowered for needle in needles):
            return category
    return "other"


def _label_category(name: str) -> str | None:
    if name.startswith(LABEL):
        return name[len(LABEL) :]
    if name.startswith(OPTIMIZER):
        return "optimizer"
    return None


def _walk(event, category: str) -> Iterator[tuple[object, str]]:
    """``(event, category)`` for an event and its descendants; an inner label wins."""
    category = _label_category(event.name) or category
    yield event, category
    for child in event.cpu_children:
        yield from _walk(child, category)


def attribute(events) -> list[tuple[object, str]]:
    """Every CPU event with its category (forward by labels, backward by sequence number)."""
    roots = [e for e in events if e.cpu_parent is None and e.device_type.name == "CPU"]
    backward = [e for e in roots if e.name.startswith(BACKWARD)]
    forward = [e for e in roots if not e.name.startswith(BACKWARD)]
    pairs: list[tuple[object, str]] = []
    created_by: dict[int, str] = {}  # forward sequence number -> category
    for root in forward:
        fallback = _label_category(root.name) or name_category(root.name)
        for event, category in _walk(root, fallback):
            pairs.append((event, category))
            if event.sequence_nr >= 0:
                created_by.setdefault(event.sequence_nr, category)
    for root in backward:
        node = root.name[len(BACKWARD) :]
        category = created_by.get(root.sequence_nr) or name_category(node)
        pairs.extend(_walk(root, category))
    return pairs


def category_times(pairs, steps: int, device_time: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per category and per op name: self time in ms per step (device or CPU time)."""
    by_category: dict[str, float] = defaultdict(float)
    by_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for event, category in pairs:
        us = event.self_device_time_total if device_time else event.self_cpu_time_total
        by_category[category] += us
        entry = by_op[(category, event.name)]
        entry[0] += us
        entry[1] += 1
    total = sum(by_category.values()) or 1.0
    categories = pd.DataFrame(
        {
            "category": list(CATEGORIES),
            "ms_per_step": [by_category.get(c, 0.0) / 1e3 / steps for c in CATEGORIES],
            "share": [by_category.get(c, 0.0) / total for c in CATEGORIES],
        }
    )
    ops = pd.DataFrame(
        [(c, name, us / 1e3 / steps, n / steps) for (c, name), (us, n) in by_op.items()],
        columns=["category", "name", "self_ms_per_step", "calls_per_step"],
    ).sort_values("self_ms_per_step", ascending=False, ignore_index=True)
    return categories, ops
