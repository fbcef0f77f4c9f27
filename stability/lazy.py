"""Lazy package exports (PEP 562): a name is imported from its module on first use.

A package whose ``__init__`` re-exports names of heavy submodules (torch, pandas, scipy)
would make every import of it, and every ``--help`` of a script that parses with one of its
light modules, pay for all of them. ``__getattr__, __dir__ = lazy_exports(__name__,
{"name": "package.module", ...})`` defers each import to the first use of the name.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps an exported name to the
    module that defines it (the name itself is the attribute; a module maps to itself when
    the name is the module's last component and the module has no such attribute)."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(names[name])
        value = getattr(module, name, module)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
