"""TensorBoardSink: the event files, read back with tensorboard's own event reader, hold the
Recorder's table (one value per step and layer: the max over the step's calls, computed
here with pandas), a depth profile figure every N steps and the warnings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from stability import Recorder  # noqa: E402
from stability.integrations.tensorboard import TensorBoardSink  # noqa: E402


def read_events(folder) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(
        str(folder),
        size_guidance={
            event_accumulator.SCALARS: 0,
            event_accumulator.IMAGES: 0,
            event_accumulator.TENSORS: 0,
        },
    )
    return events.Reload()


def expected_series(table: pd.DataFrame, how: str = "max") -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]}: the calls of a (step, metric, layer) reduced with pandas."""
    per_step = table.groupby(["metric", "layer", "step"])["value"].agg(how).reset_index()
    return {
        f"normstab_{metric}/{layer}": list(zip(part["step"], part["value"], strict=True))
        for (metric, layer), part in per_step.groupby(["metric", "layer"])
    }


def train(model, rec, sink, steps: int, micro_batches: int = 2) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        for _ in range(micro_batches):
            x = torch.randn(4, 5, generator=g)
            model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        rec.step()
        sink.update()


def test_scalars_figures_and_warnings_read_back(tmp_path):
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    rec = Recorder(model, flush_every=3, weight_every=4)
    sink = TensorBoardSink(tmp_path / "tb", profile_every=4).attach(rec)
    train(model, rec, sink, steps=10)
    sink.warn(6, "gain of 2 grows")
    rec.close()
    sink.close()

    table = rec.to_frame()
    assert set(table["call_idx"]) == {0, 1}  # two micro-batches per step
    events = read_events(tmp_path / "tb")
    expected = expected_series(table)
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, series in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in series], tag
        # event files store float32
        torch.testing.assert_close(
            torch.tensor([v for _, v in got], dtype=torch.float32),
            torch.tensor([v for _, v in series], dtype=torch.float32),
        )
    assert [s for s, _ in expected["normstab_output_rms/0"]] == list(range(10))
    assert [s for s, _ in expected["normstab_weight_norm/2"]] == [0, 4, 8]
    assert [e.step for e in events.Images("normstab_depth_profile")] == [0, 4, 8]
    image = events.Images("normstab_depth_profile")[0]
    assert image.width > 100 and image.height > 100
    (warning,) = events.Tensors("normstab_warning/text_summary")
    assert warning.step == 6
    assert warning.tensor_proto.string_val[0].decode() == "gain of 2 grows"


def test_mean_over_calls_and_every_k_steps(tmp_path):
    model = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 2))
    rec = Recorder(model, every=3, flush_every=4, weight_every=1)
    sink = TensorBoardSink(
        tmp_path, calls="mean", profile_every=0, metrics=["output_norm", "grad_norm"]
    ).attach(rec)
    train(model, rec, sink, steps=8, micro_batches=3)
    rec.close()
    sink.close()
    events = read_events(tmp_path)
    table = rec.to_frame()
    written = table[table["metric"].isin(["output_norm", "grad_norm"])]
    expected = expected_series(written, how="mean")
    assert events.Tags()["images"] == []
    assert len(expected) == 4 and sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, series in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [0, 3, 6], tag
        torch.testing.assert_close(
            torch.tensor([v for _, v in got]),
            torch.tensor([v for _, v in series], dtype=torch.float32),
        )


def test_sink_needs_a_destination_and_valid_options(tmp_path):
    model = nn.Linear(2, 2)
    with Recorder(model) as rec:
        with pytest.raises(ValueError, match="TensorBoardSink needs a log_dir"):
            TensorBoardSink().attach(rec)
        with pytest.raises(RuntimeError, match="not attached"):
            TensorBoardSink(tmp_path).update()
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['rms'\]"):
        TensorBoardSink(tmp_path, profile_metrics=["rms"])
    with pytest.raises(ValueError, match="calls must be one of"):
        TensorBoardSink(tmp_path, calls="median")


@pytest.mark.gpu
def test_update_adds_no_host_device_sync(tmp_path):
    """``sink.update()`` after a flushing step reads host values only: under
    ``set_sync_debug_mode("error")`` any synchronisation would raise."""
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)).cuda()
    rec = Recorder(model, flush_every=2)
    sink = TensorBoardSink(tmp_path).attach(rec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(4, 5, device="cuda")
    for _ in range(6):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        rec.step()  # the Recorder's own flush copies to the host here
        torch.cuda.set_sync_debug_mode("error")
        try:
            sink.update()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    rec.close()
    sink.close()
    assert len(read_events(tmp_path).Scalars("normstab_grad_norm/1")) == 6


@pytest.mark.parametrize("how", ["max", "mean", "first"])
def test_a_non_finite_call_is_never_hidden(how):
    """The reduction the sinks write, against numpy's (NaN-propagating) max and mean."""
    from stability.integrations.sinks import reduce_calls

    calls = {("a", 0): [1.0, float("nan")], ("b", 1): [2.0, 3.0, 7.0], ("a", 2): [float("inf")]}
    rows = pd.DataFrame(
        [
            (step, layer, {"a": 0, "b": 1}[layer], call, "grad_norm", value)
            for (layer, step), values in calls.items()
            for call, value in enumerate(values)
        ],
        columns=["step", "layer", "layer_idx", "call_idx", "metric", "value"],
    )
    reduce = {"max": np.max, "mean": np.mean, "first": lambda v: v[0]}[how]
    got = reduce_calls(rows.sample(frac=1, random_state=0), how)
    assert got[["step", "layer"]].values.tolist() == [[0, "a"], [1, "b"], [2, "a"]]
    expected = [
        reduce(np.array(calls[(layer, step)])) for step, layer in [(0, "a"), (1, "b"), (2, "a")]
    ]
    np.testing.assert_array_equal(got["value"].to_numpy(), expected)
