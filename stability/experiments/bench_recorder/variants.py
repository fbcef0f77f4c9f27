"""The probes a Recorder overhead benchmark times: the Recorder's variants and the peer
patterns of :mod:`.peers`, each built fresh on a model by a factory.

A factory is called as ``factory(model, flush_every)`` and returns a probe with ``step()``
and ``close()`` (or None: no hooks). The variants:

    no hooks                      plain training step
    empty hooks                   hooks that do nothing (:class:`.peers.EmptyHooks`)
    naive .item() hooks           the Recorder's metrics, one .item() per value
    buffered (stack per step)     ||o|| and ||g|| on the device, one stack per step
    mup coord check               mean |o| per layer on the device, one stack per step
    recorder                      Recorder(model): forward + gradient metrics every step
                                  (weight metrics every 100 steps)
    recorder every 10             Recorder(model, every=10)
    recorder weights every 10     Recorder(model, weight_every=10)
    recorder (<label>)            with ``compare``: another copy of ``recorder.py``
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from torch import nn

from stability.experiments.bench_recorder.config import (
    BUFFERED,
    COORD_CHECK,
    EMPTY_HOOKS,
    ITEM_BASELINE,
    NO_HOOKS,
    RECORDER,
    WEIGHTS_EVERY_10,
)
from stability.experiments.bench_recorder.peers import (
    BufferedHooks,
    CoordCheckHooks,
    EmptyHooks,
    HookedLayers,
    ItemHooks,
)
from stability.records.recorder import Recorder

Probe = Recorder | HookedLayers
ProbeFactory = Callable[[nn.Module, int], "Probe | None"]  # (model, flush_every) -> probe


def load_recorder_class(path: Path) -> type:
    """The ``Recorder`` class defined in another copy of ``recorder.py`` (e.g. a git revision)."""
    if not path.is_file():
        raise FileNotFoundError(f"--compare-with {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"_bench_recorder_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "Recorder", None), type):
        raise ValueError(f"--compare-with {path}: the file defines no Recorder class")
    return module.Recorder


def _recorder(recorder_class: type = Recorder, **kwargs) -> ProbeFactory:
    def attach(model: nn.Module, flush_every: int = 100) -> Probe:
        return recorder_class(model, flush_every=flush_every, **kwargs)

    return attach


def variant_factories(compare: tuple[str, type] | None = None) -> dict[str, ProbeFactory]:
    """Variant name -> attach a fresh probe to a model (``None``: no hooks)."""
    factories: dict[str, ProbeFactory] = {
        NO_HOOKS: lambda model, flush_every=100: None,
        EMPTY_HOOKS: lambda model, flush_every=100: EmptyHooks(model),
        ITEM_BASELINE: lambda model, flush_every=100: ItemHooks(model),
        BUFFERED: BufferedHooks,
        COORD_CHECK: CoordCheckHooks,
        RECORDER: _recorder(),
        "recorder every 10": _recorder(every=10),
        WEIGHTS_EVERY_10: _recorder(weight_every=10),
    }
    if compare is not None:
        label, recorder_class = compare
        factories[f"recorder ({label})"] = _recorder(recorder_class)
    return factories
