"""What the training-loop callbacks share: one Recorder over one fit.

The Recorder's timing contract is one ``step()`` per optimizer step, after ``backward()``,
with every forward of that step (all micro-batches of gradient accumulation) filed under
it. A framework calls its callbacks around *training windows*: a Lightning training batch,
an HF Trainer accumulation window. :class:`RecordingSession` records only inside windows
(the Recorder is paused outside them, so validation, sanity checks, evaluation and
prediction are never recorded) and steps the Recorder at the end of a window in which the
framework's optimizer-step counter advanced. With gradient accumulation the counter
advances only at the window that ends an accumulation; with several optimizers it may
advance by more than one, and the Recorder still steps once, because all forwards of that
window belong to one training iteration (as in a plain loop that steps both optimizers and
then calls ``rec.step()``).

At the end (or on an exception) the session closes the Recorder, lets every sink write the
rest, and saves the record table into the run's log directory, never over an existing
file (checked at the start, before any training).

A live monitor is wired as ``monitor=factory``; the session calls
``factory(recorder, on_warning=handler)`` once the Recorder exists and queues every
warning the handler receives; the callback acts on them (log, checkpoint, stop) after the
Recorder's step. A :class:`stability.Monitor` built by the factory ends each step itself
(``monitor.step(loss)``): Lightning passes the step's last training loss; the HF Trainer
gives callbacks no loss, so there build the Monitor with
``WarningConfig(loss_ratio=None)`` (the rms jump alone).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stability.integrations.sinks import Sink
from stability.records.recorder import Recorder

log = logging.getLogger("stability.integrations")

#: The record table's file name in the run's log directory (``save=True``).
RECORDS_FILE = "normstab_records.parquet"

_RECORDER_OPTIONS = tuple(p for p in inspect.signature(Recorder).parameters if p != "model")


@dataclass(frozen=True)
class Alert:
    """A live monitor's warning as a callback sees it.

    Attributes:
        step: the Recorder step it concerns (the warning's own ``step`` when it has one,
            else the last step the Recorder finished).
        message: ``str(warning)``.
        warning: the object the monitor passed to ``on_warning``.
    """

    step: int
    message: str
    warning: Any


def check_recorder_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` if every key is a Recorder keyword, else a one-line ``TypeError``."""
    unknown = sorted(set(options) - set(_RECORDER_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown Recorder option(s) {unknown}; choose from {list(_RECORDER_OPTIONS)}"
        )
    return dict(options)


def check_save(save: bool | str | os.PathLike) -> bool | Path:
    """``True`` (the run's log directory), ``False`` (do not save) or a .parquet/.csv path."""
    if isinstance(save, bool):
        return save
    if isinstance(save, str | os.PathLike):
        path = Path(save)
        if path.suffix not in (".parquet", ".csv"):
            raise ValueError(f"save path must end in .parquet or .csv, got {str(path)!r}")
        return path
    raise TypeError(f"save must be True, False or a .parquet/.csv path, got {save!r}")


def records_path(
    save: bool | Path, log_dir: str | os.PathLike | None, rank: int = 0, world_size: int = 1
) -> Path | None:
    """Where the table will be saved; a one-line ``FileExistsError`` if a file is there.

    With several processes each saves its own table, ``name.rank{r}.parquet``.
    """
    if save is False:
        return None
    if save is True:
        if log_dir is None:
            raise ValueError("the run has no log directory: pass save=<path> or save=False")
        path = Path(log_dir) / RECORDS_FILE
    else:
        path = save
    if world_size > 1:
        path = path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
    if path.exists():
        raise FileExistsError(
            f"{path} exists and normstab never overwrites a saved record table: "
            "pass save=<another path> or save=False"
        )
    return path


def free_path(path: Path) -> Path:
    """``path``, or ``stem-v1.suffix``, ``stem-v2.suffix``, ... : the first that does not exist."""
    candidate, version = path, 0
    while candidate.exists():
        version += 1
        candidate = path.with_name(f"{path.stem}-v{version}{path.suffix}")
    return candidate


def _check_sinks(sinks: Iterable[Sink]) -> list[Sink]:
    sinks = [sinks] if isinstance(sinks, Sink) else list(sinks)
    wrong = [type(s).__name__ for s in sinks if not isinstance(s, Sink)]
    if wrong:
        raise TypeError(f"sinks must be Sink objects (TensorBoardSink, WandbSink), got {wrong}")
    return sinks


class RecordingSession:
    """One Recorder over one fit: built at the start, paused outside training windows,
    stepped once per window that advanced the optimizer-step counter, saved at the end.

    Args:
        recorder_options: keywords for :class:`~stability.records.recorder.Recorder`.
        save: ``True``: ``<log dir>/normstab_records.parquet``; a path; ``False``: no file.
        sinks: :class:`~stability.integrations.sinks.Sink` objects fed after each step.
        monitor: ``factory(recorder, on_warning=handler)`` building a live monitor, or None.
    """

    def __init__(
        self,
        recorder_options: dict[str, Any],
        *,
        save: bool | str | os.PathLike = True,
        sinks: Iterable[Sink] = (),
        monitor: Callable[..., Any] | None = None,
    ) -> None:
        self.options = check_recorder_options(recorder_options)
        self.save = check_save(save)
        self.sinks = _check_sinks(sinks)
        if monitor is not None and not callable(monitor):
            raise TypeError(
                f"monitor must be a callable factory(recorder, on_warning=...), got {monitor!r}"
            )
        self._monitor_factory = monitor
        self.recorder: Recorder | None = None
        self.monitor: Any = None
        self.saved_path: Path | None = None
        self.alerts: list[Alert] = []  # every warning of the fit, in order
        self._queue: list[Alert] = []
        self._path: Path | None = None
        self._paused = ExitStack()
        self._window_start: int | None = None
        self._finished = True

    def start(
        self,
        model: nn.Module,
        log_dir: str | os.PathLike | None,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> Recorder:
        """Attach a new Recorder to ``model``, paused until the first training window."""
        self.finish()  # a previous fit that ended without its end hook
        self._path = records_path(self.save, log_dir, rank, world_size)
        recorder = Recorder(model, **self.options)
        self.recorder, self.saved_path, self._finished = recorder, None, False
        self.alerts, self._queue, self._window_start = [], [], None
        self._paused.enter_context(recorder.paused())
        if self._monitor_factory is not None:
            self.monitor = self._monitor_factory(recorder, on_warning=self._on_warning)
        for sink in self.sinks:
            sink.attach(recorder, log_dir)
        return recorder

    def enter_training(self, optimizer_steps: int) -> None:
        """A training window begins; ``optimizer_steps`` is the framework's counter now."""
        if self._finished or self._window_start is not None:
            return
        self._window_start = int(optimizer_steps)
        self._paused.close()

    def leave_training(self, optimizer_steps: int, loss: Any = None) -> list[Alert]:
        """A training window ends: pause, step if the counter advanced, feed the sinks.

        ``loss`` (the window's last loss, a device tensor or None) joins the record table;
        with a live monitor that has ``step`` (:class:`stability.Monitor`), the monitor ends
        the Recorder's step with it, so the detector sees every step.

        Returns:
            The monitor's warnings not yet returned, for the callback to act on.
        """
        if self._finished or self._window_start is None:
            return []
        recorder = self.recorder
        self._paused.enter_context(recorder.paused())
        stepped = int(optimizer_steps) > self._window_start
        self._window_start = None
        if stepped:
            loss = loss.detach() if isinstance(loss, torch.Tensor) else loss
            if self.monitor is not None and hasattr(self.monitor, "step"):
                self.monitor.step(loss)
            else:
                recorder.step(loss=loss)
            for sink in self.sinks:
                sink.update()
        alerts, self._queue = self._queue, []
        for alert in alerts:
            for sink in self.sinks:
                sink.warn(alert.step, alert.message)
        return alerts

    def finish(self) -> Path | None:
        """Close the Recorder, let the sinks write the rest, save the table (idempotent)."""
        if self._finished:
            return self.saved_path
        self._finished = True
        self._paused.close()
        self._window_start = None
        self.recorder.close()
        for sink in self.sinks:
            sink.close()
        if self._path is not None:
            self.saved_path = self.recorder.save(self._path)
            log.info("normstab: record table saved to %s", self.saved_path)
        return self.saved_path

    def _on_warning(self, warning: Any) -> None:
        step = getattr(warning, "step", None)
        if not isinstance(step, int):
            step = max(self.recorder.step_count - 1, 0)
        alert = Alert(step=step, message=str(warning), warning=warning)
        self.alerts.append(alert)
        self._queue.append(alert)


class SessionCallback:
    """What the Lightning and HF callbacks share: their options and the session's results.

    Mixed in before the framework's callback base, so ``super().__init__()`` reaches it.

    Args:
        save: True (default file in the run's log/output dir), False, or a path.
        sinks: sinks fed with each flushed batch of records.
        monitor: factory ``monitor(recorder, on_warning=handler)`` of a live monitor.
        stop_on_warning: stop training when the monitor warns.
        checkpoint_on_warning: save a checkpoint when the monitor warns.
        **recorder_options: any :class:`~stability.Recorder` keyword.
    """

    def __init__(
        self,
        *,
        save: bool | str | os.PathLike = True,
        sinks: Iterable[Sink] = (),
        monitor: Callable[..., Any] | None = None,
        stop_on_warning: bool = True,
        checkpoint_on_warning: bool = True,
        **recorder_options: Any,
    ) -> None:
        super().__init__()
        self.session = RecordingSession(recorder_options, save=save, sinks=sinks, monitor=monitor)
        self.stop_on_warning = bool(stop_on_warning)
        self.checkpoint_on_warning = bool(checkpoint_on_warning)

    @property
    def recorder(self) -> Recorder | None:
        return self.session.recorder

    @property
    def saved_path(self) -> Path | None:
        return self.session.saved_path

    @property
    def alerts(self) -> list[Alert]:
        return self.session.alerts
