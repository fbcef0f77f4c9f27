"""Compatibility alias: the paper's models now live in :mod:`stability.paper.models`."""

from stability.paper.models import *  # noqa: F403
from stability.paper.models import __all__  # noqa: F401
