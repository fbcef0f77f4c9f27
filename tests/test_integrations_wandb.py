"""WandbSink: an offline W&B run, read back from its .wandb file with wandb's own reader
(``wandb leet inspect --json``), holds the Recorder's table (one value per step and layer:
the max over the step's calls, computed here with pandas) and the warnings."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

wandb = pytest.importorskip("wandb")

from stability import Recorder  # noqa: E402
from stability.integrations.wandb import WandbSink  # noqa: E402


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


def history(run_folder: Path) -> list[dict]:
    """The history rows of the run's .wandb file, as wandb's reader prints them."""
    (log_file,) = run_folder.glob("wandb/offline-run-*/run-*.wandb")
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 and "No such command" in done.stderr:
        pytest.skip(f"wandb {wandb.__version__} has no 'wandb leet inspect' reader")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def train(model, rec, sink, steps: int, on_step=None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(5)
    for step in range(steps):
        for _ in range(2):  # two micro-batches: calls 0 and 1
            model(torch.randn(4, 5, generator=g)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        rec.step()
        sink.update()
        if on_step is not None:
            on_step(step)


def expected_rows(table: pd.DataFrame) -> dict[int, dict[str, float]]:
    per_step = table.groupby(["step", "metric", "layer"])["value"].max().reset_index()
    rows: dict[int, dict[str, float]] = {}
    for step, metric, layer, value in per_step.itertuples(index=False):
        rows.setdefault(int(step), {})[f"normstab_{metric}/{layer}"] = value
    return rows


def test_rows_in_the_users_active_run_read_back(tmp_path):
    run = wandb.init(project="normstab-test", dir=str(tmp_path))
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2))
    rec = Recorder(model, flush_every=4, weight_every=3)
    sink = WandbSink().attach(rec)
    train(model, rec, sink, steps=9, on_step=lambda s: run.log({"loss": float(s)}))
    sink.warn(7, "grad_norm of 2 grows")
    rec.close()
    sink.close()
    assert wandb.run is run  # the user's run is theirs to finish
    run.finish()

    rows = history(tmp_path)
    ours = [r for r in rows if any(k.startswith("normstab_") and "/" in k for k in r)]
    got = {r["normstab_step"]: {k: v for k, v in r.items() if "/" in k} for r in ours}
    expected = expected_rows(rec.to_frame())
    assert len(ours) == 9 and sorted(got) == list(range(9))
    assert set(got) == set(expected)
    for step, values in expected.items():
        assert got[step].keys() == values.keys(), step
        for key, value in values.items():
            assert math.isclose(got[step][key], value, rel_tol=1e-12), (step, key)
    assert "normstab_weight_norm/2" in got[3] and "normstab_weight_norm/2" not in got[4]
    warnings = [r for r in rows if "normstab_warning" in r]
    assert [(r["normstab_step"], r["normstab_warning"]) for r in warnings] == [
        (7, "grad_norm of 2 grows")
    ]
    assert [r["loss"] for r in rows if "loss" in r] == [float(s) for s in range(9)]


def test_sink_starts_and_finishes_its_own_run(tmp_path):
    model = nn.Linear(5, 3)
    rec = Recorder(model, flush_every=100)
    sink = WandbSink(project="normstab-test").attach(rec, tmp_path / "logs")
    train(model, rec, sink, steps=3)
    rec.close()
    sink.close()
    assert wandb.run is None
    rows = history(tmp_path / "logs")
    assert [r["normstab_step"] for r in rows] == [0, 1, 2]  # all at close: no flush before
    expected = expected_rows(rec.to_frame())
    for row in rows:
        for key, value in expected[row["normstab_step"]].items():
            assert math.isclose(row[key], value, rel_tol=1e-12), key


def test_init_options_and_a_run_exclude_each_other():
    with pytest.raises(ValueError, match=r"init options \['project'\] need run=None"):
        WandbSink(run=object(), project="p")
