"""normstab: normalization-stability diagnostics for deep networks.

Importing this package has no side effects and imports nothing heavy: the public names
are loaded on first use (PEP 562), so command-line tools that only parse arguments stay
instant. The public entry points are :class:`stability.Recorder`, the live divergence
monitor :class:`stability.Monitor`, and the :mod:`stability.fitting` and
:mod:`stability.metrics` modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stability.lazy import lazy_exports

if TYPE_CHECKING:
    from stability import fitting, metrics
    from stability.monitor import Monitor
    from stability.records.recorder import Recorder

__all__ = ["Monitor", "Recorder", "fitting", "metrics"]
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Monitor": "stability.monitor",
        "Recorder": "stability.records.recorder",
        "fitting": "stability.fitting",
        "metrics": "stability.metrics",
    },
)
