"""Tests of :mod:`stability.experiments.cli`: presets, arguments into configs, value types."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from stability.experiments import cli

ROOT = Path(__file__).resolve().parents[1]

PRESETS = {"default": {}, "quick": {"iters": 3, "seeds": (0,)}}


@dataclass(frozen=True)
class Config:
    iters: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    lr: float = 0.1


def parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(prog="prog")
    p.add_argument("--preset", choices=tuple(PRESETS), default="default")
    p.add_argument("--iters", type=cli.positive_int)
    p.add_argument("--seeds", type=cli.comma_list(cli.nonnegative_int))
    p.add_argument("--lr", type=cli.positive_float)
    return p


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], Config()),
        (["--preset", "quick"], Config(iters=3, seeds=(0,))),
        (["--preset", "quick", "--iters", "7"], Config(iters=7, seeds=(0,))),
        (["--iters", "7", "--preset", "quick"], Config(iters=7, seeds=(0,))),  # order-free
        (["--pre", "quick", "--it", "7"], Config(iters=7, seeds=(0,))),  # abbreviations
        (["--pre=quick", "--it=7", "--lr=0.5"], Config(iters=7, seeds=(0,), lr=0.5)),
    ],
)
def test_preset_fills_only_what_the_user_did_not_give(argv, expected):
    args = cli.parse_with_preset(parser(), argv, PRESETS)
    assert cli.config_from_args(Config, args) == expected


def test_config_from_args_values_win_and_unknown_fields_are_refused():
    args = cli.parse_with_preset(parser(), ["--iters", "4"], PRESETS)
    assert cli.config_from_args(Config, args, iters=9) == Config(iters=9)
    with pytest.raises(TypeError, match=r"Config has no field\(s\) \['nope'\]"):
        cli.config_from_args(Config, args, nope=1)


@pytest.mark.parametrize(
    "parse, text", [(cli.positive_int, "0"), (cli.positive_float, "nan"),
                    (cli.nonnegative_int, "-1"), (cli.comma_list(cli.positive_int), ",")],
)  # fmt: skip
def test_value_types_reject_bad_values(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_usage_errors_are_one_line_with_exit_2(capsys):
    with pytest.raises(SystemExit) as done:
        parser().parse_args(["--preset", "huge"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--preset" in err


def test_one_line_joins_a_multiline_message():
    assert cli.one_line(ValueError("a\n  b\tc")) == "a b c"


def test_importing_cli_does_not_import_torch():
    code = "import sys, stability.experiments.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_help_shows_each_default_once_as_typed():
    """Reference: the help text argparse prints, read back line by line."""
    parser = cli.OneLineParser(prog="p", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--norms", type=cli.comma_list(str), default=("bn", "wn"), help="norms")
    parser.add_argument("--depth", type=int, default=50, help="layers (default 50)")
    parser.add_argument("--seed", type=int, help="seed")
    parser.add_argument("--quiet", action="store_true", help="no output")
    parser.add_argument("--rate", type=float, default=0.5, help="rate in %% of the maximum")
    text = " ".join(parser.format_help().split())
    assert "norms (default: bn, wn)" in text and "('bn'" not in text
    assert "layers (default 50)" in text and text.count("default") == 3
    assert "seed -h" not in text and "seed (default" not in text
    assert "no output (default" not in text
    assert "rate in % of the maximum (default: 0.5)" in text


@pytest.mark.parametrize(
    "script",
    ["analyses/get_data.py", "analyses/deep_linear_divergence.py", "analyses/train.py"],
)
def test_script_help_and_bad_arguments_import_no_torch(script):
    """--help and a usage error are answered before torch is imported (instant)."""
    probe = (
        "import runpy, sys; sys.argv = [sys.argv[1], sys.argv[2]]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, code)"
    )
    for flag, code in (("--help", "0"), ("--no-such-flag", "2")):
        done = subprocess.run(
            [sys.executable, "-c", probe, script, flag], capture_output=True, text=True,
            cwd=ROOT, check=False,
        )  # fmt: skip
        assert done.stdout.split()[-2:] == ["False", code], done.stderr
