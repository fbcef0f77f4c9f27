"""Tests for the ``analyses/train.py`` script, run as a subprocess (as a user runs it).

References: the exit status, stdout and stderr of the process; the run directory it
leaves (stability.records.runs); an uninterrupted range of steps after a kill + resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from train_support import (
    ROOT,
    SCRIPT,
    cli_args,
    history,
    make_tiny_fmnist,
    records,
    run_script,
    script_env,
)

from stability.paper.train.checkpoint import load_checkpoint
from stability.records import runs as R


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory):
    return make_tiny_fmnist(tmp_path_factory.mktemp("fmnist"))


def _one_line_error(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_help_lists_the_options_without_importing_torch():
    cmd = [sys.executable, "-X", "importtime", str(SCRIPT), "--help"]
    done = subprocess.run(cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and "--preset {paper,mini,smoke}" in done.stdout
    assert "--resume" in done.stdout and "--record-include" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "stability.paper.train.options" in imported  # the log is what it should be
    assert imported.isdisjoint({"torch", "torchvision", "pandas"})


def test_an_out_under_a_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "file").write_text("user data")
    done = run_script("--model", "cifar10_nv", "--norm", "bn", "--out", str(tmp_path / "file/x"))
    _one_line_error(done, "is a file, not a folder")


def test_force_never_sets_aside_a_plain_file(tmp_path):
    (tmp_path / "file").write_text("user data")
    done = run_script("--model", "cifar10_nv", "--norm", "bn", "--out", str(tmp_path / "file"),
                      "--force")  # fmt: skip
    _one_line_error(done, "is a file, not a run directory")
    assert (tmp_path / "file").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_cli_trains_refuses_an_existing_out_and_resumes(tmp_path, tiny_fmnist):
    """Stop at --max-steps (the resume command is printed), refuse the existing --out and a
    changed --lr on resume, then resume to the end."""
    out = tmp_path / "run"
    args = cli_args(out, tiny_fmnist, "--record-include", "conv1")
    args[args.index("--epochs") + 1] = "2"
    done = run_script(*args, "--max-steps", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    command = f"python analyses/train.py --out {out} --resume"
    assert f"stopped (max_steps); resume with: {command}" in done.stdout
    stored = json.loads((out / R.CONFIG).read_text())
    assert (stored["preset"], stored["subset"], stored["final_lr"]) == ("smoke", [8, 4], 1e-4)
    _one_line_error(run_script(*args), "already holds a run")
    _one_line_error(run_script("--out", str(out), "--resume", "--lr", "0.5"), "cannot change --lr")
    done = run_script("--out", str(out), "--resume", "--no-progress", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished: 2 epochs, 4 steps" in done.stdout and "resume with" not in done.stdout
    assert history(out)["epoch"].tolist() == [1, 2]
    assert set(records(out)["layer"]) == {"conv1", "(loss)"}  # --record-include, the loss


@pytest.mark.slow
def test_cli_sigterm_exits_143_and_resumes(tmp_path, tiny_fmnist):
    """A real SIGTERM to the CLI process: checkpoint, exit status 143, then resume."""
    out = tmp_path / "run"
    args = cli_args(out, tiny_fmnist)
    args[args.index("--epochs") + 1] = "50"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=script_env(),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / R.HISTORY).exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until the first epoch is done
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert f"resume with: python analyses/train.py --out {out} --resume" in stdout
    status = json.loads((out / R.STATUS).read_text())
    assert (status["state"], status["reason"]) == ("stopped", "SIGTERM")
    done = int(status["step"])
    assert load_checkpoint(R.RunDir(out))["progress"]["step"] == done
    steps = records(out)["step"]
    assert steps.max() == done - 1 and steps.nunique() == done  # flushed, contiguous
    resumed = run_script("--out", str(out), "--resume", "--no-progress", "--max-steps",
                         str(done + 3))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = records(out)["step"]
    assert sorted(steps.unique()) == list(range(done + 3))  # continues, nothing truncated


@pytest.mark.slow
def test_sigkill_leaves_a_readable_prefix_and_resumes(tmp_path, tiny_fmnist):
    """SIGKILL mid-training (no chance to clean up): the record parts and history written so
    far are readable, the last complete checkpoint loads, and --resume continues with
    contiguous steps from it."""
    out = tmp_path / "run"
    args = cli_args(out, tiny_fmnist)
    args[args.index("--epochs") + 1] = "50"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=script_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / R.HISTORY).exists() and len(history(out)) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kept = history(out)
    assert len(kept) >= 2
    steps = records(out)["step"]
    assert sorted(steps.unique()) == list(range(int(steps.max()) + 1))  # a contiguous prefix
    checkpoint_step = load_checkpoint(R.RunDir(out))["progress"]["step"]
    assert checkpoint_step >= int(kept["step"].iloc[1])
    target = checkpoint_step + 3
    done = run_script("--out", str(out), "--resume", "--no-progress", "--max-steps", str(target))
    assert done.returncode == 0, done.stderr[-3000:]
    steps = records(out)["step"]
    assert sorted(steps.unique()) == list(range(target))  # continues, nothing lost or doubled


def _torchrun(args: list[str], **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(SCRIPT), *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=script_env(**env), capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path, tiny_fmnist):
    """torchrun with 2 gloo processes: per-rank record parts, one history."""
    out = tmp_path / "ddp"
    done = _torchrun(cli_args(out, tiny_fmnist))
    assert done.returncode == 0, done.stderr[-3000:]
    frame = records(out)
    assert sorted(frame["rank"].unique()) == [0, 1]
    assert len(history(out)) == 1
    meta = json.loads((out / R.CONFIG).read_text())["meta"]
    assert (meta["world_size"], meta["batch_per_process"], meta["steps_per_epoch"]) == (2, 2, 2)


@pytest.mark.slow
def test_ddp_nan_on_one_rank_stops_every_rank(tmp_path, tiny_fmnist):
    """torchrun, 2 gloo processes; rank 1 alone sees a non-finite loss from its 2nd step on
    (fault injected through a sitecustomize that wraps LossWatch.update on rank 1). Both
    ranks must stop together and cleanly: exit 0, state "diverged", divergence.json, and
    record parts of both ranks ending at the same step."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    from stability.paper.train import meters\n"
        "    original = meters.LossWatch.update\n"
        "    calls = []\n"
        "    def update(self, loss):\n"
        "        calls.append(1)\n"
        "        return original(self, loss * float('nan') if len(calls) >= 2 else loss)\n"
        "    meters.LossWatch.update = update\n"
    )
    out = tmp_path / "ddp"
    args = cli_args(out, tiny_fmnist, "--check-every", "1")
    args[args.index("--epochs") + 1] = "4"
    path = os.pathsep.join([str(inject), str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = _torchrun(args, PYTHONPATH=path)
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads((out / R.STATUS).read_text())
    assert status["state"] == "diverged"
    assert (out / "divergence.json").exists()
    frame = records(out)
    last = frame.groupby("rank")["step"].max()
    assert sorted(last.index) == [0, 1] and last.nunique() == 1  # stopped at the same step
    names = frame.groupby("rank")["layer"].agg(lambda v: tuple(sorted(set(v))))
    assert names.loc[0] == names.loc[1]  # identical layer names on both ranks
    assert int(last.iloc[0]) < 4 * 2 - 1  # stopped early (4 epochs x 2 steps otherwise)
