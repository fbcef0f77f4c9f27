"""The training loop: a :class:`Trainer` runs the parts :func:`stability.paper.train.train` built.

Per optimizer step: forward under autocast (``amp``), cross-entropy in float32, backward
(through the GradScaler for ``fp16``), ``optimizer.step()``, ``scheduler.step()``,
``recorder.step(loss=loss)`` (the loss joins the record table, on the device; with
``--on-warning`` the live monitor ends the step and watches it, :mod:`.watch`); the running
sums stay on the device
(:mod:`stability.paper.train.meters`) and are read every ``check_every`` steps and at the
end of each epoch. At an epoch end the model is evaluated (Recorder paused), the epoch's
records are written as one parquet part (:meth:`stability.Recorder.pop_frame`), then the
checkpoint, then the history row (:mod:`stability.paper.train.checkpoint` says why in that
order).

Recorder steps. The Recorder's step counter is advanced to the global step on resume, so
the ``step`` column is the global 0-based optimizer step in every part, and
``record_every``/``weight_every`` keep their phase.

Divergence. Training stops when the (unscaled, float32) loss is non-finite. The step is
exact (tracked on the device); the check happens at the next check point, so up to
``check_every - 1`` further steps run and are recorded (their values are NaN). The records
are flushed, ``divergence.json`` names that step and the first layer in depth order whose
output went non-finite (:func:`stability.fitting.divergence_onset` on the records of the
current epoch, forward metrics), and :func:`train` returns with status ``"diverged"``; no
checkpoint is written over the last good one, and a diverged run cannot be resumed.
divergence.json follows the one JSON policy (:func:`stability.records.runs.jsonable`): the
non-finite ``loss`` and ``value`` are ``null`` there, and ``loss_text``/``value_text`` keep
them as text (``"nan"``, ``"inf"``).

Stopping. SIGTERM (in the main thread) or ``max_steps`` stops at the next step boundary
with a checkpoint and status ``"stopped"``: the run resumes exactly where it stopped.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from stability import fitting
from stability.paper.train import checkpoint
from stability.paper.train.checkpoint import Progress
from stability.paper.train.config import TrainConfig
from stability.paper.train.distributed import Dist, all_reduce, barrier
from stability.paper.train.meters import LossWatch, Meter
from stability.paper.train.setup import (
    Network,
    Optimization,
    TrainData,
    describe,
)
from stability.paper.train.watch import build_monitor, warning_summary
from stability.records.recorder import Recorder
from stability.records.runs import DIVERGENCE, RunDir, write_json_atomic
from stability.records.schema import FORWARD_METRICS

__all__ = ["StopFlag", "TrainResult", "Trainer", "evaluate"]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        status: ``finished``, ``stopped`` (SIGTERM or ``max_steps``; resumable) or
            ``diverged``.
        run_dir: the run directory.
        epoch: epochs completed.
        step: optimizer steps completed.
        history: history.csv's rows.
        divergence: the content of divergence.json (non-finite values as floats), or None.
        reason: why a ``stopped`` run stopped: ``"SIGTERM"``, ``"max_steps"`` or
            ``"warning"`` (``--on-warning stop``).
    """

    status: str
    run_dir: Path
    epoch: int
    step: int
    history: pd.DataFrame
    divergence: dict[str, Any] | None = None
    reason: str | None = None


class StopFlag:
    """Set by SIGTERM (or by anyone): stop at the next step boundary, resumably."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.reason: str | None = None

    def set(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        self.signum = signum
        self.reason = self.reason or "SIGTERM"

    def request(self, reason: str) -> None:
        """Stop for ``reason`` (e.g. the divergence monitor's warning)."""
        self.reason = self.reason or reason

    def is_set(self) -> bool:
        return self.reason is not None


@contextmanager
def _handle_sigterm(flag: StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, flag.set)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@torch.no_grad()
def evaluate(
    net: Network, loader: DataLoader, recorder: Recorder | None, dist: Dist
) -> tuple[float, float, float]:
    """Test loss, top-1 % and top-5 % over every rank (eval mode, Recorder paused)."""
    meter = Meter(net.device)
    net.model.eval()
    try:
        with recorder.paused() if recorder is not None else nullcontext():
            for x, y in loader:
                x, y = net.inputs(x, y)
                logits = net.logits(x)
                meter.update(F.cross_entropy(logits.float(), y), logits, y)
    finally:
        net.model.train()
    return meter.averages(dist)


def _output_onset(frame: pd.DataFrame) -> fitting.Onset | None:
    """The divergence onset in the forward metrics recorded (``gain`` aside)."""
    if frame.empty:
        return None
    present = set(frame["metric"].unique())
    wanted = [m for m in FORWARD_METRICS if m in present and m != "gain"] or sorted(present)
    return fitting.divergence_onset(frame, threshold=None, metric=wanted)


class _Clock:
    """Seconds of training so far: ``before`` (earlier processes) plus this one's."""

    def __init__(self, before: float = 0.0) -> None:
        self.before, self.started = before, time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started


class Trainer:
    """One process's training run: its built parts and where the run is.

    Args:
        config: the run's config.
        dist: this process's place in the job.
        run: the run directory (created or reopened).
        data: the loaders and the data order.
        net: the model on its device.
        optim: SGD, schedule and scaler.
        recorder: the Recorder attached to ``net.module``, or None.
    """

    def __init__(
        self,
        config: TrainConfig,
        dist: Dist,
        run: RunDir,
        data: TrainData,
        net: Network,
        optim: Optimization,
        recorder: Recorder | None,
    ) -> None:
        self.config, self.dist, self.run = config, dist, run
        self.data, self.net, self.optim, self.recorder = data, net, optim, recorder
        self.progress = Progress()
        self.meter = Meter(net.device)
        self.watch = LossWatch(net.device, 0)
        self.clock = _Clock()
        self._resume_rng: dict[str, Any] | None = None  # applied when the epoch resumes
        self.monitor = build_monitor(
            config.on_warning, recorder, distributed=dist.enabled,
            save_checkpoint=self.save_checkpoint, schedule=optim.scheduler,
        )  # fmt: skip

    # ------------------------------------------------------------------ start, checkpoint
    def start(self, resume: bool) -> None:
        """Restore the checkpoint (``resume``) or write config.json (a new run)."""
        if resume:
            state = checkpoint.load(self.run, self.net.device, self.dist.world_size)
            if state is not None:
                self._restore(state)
            if self.dist.is_main:  # without a checkpoint: start over, set stale files aside
                checkpoint.reconcile(self.run, self.progress.history, self.progress.parts)
        elif self.dist.is_main:
            meta = describe(self.config, self.dist, self.data, self.net, self.recorder)
            self.run.write_config(self.config.to_dict() | {"meta": meta})
        barrier(self.dist)
        step = self.progress.step
        self.watch = LossWatch(self.net.device, step)
        if self.recorder is not None and step > 0:  # next step number: `step`
            self.recorder.step_count = step - 1
            self.recorder.step()
        self.clock = _Clock(self.progress.seconds)

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.net.module.load_state_dict(state["model"])
        self.optim.load_state_dict(state)
        self.progress = Progress(**state["progress"], history=[dict(r) for r in state["history"]])
        local = state["ranks"][self.dist.rank]
        self.meter.load_state_dict(local["meter"])
        self._resume_rng = local["rng"]

    def save_checkpoint(self) -> None:
        """Write the checkpoint (every rank takes part; rank 0 writes)."""
        p = self.progress
        p.seconds = self.clock.seconds()
        shared = {
            "config": self.config.to_dict(),
            "model": self.net.module.state_dict(),
            **self.optim.state_dict(),
            "progress": p.state_dict(),
            "history": list(p.history),
        }
        local = {"rng": checkpoint.rng_state(), "meter": self.meter.state_dict()}
        checkpoint.save(self.run, self.dist, shared, local)

    # ------------------------------------------------------------------ steps
    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on the device batch ``(x, y)``; returns the (device) loss."""
        logits = self.net.logits(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optim.step(loss)
        if self.monitor is not None:  # ends the recorder's step too; no blocking sync
            self.monitor.step(loss.detach())
        elif self.recorder is not None:
            self.recorder.step(loss=loss.detach())  # kept on the device: no host sync
        self.meter.update(loss, logits, y)
        self.watch.update(loss)
        return loss

    def _poll(self, flag: StopFlag, full: bool) -> tuple[bool, bool]:
        """``(diverged, stop_signalled)``, agreed over ranks.

        ``full``: read the device non-finite flag (a host sync; every ``check_every`` steps
        and at epoch ends). Otherwise only the host-side signal flag is read, and only
        without DDP (ranks must agree, which needs the collective of a full poll).
        """
        if not full:
            return False, flag.is_set() and not self.dist.enabled
        flags = torch.stack([self.watch.flag(), self.watch.flag().new_tensor(float(flag.is_set()))])
        diverged, stop = (all_reduce(flags, self.dist, "max") > 0).tolist()
        return diverged, stop

    def train_epoch(
        self, flag: StopFlag, max_steps: int | None, on_step: Callable[[int], None] | None, bar
    ) -> str:
        """Train the rest of the current epoch: ``"done"``, ``"stopped"`` or ``"diverged"``.

        ``bar`` is the epoch's tqdm progress bar (advanced once per step).
        """
        p = self.progress
        batches = self.data.batches(p.epoch, p.batch)
        if self._resume_rng is not None:
            checkpoint.set_rng_state(self._resume_rng)
            self._resume_rng = None
        self.net.model.train()
        steps_per_epoch = self.data.steps_per_epoch
        for x, y in batches:
            self.step(*self.net.inputs(x, y))
            if self.monitor is not None and self.monitor.should_stop:
                flag.request("warning")  # --on-warning stop: at this step boundary
            p.batch += 1
            p.step += 1
            if on_step is not None:
                on_step(p.step)
            last = p.batch == steps_per_epoch
            full = last or p.step % self.config.check_every == 0
            diverged, signalled = self._poll(flag, full)
            if full and not bar.disable:
                bar.set_postfix(loss=f"{self.meter.averages(Dist())[0]:.4g}", refresh=False)
            bar.update()
            if diverged:
                return "diverged"
            if not last and (signalled or (max_steps is not None and p.step >= max_steps)):
                return "stopped"
            if last:
                break
        return "done"

    # ------------------------------------------------------------------ epoch ends
    def _write_records(self) -> None:
        if self.recorder is None:
            return
        frame = self.recorder.pop_frame()
        if self.run.write_part(frame, self.progress.parts) is not None or self.dist.enabled:
            self.progress.parts += 1  # DDP: ranks keep one count even if a rank wrote nothing

    def finish_epoch(self) -> dict[str, Any]:
        """Evaluate, write the records part, checkpoint, then the history row (that order)."""
        p = self.progress
        train_loss, train_top1, train_top5 = self.meter.averages(self.dist)
        test = evaluate(self.net, self.data.test_loader, self.recorder, self.dist)
        row = {
            "epoch": p.epoch + 1,
            "step": p.step,
            "lr": self.optim.lr_of(p.step - 1),
            "train_loss": train_loss,
            "train_top1": train_top1,
            "train_top5": train_top5,
            "test_loss": test[0],
            "test_top1": test[1],
            "test_top5": test[2],
            "seconds": 0.0,
            "amp_scale": self.optim.scale,
        }
        self._write_records()
        p.epoch += 1
        p.batch = 0
        row["seconds"] = self.clock.seconds()
        p.history.append(row)
        self.meter.reset()
        self.save_checkpoint()
        if self.dist.is_main:
            self.run.append_history(row)
            self.run.write_status("running", epoch=p.epoch, step=p.step)
        return row

    def on_divergence(self) -> dict[str, Any]:
        """Flush records, write ``divergence.json`` (rank 0) and return its content."""
        p = self.progress
        frame = self.recorder.pop_frame() if self.recorder is not None else pd.DataFrame()
        if self.recorder is not None and self.run.write_part(frame, p.parts) is not None:
            p.parts += 1
        step, loss = int(self.watch.first), float(self.watch.value)
        onset = _output_onset(frame)
        info: dict[str, Any] = {
            "step": step,
            "epoch": p.epoch + 1,
            "loss": loss,
            "loss_text": str(loss),
            "layer": onset.layer if onset else None,
            "layer_idx": onset.layer_idx if onset else None,
            "metric": onset.metric if onset else None,
            "value": onset.value if onset else None,
            "value_text": str(onset.value) if onset else None,
            "record_step": onset.step if onset else None,
            "stopped_at_step": p.step,
            "warning": warning_summary(self.monitor, step),
        }
        if self.dist.is_main:
            write_json_atomic(self.run.path / DIVERGENCE, info)
            self.run.write_status("diverged", epoch=p.epoch, step=p.step)
        return info

    # ------------------------------------------------------------------ the run
    def fit(
        self,
        resume: bool,
        max_steps: int | None = None,
        progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ) -> TrainResult:
        """Start (or resume) and train until finished, stopped or diverged."""
        self.start(resume)
        p = self.progress
        flag = StopFlag()
        if self.dist.is_main:
            self.run.write_status("running", epoch=p.epoch, step=p.step)
        with _handle_sigterm(flag):
            status, reason, divergence = self._epochs(flag, max_steps, progress, on_step)
        if self.monitor is not None:
            self.monitor.close()
        if self.dist.is_main and status != "diverged":
            where = {"epoch": p.epoch, "batch": p.batch, "step": p.step}
            self.run.write_status(status, **({"reason": reason} if reason else {}), **where)
        history = self.run.read_history() if self.dist.is_main else pd.DataFrame(p.history)
        return TrainResult(status, self.run.path, p.epoch, p.step, history, divergence, reason)

    def _epochs(
        self,
        flag: StopFlag,
        max_steps: int | None,
        progress: bool,
        on_step: Callable[[int], None] | None,
    ) -> tuple[str, str | None, dict[str, Any] | None]:
        """The epoch loop: ``(status, reason, divergence)``."""
        from tqdm.auto import tqdm

        p, cfg = self.progress, self.config
        show = progress and self.dist.is_main
        while p.epoch < cfg.epochs:
            if max_steps is not None and p.step >= max_steps:
                return "stopped", "max_steps", None
            desc = f"{cfg.model}/{cfg.norm} epoch {p.epoch + 1}/{cfg.epochs}"
            with tqdm(total=self.data.steps_per_epoch, initial=p.batch, desc=desc,
                      disable=not show, leave=False, dynamic_ncols=True) as bar:  # fmt: skip
                outcome = self.train_epoch(flag, max_steps, on_step, bar)
            if outcome == "diverged":
                divergence = self.on_divergence()
                print(f"training diverged: {divergence}", file=sys.stderr)
                return "diverged", None, divergence
            if outcome == "stopped":
                self._write_records()
                self.save_checkpoint()
                return "stopped", flag.reason or "max_steps", None
            row = self.finish_epoch()
            if show:
                tqdm.write(_format_row(cfg, row))
            if flag.is_set():
                return "stopped", flag.reason, None
        return "finished", None, None


def _format_row(cfg: TrainConfig, row: Mapping[str, Any]) -> str:
    return (
        f"{cfg.model}/{cfg.norm} epoch {row['epoch']}/{cfg.epochs} step {row['step']} "
        f"lr {row['lr']:.3g} | train loss {row['train_loss']:.4f} top-1 "
        f"{row['train_top1']:.2f}% | test loss {row['test_loss']:.4f} top-1 "
        f"{row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}% | {row['seconds']:.0f} s"
    )
