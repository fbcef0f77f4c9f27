"""Compatibility alias: the paper's normalization now live in :mod:`stability.paper.normalization`."""

from stability.paper.normalization import *  # noqa: F403
from stability.paper.normalization import __all__  # noqa: F401
