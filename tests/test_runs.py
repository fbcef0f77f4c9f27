"""Tests for the run-directory layout (``stability.records.runs``).

References: pandas/pyarrow reading the part directory back; ``json`` with non-finite
constants refused (strict JSON); the file system itself (what exists, what was moved).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stability.records import runs as R


def _frame(steps, value=1.0) -> pd.DataFrame:
    return pd.DataFrame(
        {"step": steps, "layer": "a", "layer_idx": 0, "call_idx": 0, "metric": "output_norm",
         "value": value}
    )  # fmt: skip


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- parts, history


def test_parts_form_one_dataset_and_are_never_overwritten(tmp_path):
    run = R.RunDir(tmp_path)
    run.write_part(_frame([0, 1]), 0)
    run.write_part(_frame([2]), 1)
    assert run.write_part(_frame([])[:0], 2) is None  # empty: nothing written
    (tmp_path / R.RECORDS / ".part-00002.parquet.tmp-1").write_bytes(b"garbage")  # killed
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / R.RECORDS).sort_values("step", ignore_index=True),
        _frame([0, 1, 2]),
    )
    with pytest.raises(FileExistsError):
        run.write_part(_frame([3]), 1)


def test_ddp_parts_carry_the_rank(tmp_path):
    R.RunDir(tmp_path, rank=0, world_size=2).write_part(_frame([0]), 0)
    R.RunDir(tmp_path, rank=1, world_size=2).write_part(_frame([0], 2.0), 0)
    frame = pd.read_parquet(tmp_path / R.RECORDS).sort_values("rank")
    assert frame["rank"].tolist() == [0, 1] and frame["value"].tolist() == [1.0, 2.0]
    assert sorted(p.name for _, p in R.RunDir(tmp_path).parts(rank=-1)) == [
        "part-00000-rank0.parquet", "part-00000-rank1.parquet"
    ]  # fmt: skip


def test_history_round_trips_floats_exactly(tmp_path):
    run = R.RunDir(tmp_path)
    rows = [{c: float(i) + 0.1 for c in R.HISTORY_COLUMNS} for i in range(2)]
    rows[1]["test_loss"] = 1 / 3
    for row in rows:
        run.append_history(row)
    pd.testing.assert_frame_equal(run.read_history(), pd.DataFrame(rows))
    assert run.count_history_rows() == 2
    run.rewrite_history(rows[:1])
    pd.testing.assert_frame_equal(run.read_history(), pd.DataFrame(rows[:1]))
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed into place


def test_set_aside_moves_and_never_deletes(tmp_path):
    run = R.RunDir(tmp_path)
    (tmp_path / "a.txt").write_text("kept")
    with pytest.warns(UserWarning, match="why: moved a.txt"):
        (moved,) = run.set_aside([tmp_path / "a.txt", tmp_path / "missing"], "why")
    assert moved.read_text() == "kept" and moved.parent.parent == tmp_path / "stale"
    assert not (tmp_path / "a.txt").exists()


def test_growth_report_style_pyarrow_reads_the_parts(tmp_path):
    """pyarrow's dataset API (what growth_report uses) reads the part directory."""
    import pyarrow.dataset as ds

    run = R.RunDir(tmp_path)
    run.write_part(_frame([0, 1]), 0)
    run.write_part(_frame([2]), 1)
    table = ds.dataset(tmp_path / R.RECORDS, format="parquet").to_table()
    assert sorted(table.column("step").to_pylist()) == [0, 1, 2]


def test_growth_report_reads_a_training_run(tmp_path):
    """The growth report reads the parts directory a training run streams its records to."""
    from stability.experiments import growth_report

    run = R.RunDir(tmp_path)
    for part, steps in enumerate([range(0, 3), range(3, 6)]):
        frame = pd.concat(
            [_frame(list(steps), 1.0).assign(layer=f"l{k}", layer_idx=k) for k in range(4)]
        )
        run.write_part(frame, part)
    config = growth_report.ReportConfig(metric="output_norm")
    report = growth_report.build_report(tmp_path, config)
    assert sorted(report.growth["step"]) == list(range(6))
    assert report.layers == ["l0", "l1", "l2", "l3"]


# --------------------------------------------------------------------------- JSON policy


def test_jsonable_is_strict_json():
    value = {
        "nan": math.nan, "inf": -math.inf, "np": np.float32(0.5), "int": np.int64(3),
        "path": Path("a/b"), "nested": [(1, math.inf)], 2: "key",
    }  # fmt: skip
    got = R.jsonable(value)
    assert got == {"nan": None, "inf": None, "np": 0.5, "int": 3, "path": "a/b",
                   "nested": [[1, None]], "2": "key"}  # fmt: skip
    assert type(got["int"]) is int and type(got["np"]) is float
    assert _strict(json.dumps(got, allow_nan=False)) == got


def test_write_json_atomic_writes_null_for_non_finite(tmp_path):
    path = R.write_json_atomic(tmp_path / "x.json", {"loss": math.nan, "step": 3})
    assert _strict(path.read_text()) == {"loss": None, "step": 3}
    assert R.read_json(path) == {"loss": None, "step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temp file left


def test_config_and_status_are_atomic_json(tmp_path):
    run = R.RunDir(tmp_path)
    run.write_config({"lr": 0.1, "meta": {"x": math.inf}})
    assert _strict(run.config_path.read_text()) == {"lr": 0.1, "meta": {"x": None}}
    assert run.read_config() == {"lr": 0.1, "meta": {"x": None}}
    assert run.read_status() is None
    run.write_status("running", epoch=1)
    status = run.read_status()
    assert (status["state"], status["epoch"]) == ("running", 1) and "time" in status


# --------------------------------------------------------------------------- opening


def test_check_run_dir_accepts_new_and_empty_folders(tmp_path):
    R.check_run_dir(tmp_path / "new" / "run")
    (tmp_path / "empty").mkdir()
    R.check_run_dir(tmp_path / "empty")
    R.check_run_dir(tmp_path / "empty", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # touched nothing


@pytest.mark.parametrize(
    "case,kwargs,error,message",
    [
        ("file", {}, R.RunExistsError, "is a file"),
        ("file", {"force": True}, R.RunExistsError, "is a file"),
        ("file", {"resume": True}, R.RunExistsError, "is a file"),
        ("under_file", {}, NotADirectoryError, "is a file, not a folder"),
        ("under_file", {"force": True}, NotADirectoryError, "is a file, not a folder"),
        ("not_a_run", {"force": True}, R.RunExistsError, "only a run directory"),
        ("not_a_run", {}, R.RunExistsError, "holds files but no config.json"),
        ("run", {}, R.RunExistsError, "--resume to continue"),
        ("missing", {"resume": True}, FileNotFoundError, "holds no run"),
        ("run", {"resume": True, "force": True}, ValueError, "choose one"),
    ],
)
def test_check_run_dir_refuses_with_one_line(tmp_path, case, kwargs, error, message):
    (tmp_path / "file").write_text("user data")
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "notes.txt").write_text("mine")
    R.open_run(tmp_path / "run", {"lr": 0.1})
    path = tmp_path / ("file/x" if case == "under_file" else case)
    with pytest.raises(error, match=message) as info:
        R.check_run_dir(path, **kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(error):  # open_run makes the same checks before touching anything
        R.open_run(path, None, **kwargs)
    assert (tmp_path / "file").read_text() == "user data"
    assert (tmp_path / "not_a_run" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "not_a_run", "run"]


def test_open_run_force_renames_the_old_run(tmp_path):
    R.open_run(tmp_path / "run", {"lr": 0.1})
    with pytest.warns(UserWarning, match="moved the existing run"):
        run = R.open_run(tmp_path / "run", {"lr": 0.2}, force=True)
    (aside,) = tmp_path.glob("run.old-*")
    assert R.read_json(aside / R.CONFIG) == {"lr": 0.1}
    assert run.read_config() == {"lr": 0.2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert R.open_run(tmp_path / "run", None, resume=True).path == tmp_path / "run"


def test_new_output_dir_refuses_files_and_non_empty_folders(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(FileExistsError, match="--out .* is a file"):
        R.new_output_dir(tmp_path / "file", "unused")
    with pytest.raises(NotADirectoryError, match="--dir .* is a file, not a folder"):
        R.new_output_dir(tmp_path / "file" / "x", "unused", flag="--dir")
    with pytest.raises(FileExistsError, match="already holds files"):
        R.new_output_dir(tmp_path / "full", "unused")
    assert R.new_output_dir(tmp_path / "new" / "x", "unused").is_dir()
    stamped = R.new_output_dir(None, str(tmp_path / "parent"))
    assert stamped.parent == tmp_path / "parent" and stamped.is_dir()
