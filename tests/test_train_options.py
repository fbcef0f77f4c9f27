"""Tests for ``stability.paper.train.options``: the arguments of analyses/train.py and the
config they make (in-process; the script itself runs in tests/test_train_cli.py).

References: the preset's config (:func:`preset_config`) with the typed flags applied by
hand; the stored config.json of a run; the file system (nothing touched on refusal).
"""

from __future__ import annotations

import dataclasses

import pytest

from stability.paper.train.config import TrainConfig, preset_config
from stability.paper.train.options import parse
from stability.records import runs as R


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "cifar10_nv", "--norm", "layer"], "invalid choice"),
        (["--model", "cifar10_nv", "--norm", "bn", "--lr", "0"], "positive number"),
        (["--model", "cifar10_nv", "--norm", "bn", "--lr", "-1"], "positive number"),
        (["--model", "cifar10_nv", "--norm", "bn", "--data-dir", "/no/such/dir"], "not a dir"),
        (["--norm", "bn"], "--model and --norm are required"),
        (["--out", "/no/such/run", "--resume"], "holds no run"),
        (["--model", "cifar10_nv", "--norm", "bn", "--resume", "--force"], "not allowed"),
        (["--model", "cifar10_nv", "--norm", "bn", "--test-subset", "4"], "needs --subset"),
        (["--model", "cifar10_nv", "--norm", "bn", "--image-size", "32"], "28x28"),
        (["--model", "cifar10_nv", "--norm", "bn", "--width", "0"], "positive number"),
    ],
)
def test_bad_values_exit_2_with_one_line(argv, message, capsys):
    assert message in _refused(argv, capsys)


def test_mini_preset_with_a_seed_and_a_width_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, _ = parse(["--model", "resnet50", "--norm", "wn", "--preset", "mini", "--seed", "1"])
    assert config == preset_config("resnet50", "wn", "mini", seed=1)
    assert config.out == "runs/resnet50-wn-mini-seed1"
    config, _ = parse(["--model", "cifar10_nv", "--norm", "bn", "--preset", "mini",
                       "--width", "0.5"])  # fmt: skip
    assert config == preset_config("cifar10_nv", "bn", "mini", width=0.5)


def test_an_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("user data")
    argv = ["--model", "cifar10_nv", "--norm", "bn", "--out", str(tmp_path / "file" / "x")]
    assert "is a file, not a folder" in _refused(argv, capsys)
    assert _refused([*argv[:-1], str(tmp_path / "file"), "--force"], capsys).count("is a file")
    assert (tmp_path / "file").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_folder_without_a_run_is_not_set_aside(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    argv = ["--model", "cifar10_nv", "--norm", "bn", "--out", str(tmp_path / "mine"), "--force"]
    assert "only a run directory" in _refused(argv, capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_flags_override_the_preset(tmp_path):
    out = tmp_path / "run"
    config, args = parse([
        "--model", "resnet50", "--norm", "wn", "--preset", "smoke", "--ep", "1", "--subset",
        "8", "--test-subset", "4", "--no-record", "--record-include", "conv1",
        "--record-include", "fc", "--out", str(out), "--max-steps", "3",
    ])  # fmt: skip
    expected = preset_config(
        "resnet50", "wn", "smoke", epochs=1, subset=(8, 4), record=False,
        include=("conv1", "fc"), out=str(out),
    )  # fmt: skip
    assert config == expected  # "--ep": argparse's own abbreviation of --epochs
    assert (args.max_steps, args.resume, args.force) == (3, False, False)
    paper, _ = parse(["--model", "cifar10_nv", "--norm", "np"])
    assert paper == preset_config("cifar10_nv", "np", "paper")


def test_resume_starts_from_the_stored_config(tmp_path, capsys):
    out = tmp_path / "run"
    stored = preset_config("cifar10_nv", "wn", "smoke", subset=(8, 4), out=str(out))
    R.open_run(out, stored.to_dict() | {"meta": {}})
    config, args = parse(["--out", str(out), "--resume", "--device", "cpu", "--num-workers", "0"])
    assert args.resume and config == dataclasses.replace(stored, device="cpu", num_workers=0)
    err = _refused(["--out", str(out), "--resume", "--lr", "0.5"], capsys)
    assert "cannot change --lr" in err
    err = _refused(["--out", str(out), "--resume", "--record-include", "conv1"], capsys)
    assert "cannot change --record-include" in err
    assert "cannot change --model" in _refused(
        ["--out", str(out), "--resume", "--model", "resnet50"], capsys
    )
    assert TrainConfig.from_dict(R.read_json(out / R.CONFIG)) == stored  # untouched
