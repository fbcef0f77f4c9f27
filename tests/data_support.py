"""Shared pieces of the data tests (tests/test_data_*.py): idx writers, tiny data, paths.

Every data set is written by the test itself (idx files by hand from the format spec);
the references are numpy computations, not the module under test.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from stability.paper import names

REAL_FASHION_MNIST = Path(names.SYSTEM_FASHION_MNIST)

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08, compress: bool = True):
    """Write ``array`` as an idx file, by hand, following the format's definition."""
    header = bytes([0, 0, type_code, array.ndim])
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + np.asarray(array).astype(IDX_DTYPES[type_code]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_fashion(
    directory: Path, n_train: int = 20, n_test: int = 8, seed: int = 0, compress: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny Fashion-MNIST look-alike (28 x 28 uint8, labels 0..9) in ``directory``."""
    rng = np.random.default_rng(seed)
    out = {}
    ext = ".gz" if compress else ""
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images, compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress=compress)
        out[split] = (images, labels)
    return out


def np_standardize(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-pixel standardization with training statistics, numpy float64 reference."""
    t = train.astype(np.float64) / 255.0
    mean, std = t.mean(0), np.maximum(t.std(0), 1.0 / 255.0)
    return (x.astype(np.float64) / 255.0 - mean) / std


def candidate_crops(padded: np.ndarray, size: int) -> list[np.ndarray]:
    """Every crop (and its mirror image) of a C x H x W array, brute force."""
    out = []
    for top in range(padded.shape[1] - size + 1):
        for left in range(padded.shape[2] - size + 1):
            crop = padded[:, top : top + size, left : left + size]
            out += [crop, crop[:, :, ::-1]]
    return out


def isolate_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user cache, no $NORMSTAB_DATA, and a system directory that does not exist.

    Each data test module calls it from an autouse fixture.
    """
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(names.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(names, "SYSTEM_FASHION_MNIST", str(tmp_path / "no-system-copy"))
