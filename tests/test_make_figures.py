"""Tests for ``figures/make_figures.py`` (Figures 2, 3 and 4 from saved runs).

The fixture runs are written here with known numbers (history rows and record parts in
the layout of :mod:`stability.records.runs`); the references are those numbers: every CSV beside a
figure must hold exactly the fixture values drawn, Figure 4 must pick the layers with the
smallest and largest ``layer_idx``, and a missing run must be reported with a command
that the training CLI accepts and that reproduces the preset's configuration.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stability.experiments import paper_figures as mf
from stability.experiments.paper_figures import figure4, train_missing
from stability.experiments.paper_figures import figures as drawing
from stability.paper import train as T
from stability.paper.train.options import parse as parse_train_args
from stability.records import runs as R

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


script = _load(ROOT / "figures" / "make_figures.py", "make_figures")

STEPS_PER_EPOCH = 4
EPOCHS = 3
# ResNet-style layer names whose name order is not their depth order.
LAYERS = {"conv1": 0, "layer1.0.conv1": 1, "layer1.0.conv2": 2, "layer4.2.conv3": 3, "fc": 4}


# --------------------------------------------------------------------------- fixture runs


def fixture_value(norm: str, column: str, epoch: int, seed: int = 0) -> float:
    """A distinct, positive number per (norm, column, epoch, seed)."""
    base = {"bn": 1.0, "wn": 2.0, "np": 3.0, "trelu": 4.0, "none": 5.0}[norm] + 0.5 * seed
    offset = {"train_loss": 0, "test_loss": 10, "train_top1": 20, "test_top1": 30}.get(column, 40)
    return base + offset + 1.0 / epoch


def output_norm(layer_idx: int, step: int) -> float:
    return 10.0 ** (layer_idx - 2) * 1.1**step


def coherence(layer_idx: int, step: int) -> float:
    return 0.05 * (layer_idx + 1) + 0.001 * step


def make_run(
    runs: Path, model: str, norm: str, preset: str, epochs: int = EPOCHS, diverged=False,
    seed: int = 0,
) -> Path:  # fmt: skip
    """A run directory as training writes it: config, history, two record parts."""
    path = runs / T.run_name(model, norm, preset, seed)
    run = R.RunDir(path)
    path.mkdir(parents=True)
    config = T.preset_config(model, norm, preset, epochs=EPOCHS, seed=seed, out=str(path))
    run.write_config(config.to_dict() | {"meta": {"steps_per_epoch": STEPS_PER_EPOCH}})
    for epoch in range(1, epochs + 1):
        row = {c: fixture_value(norm, c, epoch, seed) for c in R.HISTORY_COLUMNS}
        row |= {"epoch": epoch, "step": epoch * STEPS_PER_EPOCH}
        run.append_history(row)
    steps = np.arange(epochs * STEPS_PER_EPOCH)
    rows = []
    for layer, idx in LAYERS.items():
        for step in steps:
            rows.append((step, layer, idx, 0, "output_norm", output_norm(idx, step)))
            rows.append((step, layer, idx, 0, "grad_norm", 1.0))
            if step % 2 == 0:
                rows.append((step, layer, idx, 0, "coherence", coherence(idx, step)))
    frame = pd.DataFrame(
        rows, columns=["step", "layer", "layer_idx", "call_idx", "metric", "value"]
    )
    half = STEPS_PER_EPOCH
    run.write_part(frame[frame["step"] < half].reset_index(drop=True), 0)
    run.write_part(frame[frame["step"] >= half].reset_index(drop=True), 1)
    if diverged:
        R.write_json_atomic(path / R.DIVERGENCE, {"step": 11, "epoch": epochs + 1, "layer": "fc"})
    return path


def make_all_runs(
    runs: Path, preset: str, skip: tuple[tuple[str, str], ...] = (), seeds: tuple[int, ...] = (0,)
) -> None:
    for model, norm in mf.needed_runs():
        if (model, norm) not in skip:
            for seed in seeds:
                make_run(runs, model, norm, preset, seed=seed)


EXPECTED_FILES = {
    "figure2": ["train_loss", "test_top1"],
    "figure3": ["train_top1", "test_top1", "train_loss", "test_loss"],
    "figure4": ["output_norm", "coherence", "growth", "layers"],
}


# --------------------------------------------------------------------------- drawing


def test_every_png_and_csv_from_fixture_runs(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "smoke")
    assert script.main(["--runs", str(runs), "--out", str(out)]) == 0
    from matplotlib.image import imread

    for figure, panels in EXPECTED_FILES.items():
        image = imread(out / f"{figure}.png")
        assert image.shape[0] > 300 and image.shape[1] > 600
        for panel in panels:
            assert (out / f"{figure}_{panel}.csv").is_file()
    printed = capsys.readouterr().out
    assert printed.count("wrote") == 3 + sum(len(p) for p in EXPECTED_FILES.values())


@pytest.mark.parametrize(
    "figure,norms", [("figure2", mf.FIGURES[0].norms), ("figure3", ("bn", "wn"))]
)
def test_curve_csvs_hold_the_history_values(tmp_path, figure, norms):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "paper")
    assert script.main(["--runs", str(runs), "--out", str(out), "--only", figure]) == 0
    for panel in EXPECTED_FILES[figure]:
        data = pd.read_csv(out / f"{figure}_{panel}.csv")
        assert list(data.columns) == ["norm", "seed", "epoch", panel]
        assert list(pd.unique(data["norm"])) == list(norms)
        for row in data.itertuples(index=False):
            assert getattr(row, panel) == pytest.approx(fixture_value(row.norm, panel, row.epoch))
        assert len(data) == len(norms) * EPOCHS


def test_figure4_takes_the_first_and_last_layers_in_depth_order(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "smoke")
    assert script.main(["--runs", str(runs), "--out", str(out), "--only", "figure4"]) == 0
    norms = pd.read_csv(out / "figure4_output_norm.csv")
    assert sorted(norms["layer"].unique()) == ["conv1", "fc"]  # layer_idx 0 and 4
    for row in norms.itertuples(index=False):
        assert row.value == pytest.approx(output_norm(row.layer_idx, row.step))
        assert row.epoch == pytest.approx(row.step / STEPS_PER_EPOCH)
        # relative to the geometric mean over epoch 1 (steps 4..7): 1.1 ** (step - 5.5)
        assert row.relative == pytest.approx(1.1 ** (row.step - 5.5))
    assert list(pd.unique(norms["norm"])) == ["wn", "bn"]  # WN as in the paper, BN beside it
    assert len(norms) == 2 * 2 * EPOCHS * STEPS_PER_EPOCH
    growth = pd.read_csv(out / "figure4_growth.csv")
    assert list(growth["layer"]) == list(LAYERS) * 2  # every layer, depth order, per norm
    # the fixture's output norm grows by exactly 1.1 per step: 1.1**4 per epoch
    assert growth["factor_per_epoch"].to_numpy() == pytest.approx(1.1**STEPS_PER_EPOCH)
    assert growth["r2"].to_numpy() == pytest.approx(1.0)
    layers = pd.read_csv(out / "figure4_layers.csv")  # every layer, every epoch, per norm
    assert len(layers) == 2 * len(LAYERS) * EPOCHS
    for row in layers.itertuples(index=False):  # epoch e: geometric mean of 1.1**(4e..4e+3)
        assert row.relative == pytest.approx(1.1 ** (STEPS_PER_EPOCH * (row.epoch - 1)))
    coh = pd.read_csv(out / "figure4_coherence.csv")
    assert set(coh["step"]) == set(range(0, EPOCHS * STEPS_PER_EPOCH, 2))
    for row in coh.itertuples(index=False):
        assert row.value == pytest.approx(coherence(row.layer_idx, row.step))


def test_long_runs_are_binned_by_geometric_mean():
    steps = np.arange(10_000)
    values = np.exp(np.sin(steps / 500.0)) + 1.0
    frame = pd.DataFrame({"layer": "a", "layer_idx": 0, "step": steps, "value": values})
    binned = figure4._binned(frame, 100)
    assert len(binned) == 100
    edges = np.linspace(0, 10_000, 101)
    inside = (steps >= edges[7]) & (steps < edges[8])
    reference = np.exp(np.log(values[inside]).mean())  # numpy geometric mean of bin 7
    assert binned["value"].iloc[7] == pytest.approx(reference)
    assert binned["step"].iloc[7] == pytest.approx(steps[inside].mean())
    short = frame.iloc[:50]
    assert figure4._binned(short, 100) is short  # short runs are drawn as recorded


def test_paper_runs_are_preferred_and_each_figure_falls_back_alone(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "smoke")
    make_all_runs(runs, "paper", skip=(("resnet50", "bn"),))  # figure 3 lacks a paper run
    assert script.main(["--runs", str(runs), "--out", str(out)]) == 0
    spec2, spec3 = mf.FIGURES[0], mf.FIGURES[1]
    assert mf.find_runs(runs, spec2, ["paper", "smoke"])[0] == "paper"
    assert mf.find_runs(runs, spec3, ["paper", "smoke"])[0] == "smoke"
    assert isinstance(mf.find_runs(runs, spec3, ["paper"])[1], list)  # missing paper BN


def test_diverged_and_incomplete_runs_are_drawn_and_labelled(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "smoke", skip=(("cifar10_nv", "trelu"), ("cifar10_nv", "none")))
    make_run(runs, "cifar10_nv", "trelu", "smoke", epochs=2, diverged=True)
    make_run(runs, "cifar10_nv", "none", "smoke", epochs=1)
    assert script.main(["--runs", str(runs), "--out", str(out), "--only", "figure2"]) == 0
    assert "cifar10_nv-none-smoke is incomplete" in capsys.readouterr().out
    found = mf.find_runs(runs, mf.FIGURES[0], ["smoke"])[1]
    assert drawing._label(found["trelu"]).endswith("(diverged at step 11, epoch 3)")
    assert drawing._label(found["none"]).endswith(f"(1/{EPOCHS} epochs)")


# --------------------------------------------------------------------------- missing runs


def test_missing_run_names_it_and_the_command_that_makes_it(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "paper", skip=(("cifar10_nv", "np"),))
    assert script.main(["--runs", str(runs), "--out", str(out), "--preset", "paper"]) == 1
    captured = capsys.readouterr()
    missing = runs / "cifar10_nv-np-paper"
    command = mf.train_command(runs, "cifar10_nv", "np", "paper")
    assert f"{missing} (not found); make it with:" in captured.err
    assert f"    {command}" in captured.err
    assert "figure2: skipped" in captured.err and "figure3" not in captured.err
    assert (out / "figure3.png").is_file() and not (out / "figure2.png").exists()
    # --preset paper printed every GPU command, marking existing runs
    assert captured.out.count("analyses/train.py") == 7
    assert captured.out.count("# exists") == 6
    assert "torchrun --standalone --nproc_per_node 4" in captured.out


@pytest.mark.parametrize(
    "model,norm,preset", [("cifar10_nv", "np", "paper"), ("resnet50", "wn", "paper"),
                          ("resnet50", "bn", "smoke"), ("cifar10_nv", "none", "smoke")]
)  # fmt: skip
def test_printed_commands_give_the_preset_config(tmp_path, model, norm, preset):
    tokens = shlex.split(mf.train_command(tmp_path, model, norm, preset))
    script = tokens.index("analyses/train.py")
    assert (ROOT / tokens[script]).is_file()
    config, _ = parse_train_args(tokens[script + 1 :])
    expected = T.preset_config(model, norm, preset, out=str(tmp_path / f"{model}-{norm}-{preset}"))
    if preset == "paper" and model == "cifar10_nv":
        expected = dataclasses.replace(expected, download=True)
    assert config == expected


def test_an_empty_run_directory_counts_as_missing(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_all_runs(runs, "smoke", skip=(("resnet50", "wn"),))
    path = runs / "resnet50-wn-smoke"
    path.mkdir()
    R.RunDir(path).write_config(T.preset_config("resnet50", "wn", "smoke").to_dict())
    assert script.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{path} (exists but has no finished epoch)" in err
    assert f"--out {path} --resume" in err


# --------------------------------------------------------------------------- --preset smoke


def test_smoke_preset_trains_only_what_is_missing(tmp_path, monkeypatch):
    """--preset smoke calls train() for missing runs (resume for stopped ones), then draws."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "smoke", skip=(("cifar10_nv", "wn"), ("resnet50", "bn")))
    make_run(runs, "resnet50", "bn", "smoke", epochs=1)  # stopped early: resume it
    calls = []

    def fake_train(config, *, resume, force, progress):
        calls.append((config.model, config.norm, resume, force))
        path = Path(config.out)
        if resume:
            shutil.rmtree(path)  # the fake "finishes" the stopped run
        make_run(runs, config.model, config.norm, "smoke")
        return T.TrainResult("finished", path, EPOCHS, 12, pd.DataFrame())

    monkeypatch.setattr(train_missing, "train", fake_train)
    code = script.main(
        ["--runs", str(runs), "--out", str(out), "--preset", "smoke", "--no-progress"]
    )
    assert sorted(calls) == [("cifar10_nv", "wn", False, True), ("resnet50", "bn", True, False)]
    assert code == 0
    assert all((out / f"{figure}.png").is_file() for figure in EXPECTED_FILES)


# --------------------------------------------------------------------------- mini preset


def test_mini_figures_need_every_seed_and_name_the_missing_one(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert T.MINI_SEEDS == (0, 1)
    make_all_runs(runs, "mini", seeds=(0,))
    assert script.main(["--runs", str(runs), "--out", str(out), "--only", "figure3"]) == 1
    printed = capsys.readouterr().err
    for norm in ("bn", "wn"):
        assert f"resnet50-{norm}-mini-seed1 (not found)" in printed
        assert f"--norm {norm} --preset mini --seed 1 --out" in printed


def test_mini_draws_every_seed_and_summarises_their_spread(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "mini", seeds=T.MINI_SEEDS)
    result = mf.run(mf.FiguresConfig(runs=runs, out=out, preset="mini", progress=False))
    assert not result.skipped and not result.trained  # every run is there: nothing trained
    curves = pd.read_csv(out / "figure2_test_top1.csv")
    assert sorted(curves["seed"].unique()) == [0, 1]
    assert len(curves) == len(mf.FIGURES[0].norms) * 2 * EPOCHS
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == (5 + 2) * 2  # Figures 2 and 3, every norm and seed
    for row in summary.itertuples(index=False):
        assert row.final_test_top1 == pytest.approx(
            fixture_value(row.norm, "test_top1", EPOCHS, row.seed)
        )
        assert row.train_loss_epoch1 == pytest.approx(
            fixture_value(row.norm, "train_loss", 1, row.seed)
        )
    text = (out / "summary.md").read_text()
    bn = [fixture_value("bn", "test_top1", EPOCHS, s) for s in (0, 1)]
    assert f"| BN | 2 | {np.mean(bn):.1f} [{min(bn):.1f}, {max(bn):.1f}] |" in text
    assert f"{1.1**STEPS_PER_EPOCH:.3f} (fc)" in text  # Figure 4: the last layer's growth


def test_a_run_that_diverged_in_its_first_epoch_is_a_result_not_a_missing_run(tmp_path):
    """No finished epoch, but divergence.json: drawn (labelled diverged), summarised, and
    never trained again (it would diverge again)."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_all_runs(runs, "mini", seeds=T.MINI_SEEDS)
    path = runs / T.run_name("cifar10_nv", "np", "mini", 1)
    (path / R.HISTORY).unlink()
    R.write_json_atomic(path / R.DIVERGENCE, {"step": 7, "epoch": 1, "layer": "conv9"})
    assert train_missing.runs_to_train(runs, mf.FIGURES, "mini") == []
    result = mf.run(mf.FiguresConfig(runs=runs, out=out, preset="mini", progress=False))
    assert not result.skipped
    summary = pd.read_csv(out / "summary.csv")
    row = summary[(summary.norm == "np") & (summary.seed == 1)].iloc[0]
    assert row.diverged and row.diverged_step == 7 and row.epochs == 0
    assert math.isnan(row.final_test_top1)
    top1 = fixture_value("np", "test_top1", EPOCHS, 0)
    assert (
        f"| NormProp (diverged at step 7) | 2 | {top1:.1f}, 1 without |"
        in (out / "summary.md").read_text()
    )


def test_mini_trains_each_missing_seed_with_its_own_config(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "resnet50", "wn", "mini")  # seed 0 done
    todo = train_missing.runs_to_train(runs, mf.FIGURES[1:], "mini")
    names = [Path(config.out).name for config, _ in todo]
    assert names == ["resnet50-bn-mini", "resnet50-bn-mini-seed1", "resnet50-wn-mini-seed1"]
    for config, resume in todo:
        assert not resume
        assert config.seed == (1 if config.out.endswith("seed1") else 0)
        assert config == T.preset_config("resnet50", config.norm, "mini", seed=config.seed,
                                         out=config.out)  # fmt: skip
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        mf.FiguresConfig(runs=runs, preset="mini", jobs=0)


def test_jobs_train_runs_in_parallel_worker_processes(tmp_path, monkeypatch):
    """--jobs 2: real training of tiny runs in two spawned worker processes, one thread
    each; every run is finished on disk and timed."""
    real = T.preset_config

    def tiny(model, norm, preset, **overrides):
        small = {"dataset": "synthetic", "subset": (8, 4), "epochs": 1, "batch_size": 4,
                 "width": 0.125, "record": False, "device": "cpu"}  # fmt: skip
        return real(model, norm, preset, **(small | overrides))

    monkeypatch.setattr(train_missing, "preset_config", tiny)  # configs are made here
    runs, two = (
        tmp_path / "runs",
        mf.FigureSpec("two", "two runs", "cifar10_nv", ("bn", "wn"), None),
    )
    timings = train_missing.train_preset_runs(runs, [two], "smoke", False, jobs=2)
    assert sorted(timings) == ["cifar10_nv-bn-smoke", "cifar10_nv-wn-smoke"]
    for name in timings:
        config = json.loads((runs / name / R.CONFIG).read_text())
        assert config["threads"] == 1 and config["width"] == 0.125
        status = json.loads((runs / name / R.STATUS).read_text())
        assert status["state"] in ("finished", "diverged")


@pytest.mark.slow
def test_smoke_preset_end_to_end_on_tiny_runs(tmp_path, monkeypatch):
    """Real training of every run the figures need, shrunk to one tiny synthetic epoch."""
    real = T.preset_config

    def tiny(model, norm, preset, **overrides):
        small = {"dataset": "synthetic", "subset": (8, 4), "epochs": 1, "batch_size": 4,
                 "image_size": 28, "weight_every": 1, "device": "cpu"}  # fmt: skip
        return real(model, norm, preset, **(small | overrides))

    monkeypatch.setattr(train_missing, "preset_config", tiny)
    runs, out = tmp_path / "runs", tmp_path / "out"
    code = script.main(
        ["--runs", str(runs), "--out", str(out), "--preset", "smoke", "--no-progress"]
    )
    assert code == 0
    for figure, panels in EXPECTED_FILES.items():
        assert (out / f"{figure}.png").is_file()
        assert all((out / f"{figure}_{p}.csv").is_file() for p in panels)
    for model, norm in mf.needed_runs():
        status = json.loads((runs / f"{model}-{norm}-smoke" / R.STATUS).read_text())
        assert status["state"] in ("finished", "diverged")


# --------------------------------------------------------------------------- bad --runs


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_missing_or_empty_runs_folder_is_one_error_line_and_exit_2(tmp_path, state):
    """Nothing to draw: one ``error:`` line naming --runs, the make commands after it."""
    import subprocess

    runs, out = tmp_path / "runs", tmp_path / "out"
    if state == "empty":
        runs.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "figures" / "make_figures.py"), "--runs", str(runs),
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    why = "does not exist" if state == "missing" else "holds none of the runs"
    assert lines[0].startswith(f"make_figures.py: error: --runs {runs} {why}"), lines
    assert "Traceback" not in done.stderr
    assert not any("error" in line for line in lines[1:])  # the rest: how to make the runs
    assert any("--preset smoke" in line for line in lines[1:])
    assert not out.exists()  # nothing touched
    assert runs.exists() == (state == "empty")
    assert not runs.exists() or not any(runs.iterdir())
