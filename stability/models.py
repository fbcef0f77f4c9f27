"""Compatibility alias of :mod:`stability.paper.models` (the paper's models)."""

from stability.paper.models import *  # noqa: F403
from stability.paper.models import __all__  # noqa: F401
