"""The peer hook patterns the Recorder is timed against, each written from what it does.

Every probe hooks the layers the default Recorder records (:func:`select_modules`) and has
``step()`` and ``close()``:

    empty hooks             a forward hook that registers a tensor hook on the output, and
                            a tensor hook that does nothing: the floor of merely hooking
    naive .item() hooks     the default Recorder's metrics, each read with ``.item()``
                            inside the hook (``||o||``, ``||x||``, ``grad_norm``; weight
                            norm and coherences every 100 steps): one host sync per value
    buffered                ``||o||`` in the forward hook and ``||g||`` in the tensor hook
                            kept on the device as 0-d tensors, one ``torch.stack`` per step,
                            one concatenation and host copy per flush
    mup coord check         mup's coordinate check: per layer ``mean |o|`` of the output
                            (the size of a coordinate), kept on the device, one stack per
                            step, one copy per flush
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from stability import metrics as M
from stability.experiments.bench_recorder.config import WEIGHT_EVERY
from stability.records.recorder import select_modules
from stability.records.weights import weight_metric_values


class HookedLayers:
    """Forward hooks on the selected layers of ``model``; ``step()`` counts steps.

    Subclasses define ``_forward_hook(name, module, args, output)``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.step_count = 0
        self._handles = [
            module.register_forward_hook(partial(self._forward_hook, name))
            for name, module in select_modules(model)
        ]

    def _forward_hook(self, name: str, module: nn.Module, args, output) -> None:
        raise NotImplementedError

    def step(self) -> None:
        self.step_count += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _ignore_gradient(grad: torch.Tensor) -> None:
    return None


class EmptyHooks(HookedLayers):
    """A forward hook that registers a tensor hook that does nothing."""

    def _forward_hook(self, name: str, module: nn.Module, args, output) -> None:
        if output.requires_grad:
            output.register_hook(_ignore_gradient)


class ItemHooks(HookedLayers):
    """The default Recorder's metrics, one ``.item()`` per value (what common tools do).

    ``rows`` holds ``(step, layer, metric, value)``; ``output_rms = ||o|| / sqrt(numel)``
    and ``gain = ||o|| / ||x||`` follow on the host. On a GPU each ``.item()`` waits for
    the device.
    """

    def __init__(self, model: nn.Module, weight_every: int = WEIGHT_EVERY) -> None:
        super().__init__(model)
        self.weight_every = weight_every
        self.rows: list[tuple[int, str, str, float]] = []

    def _forward_hook(self, name: str, module: nn.Module, args, output) -> None:
        step, out, x = self.step_count, output, args[0]
        norm = M.output_norm(out).item()
        self.rows.append((step, name, "output_norm", norm))
        self.rows.append((step, name, "output_rms", norm / math.sqrt(out.numel())))
        self.rows.append((step, name, "gain", norm / M.output_norm(x).item()))
        if out.requires_grad:
            out.register_hook(partial(self._grad_hook, step, name))
        if step % self.weight_every == 0:  # the effective weight, rows = output units
            values = weight_metric_values(module, ("weight_norm", "coherence", "coherence_mean"))
            for metric, value in values.items():
                self.rows.append((step, name, metric, value.item()))

    def _grad_hook(self, step: int, name: str, grad: torch.Tensor) -> None:
        self.rows.append((step, name, "grad_norm", M.output_norm(grad).item()))


class DeviceBuffer(HookedLayers):
    """Values kept on the device: 0-d tensors per step, stacked once per step, copied to
    the host once per ``flush_every`` steps. ``values()`` flushes and returns the host
    array of every value so far, in the order they were put."""

    def __init__(self, model: nn.Module, flush_every: int = 100) -> None:
        super().__init__(model)
        self.flush_every = flush_every
        self._pending: list[torch.Tensor] = []
        self._stacked: list[torch.Tensor] = []
        self._host: list[torch.Tensor] = []

    def step(self) -> None:
        if self._pending:
            self._stacked.append(torch.stack(self._pending))
            self._pending = []
        super().step()
        if self.step_count % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        if self._stacked:
            self._host.append(torch.cat(self._stacked).cpu())
            self._stacked = []

    def values(self) -> torch.Tensor:
        self.flush()
        return torch.cat(self._host) if self._host else torch.empty(0)


class BufferedHooks(DeviceBuffer):
    """``||o||`` (forward hook) and ``||g||`` (tensor hook) kept on the device."""

    def _forward_hook(self, name: str, module: nn.Module, args, output) -> None:
        with torch.no_grad():
            self._pending.append(torch.linalg.vector_norm(output))
        if output.requires_grad:
            output.register_hook(self._grad_hook)

    def _grad_hook(self, grad: torch.Tensor) -> None:
        self._pending.append(torch.linalg.vector_norm(grad))


class CoordCheckHooks(DeviceBuffer):
    """mup's coordinate check: ``mean |o|`` of each layer's output, kept on the device."""

    def _forward_hook(self, name: str, module: nn.Module, args, output) -> None:
        with torch.no_grad():
            self._pending.append(output.abs().mean())
