"""normstab: normalization-stability diagnostics for deep networks.

Importing this package has no side effects and imports nothing heavy: the public names
are loaded on first use (PEP 562), so command-line tools that only parse arguments stay
instant. The public entry points are :class:`stability.Recorder`, the live divergence
monitor :class:`stability.Monitor`, and the :mod:`stability.fitting` and
:mod:`stability.metrics` modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stability import fitting, metrics
    from stability.monitor import Monitor
    from stability.records.recorder import Recorder

__all__ = ["Monitor", "Recorder", "fitting", "metrics"]
__version__ = "0.1.0"

_LAZY = {
    "Monitor": ("stability.monitor", "Monitor"),
    "Recorder": ("stability.records.recorder", "Recorder"),
    "fitting": ("stability.fitting", None),
    "metrics": ("stability.metrics", None),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'stability' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
