"""Compatibility alias of :mod:`stability.paper.normalization` (the paper's normalization)."""

from stability.paper.normalization import *  # noqa: F403
from stability.paper.normalization import __all__  # noqa: F401
