"""The live divergence monitor: the early-warning detector on each recorded step of a run.

Usage::

    rec = Recorder(model)
    monitor = Monitor(rec, on_warning=[log_warning(), lower_lr(optimizer, 0.1)], stop=False)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(loss)          # instead of rec.step(loss=loss)
        if monitor.should_stop:
            break
    monitor.close()

:meth:`Monitor.step` ends the recorder's step (``rec.step(loss=loss)``, so the table gets the
loss too) and feeds that step's values to the same
:class:`~stability.fitting.detector.WarningDetector` that :func:`stability.fitting.early_warning`
runs over the saved table: both give the same ``warn_step`` on the same run. When the detector
fires, every ``on_warning`` callable gets the :class:`~stability.fitting.EarlyWarning` (step,
regime, layer with the largest jump and its factor, loss ratio, depth factor, coherence, a
lower-bound estimate of the steps left); with ``stop=True`` :attr:`Monitor.should_stop`
becomes true, so the loop can end cleanly at that step. After a warning the monitor stays
quiet for ``config.window`` records (one warning per episode, so ``lower_lr`` does not
compound every step).

Latency and synchronisation. On CPU the step's values are read at once: a warning from
step ``t`` is raised inside ``monitor.step`` of step ``t`` (latency 0), so an action
(``lower_lr``, ``stop``) takes effect from step ``t + 1`` on. On CUDA nothing blocks: the
step's values (already reduced on the device by the Recorder) are copied asynchronously
into pinned host memory and a CUDA event is recorded; the next ``monitor.step`` polls the
event (``Event.query``, which never waits) and evaluates the detector on every step whose
copy has completed. When the device keeps up, a warning from step ``t`` is raised at step
``t + 1`` (latency 1, :attr:`EarlyWarning.seen_at_step`); a device running further behind
delays it, never the training loop. :meth:`Monitor.close` waits for the copies still in
flight (once, at the end).

The monitor reads the step's device values through the Recorder's internal buffers
(``_commit_step``, ``_stacked``, ``_table_rows``), so that it sees exactly the values the
table will hold; it watches a single run (a Recorder without ``run_dim``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch

from stability.fitting.detector import EarlyWarning, WarningConfig, WarningDetector
from stability.records.recorder import Recorder
from stability.records.schema import LOSS_METRIC, METRICS

__all__ = ["Monitor", "log_warning", "lower_lr", "save_checkpoint"]

Action = Callable[[EarlyWarning], object]

_CODE = {metric: i for i, metric in enumerate(METRICS)}
_LOGGER = logging.getLogger("stability.monitor")


def log_warning(logger: logging.Logger | None = None, level: int = logging.WARNING) -> Action:
    """An action that logs the warning's one-line description."""
    target = logger if logger is not None else _LOGGER

    def log(event: EarlyWarning) -> None:
        target.log(level, event.describe())

    return log


def save_checkpoint(save: Callable[[EarlyWarning], object]) -> Action:
    """An action that calls ``save(event)`` (the user's checkpoint writer) on a warning."""
    if not callable(save):
        raise TypeError(f"save_checkpoint needs a callable, got {save!r}")
    return save


def lower_lr(optimizer: torch.optim.Optimizer, factor: float = 0.1, scheduler=None) -> Action:
    """An action that multiplies every parameter group's ``lr`` by ``factor``.

    A scheduler that recomputes the learning rate from its base values (``base_lrs``, e.g.
    ``LambdaLR``) would undo the change at its next step; pass it as ``scheduler`` and its
    ``base_lrs`` are scaled too.
    """
    if not (isinstance(factor, int | float) and 0 < factor < 1):
        raise ValueError(f"lower_lr factor must be in (0, 1), got {factor!r}")

    def lower(event: EarlyWarning) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]

    return lower


@dataclass(eq=False)
class _InFlight:
    """One step's values on their way to the host."""

    step: int
    seen_from: int  # the step during whose monitor.step the copy was issued
    host: list[torch.Tensor]
    keys: list[np.ndarray]
    loss: torch.Tensor | None
    event: torch.cuda.Event | None  # None: already on the host (CPU)


class Monitor:
    """Watch a recorded run and act when the divergence detector fires.

    Args:
        recorder: The run's :class:`~stability.records.recorder.Recorder` (no ``run_dim``;
            it must record ``config.metric`` and, unless ``config.loss_ratio`` is None,
            ``loss``).
        config: The detector's parameters (default :class:`~stability.fitting.WarningConfig`).
        on_warning: A callable or callables taking the :class:`~stability.fitting.EarlyWarning`
            (built-ins: :func:`log_warning`, :func:`save_checkpoint`, :func:`lower_lr`).
        stop: Set :attr:`should_stop` at the first warning (stop training cleanly).

    Attributes:
        warnings: Every warning raised so far.
        should_stop: True once a warning fired with ``stop=True``.
    """

    def __init__(
        self,
        recorder: Recorder,
        config: WarningConfig | None = None,
        *,
        on_warning: Action | Iterable[Action] | None = None,
        stop: bool = False,
    ) -> None:
        if not isinstance(recorder, Recorder):
            raise TypeError(f"Monitor needs a stability.Recorder, got {type(recorder).__name__}")
        if recorder.run_dim is not None:
            raise ValueError(
                "Monitor watches one run; this Recorder stacks runs (run_dim set): check each "
                "run's table with stability.fitting.early_warning"
            )
        self.config = config if config is not None else WarningConfig()
        if not isinstance(self.config, WarningConfig):
            raise TypeError(f"config must be a fitting.WarningConfig, got {self.config!r}")
        needed = [self.config.metric] + ([LOSS_METRIC] if self.config.loss_ratio else [])
        missing = [m for m in needed if m not in recorder.metrics]
        if missing:
            raise ValueError(f"Monitor needs the Recorder to record {missing}; add them to metrics")
        actions = [] if on_warning is None else on_warning
        self.actions: list[Action] = [actions] if callable(actions) else list(actions)
        bad = [a for a in self.actions if not callable(a)]
        if bad:
            raise TypeError(f"on_warning must be callables, got {bad!r}")
        self.recorder = recorder
        self.stop_on_warning = bool(stop)
        self.detector = WarningDetector(self.config)
        self.warnings: list[EarlyWarning] = []
        self.should_stop = False
        self._in_flight: list[_InFlight] = []
        self._pinned: dict[tuple[torch.dtype, int], list[tuple[torch.Tensor, _InFlight | None]]]
        self._pinned = {}
        self._quiet_until = -1  # detector record count before which no warning is raised

    # ------------------------------------------------------------------ the loop
    def step(self, loss: torch.Tensor | float | None = None) -> list[EarlyWarning]:
        """End the recorder's step with ``loss`` and evaluate every step whose values arrived.

        Returns:
            The warnings raised during this call (usually none).
        """
        rec = self.recorder
        if loss is None and self.config.loss_ratio is not None:
            raise ValueError("Monitor.step needs the step's loss (the detector watches it)")
        step, recording = rec.step_count, rec._recording
        start = len(rec._stacked)
        rec._commit_step()  # this step's layer values: what rec.step() would stack first
        stacked, keys = rec._stacked[start:], rec._stacked_keys[start:]
        rec.step(loss=loss)
        if recording:
            self._in_flight.append(self._send(step, list(stacked), list(keys), loss))
        return self._poll(block=False)

    def close(self) -> list[EarlyWarning]:
        """Wait for the copies still in flight and evaluate them (call once at the end)."""
        return self._poll(block=True)

    # ------------------------------------------------------------------ device -> host
    def _send(self, step: int, stacked, keys, loss) -> _InFlight:
        value = None
        if loss is not None:
            value = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
            value = value.reshape(-1)[:1]
        tensors = stacked + ([value] if value is not None else [])
        on_cuda = [t for t in tensors if t.is_cuda]
        if not on_cuda:
            host = [t.detach() for t in stacked]
            return _InFlight(step, step, host, keys, value, None)
        flight = _InFlight(step, step, [], keys, None, None)
        flight.host = [self._to_pinned(t, flight) for t in stacked]
        flight.loss = self._to_pinned(value, flight) if value is not None else None
        flight.event = torch.cuda.Event()
        flight.event.record(torch.cuda.current_stream(on_cuda[0].device))
        return flight

    def _to_pinned(self, tensor: torch.Tensor, flight: _InFlight) -> torch.Tensor:
        """An asynchronous copy into a reused pinned buffer (no allocation once warm)."""
        if not tensor.is_cuda:
            return tensor.detach()
        pool = self._pinned.setdefault((tensor.dtype, tensor.numel()), [])
        for i, (buffer, owner) in enumerate(pool):
            if owner is not flight and not any(owner is f for f in self._in_flight):
                pool[i] = (buffer, flight)
                break
        else:
            buffer = torch.empty(tensor.numel(), dtype=tensor.dtype, pin_memory=True)
            pool.append((buffer, flight))
        buffer.copy_(tensor.detach().reshape(-1), non_blocking=True)
        return buffer.view(tensor.shape)

    def _poll(self, block: bool) -> list[EarlyWarning]:
        raised: list[EarlyWarning] = []
        now = self.recorder.step_count - 1  # the step whose monitor.step is running
        while self._in_flight:
            flight = self._in_flight[0]
            if flight.event is not None:
                if block:
                    flight.event.synchronize()
                elif not flight.event.query():
                    break  # later steps' copies were issued after this one
            self._in_flight.pop(0)
            seen = flight.step if flight.event is None else max(now, flight.step)
            warning = self._evaluate(flight, seen)
            if warning is not None:
                raised.append(warning)
        return raised

    # ------------------------------------------------------------------ the detector
    def _evaluate(self, flight: _InFlight, seen_at: int) -> EarlyWarning | None:
        rec = self.recorder
        parts = [
            rec._table_rows(host.numpy(), keys)
            for host, keys in zip(flight.host, flight.keys, strict=True)
        ]
        values = np.concatenate([v for v, _ in parts]) if parts else np.zeros(0)
        rows = np.concatenate([k for _, k in parts]) if parts else np.zeros((0, 4), np.int64)
        values = values.astype(np.float64)
        mine = (rows[:, 3] == _CODE[self.config.metric]) & (rows[:, 2] == 0)
        codes = rows[mine, 1]
        names = [rec.layer_names[c] for c in codes]
        coherent = (rows[:, 3] == _CODE["coherence"]) & (rows[:, 2] == 0)
        coherence = float(np.max(values[coherent])) if coherent.any() else None
        loss = None if flight.loss is None else float(flight.loss.reshape(-1)[0])
        signals = self.detector.observe(
            flight.step,
            [rec._layer_idx[name] for name in names],
            names,
            values[mine],
            loss=loss,
            coherence=coherence,
        )
        if not self.detector.fires(signals) or self.detector.records <= self._quiet_until:
            return None
        self._quiet_until = self.detector.records + self.config.window
        warning = replace(self.detector.warning(signals), seen_at_step=seen_at)
        self.warnings.append(warning)
        for action in self.actions:
            action(warning)
        if self.stop_on_warning:
            self.should_stop = True
        return warning

    def __repr__(self) -> str:
        return (
            f"Monitor(records={self.detector.records}, warnings={len(self.warnings)}, "
            f"in_flight={len(self._in_flight)}, should_stop={self.should_stop})"
        )
