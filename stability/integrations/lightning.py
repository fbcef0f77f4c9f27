"""PyTorch Lightning callback: record a ``Trainer.fit`` with a Recorder.

Needs the ``lightning`` extra (``pip install normstab[lightning]``)::

    from stability.integrations.lightning import RecorderCallback

    callback = RecorderCallback()               # any Recorder option as a keyword
    trainer = L.Trainer(callbacks=[callback], accumulate_grad_batches=4)
    trainer.fit(module, train_loader, val_loader)
    table = callback.recorder.to_frame()        # also in trainer.log_dir

Contract (:mod:`stability.integrations.session`): the Recorder attaches to the
``LightningModule`` at fit start, records only inside training batches (the sanity check,
validation, testing and prediction are never recorded), and steps once at the end of each
training batch in which ``trainer.global_step`` advanced, i.e. once per optimizer step
with gradient accumulation (the micro-batches are calls 0, 1, ... of that step) and once
per batch with several optimizers (manual optimization). At fit end, or when fit fails,
the table is saved as ``trainer.log_dir/normstab_records.parquet``.

A live monitor (``monitor=factory``, called ``factory(recorder, on_warning=...)``) raises
its warnings through the Trainer: a log line, a metric ``normstab_warning`` sent to every
logger, a checkpoint ``normstab-warning-step=<N>.ckpt`` in the log directory
(``checkpoint_on_warning``) and ``trainer.should_stop`` (``stop_on_warning``).

Steps count from 0 at each fit start (a resumed fit starts again at 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stability.integrations import missing_extra

try:
    import lightning.pytorch as pl
except ImportError as error:
    try:  # the standalone package
        import pytorch_lightning as pl
    except ImportError:
        raise missing_extra("lightning", error) from None

from stability.integrations.session import Alert, SessionCallback, free_path, log

__all__ = ["RecorderCallback"]


class RecorderCallback(SessionCallback, pl.Callback):
    """Record the fit with a :class:`~stability.records.recorder.Recorder`.

    Args:
        save: ``True``: ``trainer.log_dir/normstab_records.parquet`` (refused at fit start
            if the file exists); a .parquet/.csv path; ``False``: no file.
        sinks: dashboard sinks fed after each step (TensorBoardSink, WandbSink); a sink
            without a destination of its own writes into ``trainer.log_dir``.
        monitor: ``factory(recorder, on_warning=handler)`` building a live monitor.
        stop_on_warning: set ``trainer.should_stop`` on a monitor warning.
        checkpoint_on_warning: save a checkpoint on a monitor warning.
        **recorder_options: keywords of ``Recorder`` (include, exclude, metrics, every,
            weight_every, flush_every, run_dim).

    Attributes:
        recorder: the Recorder of the last fit (None before the first), closed after it.
        saved_path: where its table was saved.
        alerts: the monitor's warnings of the last fit.
    """

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # collective under DDP: every rank asks
        self._log_dir = None if log_dir is None else Path(log_dir)
        self.session.start(
            pl_module, self._log_dir, rank=trainer.global_rank, world_size=trainer.world_size
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.session.enter_training(trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        for alert in self.session.leave_training(trainer.global_step, _loss_of(outputs)):
            self._raise(trainer, alert)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.finish()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        try:
            self.session.finish()
        except Exception as error:  # never mask the exception that ended the fit
            log.error("normstab: could not save the record table: %s", error)

    # ------------------------------------------------------------------ warnings
    def _raise(self, trainer: pl.Trainer, alert: Alert) -> None:
        log.warning("normstab warning at step %d: %s", alert.step, alert.message)
        for logger in trainer.loggers:
            logger.log_metrics({"normstab_warning": 1.0}, step=trainer.global_step)
        if self.checkpoint_on_warning and self._log_dir is not None:
            name = f"normstab-warning-step={trainer.global_step}.ckpt"
            path = free_path(self._log_dir / name)
            trainer.save_checkpoint(path)
            log.warning("normstab: checkpoint saved to %s", path)
        if self.stop_on_warning:
            trainer.should_stop = True


def _loss_of(outputs: Any) -> Any:
    """The training loss in what ``training_step`` returned (a tensor or ``{"loss": ...}``)."""
    if isinstance(outputs, dict):
        return outputs.get("loss")
    return outputs if hasattr(outputs, "detach") else None
