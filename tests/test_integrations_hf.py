"""The HF Trainer callback records what a plain loop over the same batches records.

A 2-layer GPT-2 built from a config (no download), trained by ``Trainer`` with gradient
accumulation and an evaluation after every step. Reference: a hand-written loop over the
same batches (sequential sampling), calling ``rec.step()`` after each optimizer step and
never recording evaluation. The tables must have the same rows (step, layer, depth, call,
metric) and, before the first update (step 0, where HF's loss scaling plays no part), the
same forward and weight values.
"""

from __future__ import annotations

import copy
import json
import logging

import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from stability import Recorder  # noqa: E402
from stability.integrations.hf import RecorderCallback  # noqa: E402
from stability.integrations.session import RECORDS_FILE  # noqa: E402
from stability.records.schema import FORWARD_METRICS, WEIGHT_METRICS  # noqa: E402

KEYS = ["step", "layer", "layer_idx", "call_idx", "metric"]
SAMPLES, BATCH, ACCUMULATE, EPOCHS = 10, 2, 2, 2


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def tiny_gpt2():
    config = transformers.GPT2Config(
        vocab_size=40,
        n_positions=8,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def samples(n: int = SAMPLES) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 40, (n, 8), generator=torch.Generator().manual_seed(2))
    return [{"input_ids": row, "labels": row} for row in ids]


def trainer_for(model, callbacks, tmp_path, **options) -> transformers.Trainer:
    logging = {"logging_strategy": options.pop("logging_strategy", "no")}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATE,
        num_train_epochs=EPOCHS,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="no",
        **logging,
        report_to="none",
        use_cpu=True,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        **options,
    )
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=samples(),
        eval_dataset=samples(4),
        callbacks=callbacks,
    )


def plain_loop(model) -> pd.DataFrame:
    """Sequential batches, ``ACCUMULATE`` micro-batches per optimizer step (the last
    window of an epoch holds what is left), one ``rec.step()`` per optimizer step."""
    data = samples()
    batches = [data[i : i + BATCH] for i in range(0, SAMPLES, BATCH)]
    windows = [batches[i : i + ACCUMULATE] for i in range(0, len(batches), ACCUMULATE)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    with Recorder(model) as rec:
        for _ in range(EPOCHS):
            for window in windows:
                losses = []
                for batch in window:
                    ids = torch.stack([s["input_ids"] for s in batch])
                    loss = model(input_ids=ids, labels=ids).loss
                    loss.backward()
                    losses.append(loss.detach())
                opt.step()
                opt.zero_grad()
                rec.step(loss=torch.stack(losses).mean())
    return rec.to_frame()


def test_train_with_accumulation_and_evaluation_records_like_a_plain_loop(tmp_path):
    model = tiny_gpt2()
    reference = plain_loop(copy.deepcopy(model))
    callback = RecorderCallback()
    trainer = trainer_for(model, [callback], tmp_path)
    trainer.train()
    table = callback.recorder.to_frame()

    assert trainer.state.global_step == 6
    assert sorted(table["step"].unique()) == list(range(6))
    assert set(table.loc[table["step"] % 3 < 2, "call_idx"]) == {0, 1}
    assert set(table.loc[table["step"] % 3 == 2, "call_idx"]) == {0}
    pd.testing.assert_frame_equal(table[KEYS], reference[KEYS])
    first = (table["step"] == 0) & table["metric"].isin(FORWARD_METRICS + WEIGHT_METRICS)
    torch.testing.assert_close(
        torch.tensor(table.loc[first, "value"].to_numpy()),
        torch.tensor(reference.loc[first, "value"].to_numpy()),
    )

    assert callback.saved_path == tmp_path / RECORDS_FILE
    pd.testing.assert_frame_equal(pd.read_parquet(callback.saved_path), table)
    trainer.predict(samples(2))  # after training: the closed Recorder records nothing
    pd.testing.assert_frame_equal(callback.recorder.to_frame(), table)


def test_each_step_records_the_loss_the_trainer_logs(tmp_path):
    """The loss rows (one per optimizer step, read from the model's outputs) equal the
    Trainer's own logged training loss of that step (logging every step; HF rounds it)."""
    callback = RecorderCallback()
    trainer = trainer_for(tiny_gpt2(), [callback], tmp_path, logging_strategy="steps",
                          logging_steps=1)  # fmt: skip
    trainer.train()
    table = callback.recorder.to_frame()
    recorded = table[table["metric"] == "loss"].set_index("step")["value"]
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert list(recorded.index) == list(range(6)) and len(logged) == 6
    assert recorded.to_numpy() == pytest.approx(logged, abs=1e-3)


class _CallWarning(transformers.TrainerCallback):
    """Plays a live monitor: calls the ``on_warning`` it was given during step 1."""

    def __init__(self) -> None:
        self.on_warning = None

    def factory(self, recorder, on_warning):
        self.on_warning = on_warning
        return self

    def on_substep_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.on_warning("grad_norm of transformer.h.1.mlp.c_fc grows")


def test_monitor_warning_saves_a_checkpoint_and_stops(tmp_path, caplog):
    monitor = _CallWarning()
    callback = RecorderCallback(monitor=monitor.factory, save=tmp_path / "records.csv")
    trainer = trainer_for(tiny_gpt2(), [monitor, callback], tmp_path)
    with caplog.at_level(logging.WARNING, logger="stability.integrations"):
        trainer.train()
    assert trainer.state.global_step == 2  # stopped after the step the warning arrived in
    assert [(a.step, a.message) for a in callback.alerts] == [
        (0, "grad_norm of transformer.h.1.mlp.c_fc grows")
    ]
    assert "grad_norm of transformer.h.1.mlp.c_fc grows" in caplog.text
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert {"normstab_warning": callback.alerts[0].message, "step": 2} in state["log_history"]
    assert sorted(pd.read_csv(tmp_path / "records.csv")["step"].unique()) == [0, 1]


def test_existing_record_file_is_refused_before_training(tmp_path):
    (tmp_path / RECORDS_FILE).write_bytes(b"user data")
    model = tiny_gpt2()
    before = copy.deepcopy(model.state_dict())
    trainer = trainer_for(model, [RecorderCallback()], tmp_path)
    with pytest.raises(FileExistsError, match=f"{RECORDS_FILE} exists"):
        trainer.train()
    assert (tmp_path / RECORDS_FILE).read_bytes() == b"user data"
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} was trained"
