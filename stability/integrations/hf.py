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

A live monitor (``monitor=factory``, called ``factory(recorder, on_warning=...)``) raises
its warnings through the Trainer: a log line, an entry ``{"normstab_warning": message,
"step": N}`` in ``state.log_history`` (saved with every checkpoint), ``control.should_save``
(``checkpoint_on_warning``) and ``control.should_training_stop`` (``stop_on_warning``).
"""

from __future__ import annotations

from typing import Any

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
        self.session.start(
            model, args.output_dir, rank=args.process_index, world_size=args.world_size
        )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.session.enter_training(state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        for alert in self.session.leave_training(state.global_step):
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
        self.session.finish()
