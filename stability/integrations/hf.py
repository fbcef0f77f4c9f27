"""Hugging Face ``transformers.Trainer`` callback: record ``trainer.train()`` with a Recorder.

Needs the ``hf`` extra (``pip install normstab[hf]``)::

    from stability.integrations.hf import RecorderCallback

    callback = RecorderCallback()               # any Recorder option as a keyword
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    table = callback.recorder.to_frame()        # also in args.output_dir

Contract (:mod:`stability.integrations.session`): the Recorder attaches to the model at
train begin and records only inside accumulation windows, from ``on_step_begin`` to
``on_step_end``; evaluation, prediction, logging and saving run outside them and are never
recorded. It steps once at each ``on_step_end``, i.e. once per optimizer step, the
micro-batches of gradient accumulation being calls 0, 1, ... of that step. At train end
the table is saved as ``args.output_dir/normstab_records.parquet`` (refused at train
begin if the file exists).

The loss of each step is the window's loss as the Trainer sums it, from the losses the
model returned (``outputs.loss``) for the step's training micro-batches: their sum when
the Trainer passed ``num_items_in_batch`` (each is then the micro-batch's share of the
window's mean), else their mean. It is read by a forward hook on the model and kept on
the device (no sync): it joins the table as metric ``loss`` and feeds the monitor's loss
ratio. A loss computed outside the model (a custom ``compute_loss``, label smoothing in
the Trainer) is not seen; a model that returns no loss gives a table without it.

A live monitor (``monitor=factory``, called ``factory(recorder, on_warning=...)``) raises
its warnings through the Trainer: a log line, an entry ``{"normstab_warning": message,
"step": N}`` in ``state.log_history`` (saved with every checkpoint), ``control.should_save``
(``checkpoint_on_warning``) and ``control.should_training_stop`` (``stop_on_warning``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from stability.integrations import missing_extra

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as error:
    raise missing_extra("hf", error) from None

from stability.integrations.session import SessionCallback, log

__all__ = ["RecorderCallback"]


class RecorderCallback(SessionCallback, TrainerCallback):
    """Record the training with a :class:`~stability.records.recorder.Recorder`.

    Args:
        save: ``True``: ``args.output_dir/normstab_records.parquet``; a .parquet/.csv
            path; ``False``: no file.
        sinks: dashboard sinks fed after each step (TensorBoardSink, WandbSink); a sink
            without a destination of its own writes into ``args.output_dir``.
        monitor: ``factory(recorder, on_warning=handler)`` building a live monitor.
        stop_on_warning: set ``control.should_training_stop`` on a monitor warning.
        checkpoint_on_warning: set ``control.should_save`` on a monitor warning.
        **recorder_options: keywords of ``Recorder`` (include, exclude, metrics, every,
            weight_every, flush_every, run_dim).

    Attributes:
        recorder: the Recorder of the last training (None before the first).
        saved_path: where its table was saved.
        alerts: the monitor's warnings of the last training.
    """

    #: The training window's micro-batch ``(loss, is a share of the window's mean)``; None
    #: outside a window. The forward hook on the model that fills it, while training.
    _losses: list[tuple[torch.Tensor, bool]] | None = None
    _loss_hook: Any = None

    # ------------------------------------------------------------------ events
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise RuntimeError("RecorderCallback: the Trainer passed no model to on_train_begin")
        self._remove_loss_hook()
        self.session.start(
            model, args.output_dir, rank=args.process_index, world_size=args.world_size
        )
        self._losses = None
        self._loss_hook = model.register_forward_hook(self._keep_loss, with_kwargs=True)

    def _keep_loss(self, module: Any, args: Any, kwargs: dict, output: Any) -> None:
        """Forward hook on the model: keep the loss of a training micro-batch."""
        if self._losses is None or not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            share = kwargs.get("num_items_in_batch") is not None
            self._losses.append((loss.detach().float().reshape(()), share))

    def _step_loss(self) -> torch.Tensor | None:
        """The window's loss (on the device): the sum of its micro-batch losses when each is
        a share of the window's mean, else their mean; None without any."""
        losses, self._losses = self._losses, None
        if not losses:
            return None
        values = torch.stack([loss.to(losses[0][0].device) for loss, _ in losses])
        return values.sum() if all(share for _, share in losses) else values.mean()

    def _remove_loss_hook(self) -> None:
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._losses is None:
            self._losses = []
        self.session.enter_training(state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        for alert in self.session.leave_training(state.global_step, self._step_loss()):
            log.warning("normstab warning at step %d: %s", alert.step, alert.message)
            state.log_history.append({"normstab_warning": alert.message, "step": state.global_step})
            if self.checkpoint_on_warning:
                control.should_save = True
            if self.stop_on_warning:
                control.should_training_stop = True
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._remove_loss_hook()
        self._losses = None
        self.session.finish()
