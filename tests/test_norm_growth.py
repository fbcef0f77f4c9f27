"""Tests for the growth report: ``analyses/norm_growth.py`` over its experiment module.

The references are the generating constants of synthetic record tables, built with plain
numpy/pandas: ``value[t, k] = c * f**k * g**t`` has per-layer depth factor ``f`` and
per-step time factor ``g`` at every step and layer, a blow-up injected at a chosen step
and layer is the onset, and a factor schedule ``f(t)`` fixes the first step at which the
depth factor reaches a threshold. One test records a real (short) weight-normalized
linear run with the Recorder and checks that every file is written.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from stability import Recorder
from stability.experiments import growth_report as gr

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "norm_growth.py"
COLUMNS = ["step", "layer", "layer_idx", "call_idx", "metric", "value"]


def _load_cli():
    spec = importlib.util.spec_from_file_location("norm_growth", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_cli()


# ---------------------------------------------------------------------------------
# Synthetic record tables with known truth
# ---------------------------------------------------------------------------------


def growth_values(
    n_steps: int,
    n_layers: int,
    f: float | np.ndarray,
    *,
    g: float = 1.0,
    c: float = 0.8,
    sigma: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """``c * f(t)**k * g**t`` (``f`` a constant or one factor per step), log-normal noise."""
    t = np.arange(n_steps)[:, None]
    k = np.arange(n_layers)[None, :]
    f = np.broadcast_to(np.asarray(f, dtype=np.float64), (n_steps,))[:, None]
    noise = np.exp(sigma * np.random.default_rng(seed).standard_normal((n_steps, n_layers)))
    return c * f**k * g**t * noise


def blow_up(values: np.ndarray, step: int, layer: int, value: float = np.inf) -> np.ndarray:
    """Layers >= ``layer`` take ``value`` at ``step``; every layer is NaN afterwards."""
    out = values.copy()
    out[step, layer:] = value
    out[step + 1 :, :] = np.nan
    return out


def layer_names(n_layers: int, split: int | None = None) -> list[str]:
    """``early.k`` / ``late.k`` (split at ``split``) or ``blocks.k.fc``."""
    if split is None:
        return [f"blocks.{k}.fc" for k in range(n_layers)]
    return [f"{'early' if k < split else 'late'}.{k}" for k in range(n_layers)]


def record_table(values: np.ndarray, metric: str = "output_rms", names=None) -> pd.DataFrame:
    """A record table from a (n_steps, n_layers) array."""
    n_steps, n_layers = values.shape
    names = layer_names(n_layers) if names is None else names
    return pd.DataFrame(
        {
            "step": np.repeat(np.arange(n_steps), n_layers),
            "layer": np.tile(np.asarray(names, dtype=object), n_steps),
            "layer_idx": np.tile(np.arange(n_layers), n_steps),
            "call_idx": 0,
            "metric": metric,
            "value": values.reshape(-1),
        },
        columns=COLUMNS,
    )


def save_run(tmp_path: Path, *frames: pd.DataFrame, name: str = "run") -> Path:
    run = tmp_path / name
    run.mkdir()
    pd.concat(frames, ignore_index=True).to_parquet(run / "records.parquet", index=False)
    return run


def run_cli(*args: str | Path) -> int:
    return cli.main([str(a) for a in args])


def read_summary(out: Path) -> dict:
    return json.loads((out / "growth_summary.json").read_text())


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# Truth of the main synthetic run.
F_TRUE, G_TRUE = 1.03, 1.002
N_STEPS, N_LAYERS = 40, 30
ONSET_STEP, ONSET_LAYER = 31, 17


@pytest.fixture
def known_run(tmp_path: Path) -> Path:
    """output_rms with depth factor F_TRUE and time factor G_TRUE, blowing up at
    (ONSET_STEP, ONSET_LAYER); plus a coherence metric."""
    values = blow_up(growth_values(N_STEPS, N_LAYERS, F_TRUE, g=G_TRUE), ONSET_STEP, ONSET_LAYER)
    coherence = np.tile(np.linspace(0.1, 0.9, N_STEPS)[:, None], (1, N_LAYERS))
    return save_run(tmp_path, record_table(values), record_table(coherence, "coherence"))


# ---------------------------------------------------------------------------------
# The numbers equal the truth
# ---------------------------------------------------------------------------------


def test_fitted_factors_and_onset_equal_truth(known_run: Path) -> None:
    assert run_cli(known_run) == 0
    out = known_run / "growth_report"
    summary = read_summary(out)
    names = layer_names(N_LAYERS)

    growth = pd.read_csv(out / "growth_report_depth_factor.csv")
    fitted = growth[growth["step"] <= ONSET_STEP]
    np.testing.assert_allclose(fitted["factor"], F_TRUE, rtol=1e-10)
    assert growth.loc[growth["step"] > ONSET_STEP, "factor"].isna().all()
    assert summary["depth_growth"]["n_fitted"] == ONSET_STEP + 1
    assert summary["depth_growth"]["median"] == pytest.approx(F_TRUE, rel=1e-10)

    assert summary["onset"]["step"] == ONSET_STEP
    assert summary["onset"]["layer"] == names[ONSET_LAYER]
    assert summary["onset"]["layer_idx"] == ONSET_LAYER
    assert summary["onset"]["reason"] == "non-finite"
    assert summary["onset"]["value_text"] == "inf"
    assert summary["factor_crossing"] is None  # F_TRUE = 1.03 never reaches the default 1.05
    assert summary["n_steps"] == N_STEPS and summary["n_layers"] == N_LAYERS

    for row in summary["time_growth"]:
        assert row["factor_per_step"] == pytest.approx(G_TRUE, rel=1e-10)
    window = pd.read_parquet(out / "growth_time_window.parquet")
    done = window[window["n_points"] >= 3]
    np.testing.assert_allclose(done["factor"], G_TRUE, rtol=1e-10)


def test_noisy_factor_within_its_confidence_band(tmp_path: Path) -> None:
    values = growth_values(50, 40, F_TRUE, sigma=0.05, seed=3)
    run = save_run(tmp_path, record_table(values))
    assert run_cli(run, "--factor-threshold", "2") == 0
    out = run / "growth_report"
    growth = pd.read_csv(out / "growth_report_depth_factor.csv")
    covered = (growth["factor_low"] <= F_TRUE) & (F_TRUE <= growth["factor_high"])
    assert covered.mean() >= 0.85  # nominal 95% intervals
    assert read_summary(out)["depth_growth"]["median"] == pytest.approx(F_TRUE, abs=0.002)
    assert read_summary(out)["onset"] is None and read_summary(out)["factor_crossing"] is None


def test_warning_step_and_lead_equal_truth(tmp_path: Path) -> None:
    # f(t) = 1 for t <= 10, then 1 + 0.01 (t - 10): first step with f >= 1.045 is 15.
    t = np.arange(40)
    f = 1.0 + 0.01 * np.clip(t - 10, 0, None)
    run = save_run(tmp_path, record_table(blow_up(growth_values(40, 20, f), 30, 12)))
    assert run_cli(run, "--factor-threshold", "1.045") == 0
    summary = read_summary(run / "growth_report")
    assert summary["factor_crossing"]["warn_step"] == 15
    assert summary["factor_crossing"]["factor"] == pytest.approx(1.05, rel=1e-10)
    assert summary["factor_crossing"]["onset_step"] == 30
    assert summary["factor_crossing"]["lead"] == 15
    assert summary["depth_growth"]["max_step"] == 30


def test_threshold_onset_and_onset_across_metrics(tmp_path: Path) -> None:
    values = blow_up(growth_values(30, 10, 1.01), 20, 4, value=5e6)  # 5e6 > 1e6
    grad = growth_values(30, 10, 0.99)
    grad[12, 6:] = 2e6  # grad_norm crosses the threshold earlier, at layer 6
    run = save_run(tmp_path, record_table(values), record_table(grad, "grad_norm"))

    # The one divergence rule thresholds output_rms only: the grad_norm of 2e6 (a value that
    # scales with the loss scale and the batch) is not a divergence, the rms of 5e6 is.
    report = gr.build_report(run)
    assert (report.onset.step, report.onset.layer_idx) == (20, 4)
    assert (report.onset.metric, report.onset.reason) == ("output_rms", "threshold")

    only_rms = gr.build_report(run, gr.ReportConfig(onset_metrics=("output_rms",)))
    assert (only_rms.onset.step, only_rms.onset.layer_idx) == (20, 4)
    assert only_rms.onset.value == 5e6
    assert gr.build_report(run, gr.ReportConfig(threshold=1e7)).onset.step == 21  # NaN rows


def test_layer_glob_and_step_range(tmp_path: Path) -> None:
    names = layer_names(N_LAYERS, split=10)
    values = blow_up(growth_values(N_STEPS, N_LAYERS, F_TRUE), ONSET_STEP, ONSET_LAYER)
    run = save_run(tmp_path, record_table(values, names=names))
    out = tmp_path / "late"
    assert run_cli(run, "--layers", "late.*", "--steps", "5:35", "--out", out) == 0
    summary = read_summary(out)
    assert summary["n_layers"] == N_LAYERS - 10
    assert summary["layers"][0] == "late.10"
    assert (summary["step_first"], summary["step_last"], summary["n_steps"]) == (5, 34, 30)
    assert summary["depth_growth"]["median"] == pytest.approx(F_TRUE, rel=1e-10)
    assert summary["onset"]["layer"] == names[ONSET_LAYER]
    heat = pd.read_csv(out / "growth_report_heatmap.csv")
    assert set(heat["layer"]) == set(names[10:])


def test_heatmap_bins_long_runs_and_counts_non_finite(tmp_path: Path) -> None:
    values = blow_up(growth_values(1000, 4, 1.02), 900, 2)
    run = save_run(tmp_path, record_table(values))
    assert run_cli(run) == 0
    heat = pd.read_csv(run / "growth_report" / "growth_report_heatmap.csv")
    assert (heat["steps_per_column"] == 3).all()  # ceil(1000 / 400)
    assert heat["column"].max() == 333
    assert heat.groupby("column")["n_values"].max().sum() == 1000
    col = heat[heat["step_first"] == 900]  # column of steps 900..902
    assert col["step_last"].iloc[0] == 902
    np.testing.assert_array_equal(col.sort_values("depth")["n_nonfinite"], [2, 2, 3, 3])
    first = heat[(heat["column"] == 0) & (heat["depth"] == 3)]
    assert first["log10_mean"].iloc[0] == pytest.approx(np.log10(0.8 * 1.02**3), rel=1e-12)


# ---------------------------------------------------------------------------------
# Tables holding several runs
# ---------------------------------------------------------------------------------


@pytest.fixture
def sweep_run(tmp_path: Path) -> Path:
    """A sweep table with norm, lr, seed keys; factor 1 + lr / 10 for WN, 1 for BN."""
    parts = []
    for norm in ("bn", "wn"):
        for lr in (0.1, 0.3):
            factor = 1.0 + lr / 10 if norm == "wn" else 1.0
            frame = record_table(growth_values(12, 8, factor))
            parts.append(frame.assign(norm=norm, lr=lr, seed=0)[["norm", "lr", "seed", *COLUMNS]])
    return save_run(tmp_path, *parts, name="sweep")


def test_where_picks_one_run(sweep_run: Path) -> None:
    assert run_cli(sweep_run, "--where", "norm=wn,lr=0.3,seed=0") == 0
    out = sweep_run / "growth_report" / "norm=wn_lr=0.3_seed=0"
    summary = read_summary(out)
    assert summary["filter"]["run"] == {"norm": "wn", "lr": 0.3, "seed": 0}
    assert summary["depth_growth"]["median"] == pytest.approx(1.03, rel=1e-10)
    assert summary["n_steps"] == 12


def test_several_runs_without_where_lists_them(sweep_run: Path, capsys) -> None:
    assert run_cli(sweep_run) == 2
    err = error_line(capsys)
    assert "holds 4 runs" in err and "norm=bn,lr=0.1,seed=0" in err and "--where" in err
    assert run_cli(sweep_run, "--where", "norm=wn") == 2
    err = error_line(capsys)
    assert "2 runs" in err and "norm=wn,lr=0.3,seed=0" in err
    assert run_cli(sweep_run, "--where", "norm=ln") == 2
    assert "no run" in error_line(capsys)
    assert run_cli(sweep_run, "--where", "lr=fast") == 2
    assert "'lr' holds double values" in error_line(capsys)
    assert run_cli(sweep_run, "--where", "depth=3") == 2
    assert "run keys: ['norm', 'lr', 'seed']" in error_line(capsys)


def test_recorder_run_column_is_a_run_key(tmp_path: Path) -> None:
    frames = [
        record_table(growth_values(10, 6, f)).assign(run=r)[["step", "run", *COLUMNS[1:]]]
        for r, f in enumerate((1.0, 1.2))
    ]
    run = save_run(tmp_path, *frames)
    report = gr.build_report(run, gr.ReportConfig(where="run=1"))
    np.testing.assert_allclose(report.growth["factor"], 1.2, rtol=1e-10)


# ---------------------------------------------------------------------------------
# Errors: one line on stderr, exit status 2
# ---------------------------------------------------------------------------------


def test_directory_without_records(tmp_path: Path, capsys) -> None:
    (tmp_path / "other.parquet").write_bytes(b"")
    assert run_cli(tmp_path) == 2
    err = error_line(capsys)
    assert f"no records.parquet in {tmp_path}" in err and "other.parquet" in err
    assert run_cli(tmp_path / "missing") == 2
    assert "does not exist" in error_line(capsys)
    with pytest.raises(FileNotFoundError, match="no records.parquet"):
        gr.build_report(tmp_path)


def test_metric_not_recorded_lists_recorded(known_run: Path, capsys) -> None:
    assert run_cli(known_run, "--metric", "grad_norm") == 2
    err = error_line(capsys)
    assert "metric 'grad_norm' was not recorded" in err
    assert "['coherence', 'output_rms']" in err
    with pytest.raises(ValueError, match="recorded metrics"):
        gr.build_report(known_run, gr.ReportConfig(metric="gain"))


def test_glob_matching_no_layer_lists_names(known_run: Path, capsys) -> None:
    assert run_cli(known_run, "--layers", "layer4.*") == 2
    err = error_line(capsys)
    assert "'layer4.*' matches no layer" in err and "'blocks.0.fc'" in err
    with pytest.raises(ValueError, match="matches no layer"):
        gr.build_report(known_run, gr.ReportConfig(layers="nope*"))


def test_empty_selection_errors(known_run: Path, capsys) -> None:
    assert run_cli(known_run, "--steps", "100:200") == 2
    assert "recorded steps run from 0 to 39" in error_line(capsys)
    assert run_cli(known_run, "--call-idx", "1") == 2
    assert "call_idx values recorded: [0]" in error_line(capsys)
    assert run_cli(known_run, "--steps", "a:b") == 2
    assert "steps must look like A:B" in error_line(capsys)


def test_existing_report_needs_force(known_run: Path, capsys) -> None:
    out = known_run / "growth_report"
    out.mkdir()
    (out / "growth_report.png").write_bytes(b"old")
    assert run_cli(known_run) == 2
    assert "growth_report.png exists" in error_line(capsys)
    assert (out / "growth_report.png").read_bytes() == b"old"
    with pytest.raises(FileExistsError):
        gr.write_report(gr.build_report(known_run), out)
    assert run_cli(known_run, "--force") == 0
    assert (out / "growth_report.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------
# A real recorded run
# ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory) -> Path:
    """A 12-layer bias-free weight-normalized linear stack, 8 SGD steps at lr 1."""
    torch.manual_seed(0)
    model = nn.Sequential(*[weight_norm(nn.Linear(32, 32, bias=False)) for _ in range(12)])
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    x, y = torch.randn(64, 32), torch.randn(64, 32)
    with Recorder(model, weight_every=1) as rec:
        for _ in range(8):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step()
    run = tmp_path_factory.mktemp("linear")
    rec.save(run / "records.parquet")
    return run


def _assert_report_files(out: Path) -> dict:
    for path in gr.report_files(out):
        assert path.is_file() and path.stat().st_size > 0, path
    coherence = pd.read_csv(out / "growth_report_coherence.csv", dtype={"layer": str})
    assert set(coherence["layer"]) == {"0", "6", "11"}
    return read_summary(out)


def test_recorded_linear_run_writes_every_file(linear_run: Path) -> None:
    out = linear_run / "in_process"
    assert run_cli(linear_run, "--out", out) == 0
    summary = _assert_report_files(out)
    assert summary["n_layers"] == 12 and summary["n_steps"] == 8
    assert summary["coherence_recorded"] is True
    assert summary["depth_growth"]["n_fitted"] == 8


def test_entry_point_runs_as_a_script(linear_run: Path) -> None:
    out = linear_run / "subprocess"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(linear_run / "records.parquet"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "median factor" in done.stdout
    _assert_report_files(out)
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), str(linear_run), "--metric", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_million_row_table(tmp_path: Path) -> None:
    """2000 steps x 100 layers x 5 metrics: the fits still equal the truth."""
    n_steps, n_layers = 2000, 100
    t = np.arange(n_steps)
    f = 1.0 + 0.04 * np.clip((t - 1000) / 800, 0, None)
    rms = blow_up(growth_values(n_steps, n_layers, f), 1900, 60)
    coherence = np.tile(np.linspace(0.05, 0.95, n_steps)[:, None], (1, n_layers))
    frames = [
        record_table(values, metric)
        for metric, values in [
            ("output_rms", rms),
            ("output_norm", rms * 181.0),
            ("gain", rms / 0.8),
            ("grad_norm", 1.0 / rms),
            ("coherence", coherence),
        ]
    ]
    run = save_run(tmp_path, *frames)
    assert sum(len(frame) for frame in frames) == 1_000_000
    assert run_cli(run, "--factor-threshold", "1.030025") == 0  # between f(1600), f(1601)
    out = run / "growth_report"
    summary = read_summary(out)
    assert (summary["onset"]["step"], summary["onset"]["layer_idx"]) == (1900, 60)
    first = int(np.argmax(f >= 1.030025))
    assert summary["factor_crossing"]["warn_step"] == first
    assert summary["factor_crossing"]["lead"] == 1900 - first
    growth = pd.read_csv(out / "growth_report_depth_factor.csv")
    np.testing.assert_allclose(growth["factor"][:1901], f[:1901], rtol=1e-9)
    heat = pd.read_csv(out / "growth_report_heatmap.csv")
    assert (heat["steps_per_column"] == 5).all() and heat["column"].max() == 399


# ---------------------------------------------------------------------------------
# Bad --out, the detector's warning, agreement with the main job
# ---------------------------------------------------------------------------------


def test_out_below_a_file_is_one_error_line_and_touches_nothing(known_run: Path) -> None:
    blocker = known_run.parent / "some_file"
    blocker.write_text("mine")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(known_run), "--out", str(blocker / "sub")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("norm_growth.py: error: --out ")
    assert f"{blocker} exists and is not a folder" in done.stderr
    assert blocker.read_text() == "mine"
    assert not (known_run / "growth_report").exists()


def jump_run(tmp_path: Path, with_loss: bool) -> Path:
    """20 layers, flat depth profile; every layer's rms jumps 8x at step 25 and stays; the
    loss (if recorded) triples at step 28; everything is infinite at step 35.

    Truth: the detector (jump 4x its trailing median, loss 2x its own, warm-up 10 records)
    fires at 25 on the rms alone and at 28 with the loss; the factor never crosses 1.05.
    """
    values = growth_values(40, 20, 1.0)
    values[25:] *= 8.0
    values = blow_up(values, 35, 0)
    frames = [record_table(values)]
    if with_loss:
        loss = np.where(np.arange(40) >= 28, 3.0, 1.0)
        frames.append(
            pd.DataFrame(
                {
                    "step": np.arange(40),
                    "layer": "(loss)",
                    "layer_idx": -1,
                    "call_idx": 0,
                    "metric": "loss",
                    "value": loss,
                }
            )  # fmt: skip
        )
    return save_run(tmp_path, *frames, name=f"jump_loss={with_loss}")


@pytest.mark.parametrize("with_loss,warn_step", [(False, 25), (True, 28)])
def test_detector_warning_and_lead_are_reported(tmp_path: Path, with_loss, warn_step) -> None:
    run = jump_run(tmp_path, with_loss)
    assert run_cli(run) == 0
    summary = read_summary(run / "growth_report")
    warning = summary["detector_warning"]
    assert (warning["warn_step"], warning["onset_step"], warning["lead"]) == (
        warn_step, 35, 35 - warn_step,
    )  # fmt: skip
    assert ("loss_ratio=None" in summary["detector"]) == (not with_loss)
    assert summary["factor_crossing"] is None
    report = gr.build_report(run)
    text = gr.format_summary(report)
    assert f"step {warn_step}, lead {35 - warn_step} steps" in text
    assert ("no loss rows" in text) == (not with_loss)


def test_detector_equals_fitting_early_warning_and_crossing_is_the_mechanism(
    tmp_path: Path,
) -> None:
    """Factor 1 until step 20, then 1.06 per layer: the crossing is at 20 (truth); the
    detector's warning is what fitting.early_warning says on the same table."""
    from stability import fitting

    f = np.where(np.arange(40) >= 20, 1.06, 1.0)
    run = save_run(tmp_path, record_table(blow_up(growth_values(40, 30, f), 30, 29)))
    report = gr.build_report(run)
    assert (report.crossing.warn_step, report.crossing.lead) == (20, 10)
    table = pd.read_parquet(run / "records.parquet")
    expected = fitting.early_warning(table, fitting.WarningConfig(loss_ratio=None))
    assert report.warning.warn_step == expected.warn_step
    assert report.warning.lead == 30 - expected.warn_step


def test_growth_report_and_the_sweep_agree_on_the_onset(tmp_path: Path) -> None:
    """The main job (divergence_sweep) and the report judge the same run by one rule."""
    from stability.experiments import divergence_sweep as sweep

    config = sweep.SweepConfig(
        norms=("none", "wn", "bn"), lrs=(0.1, 1.0), seeds=(0,), iters=25, depth=12, width=16,
        batch_size=64, subset=512, progress=False,
    )  # fmt: skip
    result = sweep.run(config, tmp_path / "sweep")
    assert result.summary["diverged"].any()  # the comparison needs a divergence
    for row in result.summary.itertuples(index=False):
        where = f"norm={row.norm},lr={row.lr!r},seed={row.seed}"
        report = gr.build_report(result.out, gr.ReportConfig(where=where))
        onset = None if report.onset is None else report.onset.step
        assert onset == (row.iteration if row.diverged else None), where
