"""Shared pieces of the training tests (tests/test_train_*.py): tiny data, configs, readers.

Data is a tiny Fashion-MNIST-format idx set written here (so the real augmentation path
runs) or the named ``synthetic`` data set; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stability.paper.train.config import TrainConfig
from stability.records import runs as R

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "train.py"


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file (the MNIST format): magic 0 0 0x08 ndim, big-endian sizes, uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_tiny_fmnist(root: Path) -> Path:
    """A Fashion-MNIST-format data set of 64 train / 16 test random 28x28 images."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


def tiny_config(out: Path, data_dir: Path | None = None, **overrides) -> TrainConfig:
    """cifar10-nv on the tiny idx data: 3 steps of 4 per epoch, 2 epochs, CPU."""
    values = dict(
        model="cifar10_nv",
        norm="bn",
        dataset="fashion-mnist",
        data_dir=str(data_dir) if data_dir is not None else None,
        subset=(12, 4),
        epochs=2,
        batch_size=4,
        lr=0.01,
        final_lr=1e-4,
        schedule="linear",
        weight_every=2,
        check_every=2,
        device="cpu",
        out=str(out),
    )
    values.update(overrides)
    return TrainConfig(**values)


def history(run_dir: Path) -> pd.DataFrame:
    """history.csv without the wall-clock column."""
    return pd.read_csv(Path(run_dir) / R.HISTORY).drop(columns="seconds")


def records(run_dir: Path) -> pd.DataFrame:
    """Every record part of the run as one table."""
    return pd.read_parquet(Path(run_dir) / R.RECORDS)


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise-equal history (but the seconds) and records."""
    pd.testing.assert_frame_equal(history(a), history(b))
    pd.testing.assert_frame_equal(records(a), records(b))


def cli_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    """analyses/train.py arguments for one epoch of 2 steps on the tiny data."""
    return [
        "--model", "cifar10_nv", "--norm", "wn", "--preset", "smoke", "--data-dir",
        str(data_dir), "--subset", "8", "--test-subset", "4", "--batch-size", "4",
        "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a script subprocess: one thread, the repository importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path} | extra


def run_script(*args: str, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """``python analyses/train.py ARGS`` in a subprocess, output captured as text."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=script_env(), capture_output=True,
        text=True, timeout=timeout, **popen,
    )  # fmt: skip
