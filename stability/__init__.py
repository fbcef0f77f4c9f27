"""normstab: normalization-stability diagnostics for deep networks.

Importing this package has no side effects. The public entry points are
:class:`stability.Recorder` and the :mod:`stability.fitting` module.
"""

from stability import fitting, metrics
from stability.records.recorder import Recorder

__all__ = ["Recorder", "fitting", "metrics"]
__version__ = "0.1.0"
