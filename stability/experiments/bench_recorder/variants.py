"""The probes a Recorder overhead benchmark times: the Recorder's variants and the naive
``.item()`` baseline, each built fresh on a model by a factory.

A factory is called as ``factory(model, flush_every)`` and returns a probe with ``step()``
and ``close()`` (or None: no hooks). The variants:

    no hooks                      plain training step
    recorder                      Recorder(model): forward + gradient metrics every step
    recorder every 10             Recorder(model, every=10)
    recorder weights every 10     Recorder(model, weight_every=10)
    .item() baseline              the same metrics read with one .item() per value inside
                                  the hooks, weights every 100 steps (what common tools do)
    recorder (<label>)            with ``compare``: another copy of ``recorder.py``
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from stability import metrics as M
from stability.experiments.bench_recorder.config import (
    ITEM_BASELINE,
    NO_HOOKS,
    RECORDER,
    WEIGHT_EVERY,
    WEIGHTS_EVERY_10,
)
from stability.records.recorder import Recorder, select_modules


class ItemRecorder:
    """The naive baseline: the default Recorder's metrics, one ``.item()`` per value.

    Forward hooks read ``||o||`` and ``||x||`` with ``.item()`` (``output_rms`` and ``gain``
    follow on the host), a tensor hook reads ``grad_norm`` with ``.item()``, and every
    ``weight_every`` steps the weight norm and both coherences are read the same way. On a
    GPU each ``.item()`` waits for the device: a host sync per value.
    """

    def __init__(self, model: nn.Module, weight_every: int = WEIGHT_EVERY) -> None:
        self.weight_every = weight_every
        self.step_count = 0
        self.rows: list[tuple[int, str, str, float]] = []
        self._handles = [
            module.register_forward_hook(partial(self._forward_hook, name))
            for name, module in select_modules(model)
        ]

    def _forward_hook(self, name: str, module: nn.Module, args, output) -> None:
        step, out, x = self.step_count, output, args[0]
        norm = M.output_norm(out).item()
        self.rows.append((step, name, "output_norm", norm))
        self.rows.append((step, name, "output_rms", norm / math.sqrt(out.numel())))
        self.rows.append((step, name, "gain", norm / M.output_norm(x).item()))
        if out.requires_grad:
            out.register_hook(partial(self._grad_hook, step, name))
        if step % self.weight_every == 0:
            with torch.no_grad():
                coherence = M.row_coherence(module.weight, groups=getattr(module, "groups", 1))
                self.rows.append((step, name, "weight_norm", M.weight_norm(module.weight).item()))
            self.rows.append((step, name, "coherence", coherence[0].item()))
            self.rows.append((step, name, "coherence_mean", coherence[1].item()))

    def _grad_hook(self, step: int, name: str, grad: torch.Tensor) -> None:
        self.rows.append((step, name, "grad_norm", M.output_norm(grad).item()))

    def step(self) -> None:
        self.step_count += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


Probe = Recorder | ItemRecorder
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
        RECORDER: _recorder(),
        "recorder every 10": _recorder(every=10),
        WEIGHTS_EVERY_10: _recorder(weight_every=10),
        ITEM_BASELINE: lambda model, flush_every=100: ItemRecorder(model),
    }
    if compare is not None:
        label, recorder_class = compare
        factories[f"recorder ({label})"] = _recorder(recorder_class)
    return factories
