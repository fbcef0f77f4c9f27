"""Tests for stability.paper.data.files: the idx reader, the search for each data set,
downloads on request, and an explicit data dir that must exist.

Idx files are written by hand from the format spec; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_support import isolate_paths, make_fashion, write_idx

from stability.experiments.cli import OneLineParser, add_data_arguments
from stability.paper import data as D
from stability.paper import names

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    isolate_paths(tmp_path, monkeypatch)


# --------------------------------------------------------------------------- idx parsing


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "type_code, dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                         (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)  # fmt: skip
def test_read_idx_matches_hand_written_file(tmp_path, compress, type_code, dtype):
    rng = np.random.default_rng(1)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=(3, 4, 5), dtype=dtype, endpoint=True)
    else:
        array = rng.standard_normal((3, 4, 5)).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, type_code=type_code, compress=compress)
    got = D.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)
    got.flat[0] = 0  # writable


def test_read_idx_truncated_file_names_file(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", array, compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="size mismatch") as err:
        D.read_idx(path)
    assert str(path) in str(err.value)
    assert "1568" in str(err.value) and "1558" in str(err.value)  # expected vs found


def test_read_idx_truncated_gzip_and_header(tmp_path):
    array = np.zeros((4, 28, 28), dtype=np.uint8)
    gz = write_idx(tmp_path / "x-idx3-ubyte.gz", array)
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(ValueError, match="gzip") as err:
        D.read_idx(gz)
    assert str(gz) in str(err.value)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 4]))  # 3 dims declared, 1 given
    with pytest.raises(ValueError, match="truncated header") as err:
        D.read_idx(short)
    assert str(short) in str(err.value)


@pytest.mark.parametrize(
    "head", [b"\x01\x00\x08\x03", b"\x00\x00\x42\x03", b"PK\x03\x04", b"\x00\x00"]
)
def test_read_idx_bad_magic(tmp_path, head):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(head + b"\x00" * 32)
    with pytest.raises(ValueError, match="bad magic|not an idx file") as err:
        D.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_checks_ndim(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros((3, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected a 1-dimensional"):
        D.read_idx(path, ndim=1)


# --------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_data_dir_pixel_exact(tmp_path, compress):
    ref = make_fashion(tmp_path / "fm", compress=compress)
    for split in ("train", "test"):
        x, y = D.load_arrays("fashion-mnist", split, data_dir=tmp_path / "fm")
        assert x.dtype == torch.uint8 and x.shape == (len(ref[split][0]), 1, 28, 28)
        assert y.dtype == torch.int64
        np.testing.assert_array_equal(x[:, 0].numpy(), ref[split][0])
        np.testing.assert_array_equal(y.numpy(), ref[split][1])
    x, y = D.load_arrays("fashion-mnist", "train", data_dir=tmp_path / "fm", subset=5)
    np.testing.assert_array_equal(x[:, 0].numpy(), ref["train"][0][:5])


@pytest.mark.parametrize(
    "where", ["env", "env/fashion-mnist", "env/FashionMNIST/raw", "cache", "system"]
)
def test_fashion_mnist_search_locations(tmp_path, monkeypatch, where):
    env = tmp_path / "env"
    monkeypatch.setenv("NORMSTAB_DATA", str(env))
    env.mkdir()
    if where.startswith("env"):
        directory = tmp_path / where
    elif where == "cache":
        directory = tmp_path / "xdg-cache" / "normstab" / "fashion-mnist"
    else:
        directory = tmp_path / "system"
        monkeypatch.setattr(names, "SYSTEM_FASHION_MNIST", str(directory))
    ref = make_fashion(directory, seed=3)
    x, y = D.load_arrays("fashion-mnist", "test")
    np.testing.assert_array_equal(x[:, 0].numpy(), ref["test"][0])
    np.testing.assert_array_equal(y.numpy(), ref["test"][1])
    _, _, info = D.build_datasets()  # the default dataset is fashion-mnist
    assert info.root == directory


def test_cache_respects_home_without_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.cache_dir() == tmp_path / "home" / ".cache" / "normstab"


def test_search_order_data_dir_before_env_before_cache(tmp_path, monkeypatch):
    first = make_fashion(tmp_path / "explicit", seed=10)
    second = make_fashion(tmp_path / "env", seed=11)
    make_fashion(tmp_path / "xdg-cache" / "normstab" / "fashion-mnist", seed=12)
    monkeypatch.setenv("NORMSTAB_DATA", str(tmp_path / "env"))
    x, _ = D.load_arrays("fashion-mnist", "train", data_dir=tmp_path / "explicit")
    np.testing.assert_array_equal(x[:, 0].numpy(), first["train"][0])
    x, _ = D.load_arrays("fashion-mnist", "train")
    np.testing.assert_array_equal(x[:, 0].numpy(), second["train"][0])


def test_corrupt_file_in_data_dir_raises_value_error(tmp_path):
    make_fashion(tmp_path / "fm")
    bad = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[: len(raw) - 100]))
    with pytest.raises(ValueError, match="size mismatch") as err:
        D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm")
    assert str(bad) in str(err.value)


def test_missing_fashion_mnist_lists_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSTAB_DATA", str(tmp_path / "env"))
    data_dir = tmp_path / "mine"
    data_dir.mkdir()  # exists but holds nothing: the search goes on
    cache = tmp_path / "xdg-cache" / "normstab" / "fashion-mnist"
    expected = [
        data_dir, data_dir / "FashionMNIST" / "raw",
        data_dir / "fashion-mnist", data_dir / "fashion-mnist" / "FashionMNIST" / "raw",
        tmp_path / "env", tmp_path / "env" / "FashionMNIST" / "raw",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "env" / "fashion-mnist" / "FashionMNIST" / "raw",
        cache, cache / "FashionMNIST" / "raw",
        tmp_path / "no-system-copy",
    ]  # fmt: skip
    for call in (
        lambda: D.load_arrays("fashion-mnist", "train", data_dir=data_dir),
        lambda: D.build_datasets("fashion-mnist", data_dir=data_dir),
        lambda: D.standardized_flat(data_dir=data_dir),
    ):
        with pytest.raises(FileNotFoundError) as err:
            call()
        msg = str(err.value)
        listed = [line.strip() for line in msg.splitlines()]
        for path in expected:
            assert str(path) in listed, f"{path} missing from:\n{msg}"
        assert "apt-get install dataset-fashion-mnist" in msg
        assert "--download" in msg and "--data-dir" in msg


def test_images_without_labels_is_not_found(tmp_path):
    make_fashion(tmp_path / "fm")
    (tmp_path / "fm" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError):
        D.load_arrays("fashion-mnist", "train", data_dir=tmp_path / "fm")


def test_download_only_when_asked(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root, train=True, download=False, **kwargs):
            calls.append((Path(root), train, download))
            make_fashion(Path(root) / "FashionMNIST" / "raw", seed=5)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    with pytest.raises(FileNotFoundError):
        D.build_datasets("fashion-mnist", data_dir=tmp_path / "dl")
    assert calls == []
    _, test_ds, info = D.build_datasets("fashion-mnist", data_dir=tmp_path / "dl", download=True)
    assert calls and all(root == tmp_path / "dl" and dl for root, _, dl in calls)
    assert info.root == tmp_path / "dl" / "FashionMNIST" / "raw"
    assert len(test_ds) == 8
    calls.clear()  # found now: no second download
    D.build_datasets("fashion-mnist", data_dir=tmp_path / "dl", download=True)
    assert calls == []
    # Without data_dir the download goes to the user cache.
    D.load_arrays("fashion-mnist", "train", download=True)
    assert calls[0][0] == tmp_path / "xdg-cache" / "normstab" / "fashion-mnist"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        D.build_datasets("mnist-but-wrong")
    for name in D.DATASETS:
        assert name in str(err.value)
    assert D.canonical_name("Fashion_MNIST") == "fashion-mnist"
    assert D.canonical_name("CIFAR-10") == "cifar10"
    assert D.DATASETS[0] == "fashion-mnist"
    with pytest.raises(ValueError, match="split"):
        D.load_arrays("fashion-mnist", "validation")


# --------------------------------------------------------------------------- an explicit data dir


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "imagenet", "synthetic"])
def test_missing_explicit_data_dir_is_an_error_naming_it(tmp_path, monkeypatch, name):
    """Other data (here a complete copy in $NORMSTAB_DATA) is never used instead."""
    make_fashion(tmp_path / "env")
    monkeypatch.setenv(names.DATA_ENV_VAR, str(tmp_path / "env"))
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match="does not exist or is not a directory") as err:
        D.build_datasets(name, data_dir=missing)
    assert str(missing) in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not missing.exists()


@pytest.mark.parametrize("bad_kind", ["missing", "a file"])
def test_missing_explicit_data_dir_for_arrays_and_search(tmp_path, monkeypatch, bad_kind):
    make_fashion(tmp_path / "env")
    monkeypatch.setenv(names.DATA_ENV_VAR, str(tmp_path / "env"))
    assert D.load_arrays("fashion-mnist", "test")[0].shape[0] == 8  # found without data_dir
    bad = tmp_path / "typo"
    if bad_kind == "a file":
        bad.write_text("not a folder")
    for call in (
        lambda: D.load_arrays("fashion-mnist", "test", data_dir=bad),
        lambda: D.standardized_flat(data_dir=bad),
        lambda: D.flat_training_set("cifar10", data_dir=bad),
        lambda: D.fashion_mnist_candidates(bad),
    ):
        with pytest.raises(FileNotFoundError, match="does not exist or is not a directory") as err:
            call()
        assert str(bad) in str(err.value)
    if bad_kind == "a file":  # a file cannot take a download either
        with pytest.raises(FileNotFoundError):
            D.given_data_dir(bad, download=True)
    else:  # a download creates a missing folder
        assert D.given_data_dir(bad, download=True) == bad
    assert D.given_data_dir(None) is None


def test_train_script_rejects_missing_data_dir(tmp_path):
    missing = tmp_path / "nonexistent"
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "analyses/train.py", "--model", "cifar10_nv", "--norm", "wn",
         "--data-dir", str(missing), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in done.stderr
    assert not out.exists() and not missing.exists()


def test_cli_arguments(tmp_path, capsys):
    parser = add_data_arguments(OneLineParser(prog="p"))
    args = parser.parse_args(["--data-dir", str(tmp_path), "--download", "--subset", "5"])
    # --dataset left out is None: the config's default (fashion-mnist) then applies.
    assert (args.dataset, args.data_dir, args.download, args.subset) == (None, tmp_path, True, 5)
    assert parser.parse_args(["--dataset", "CIFAR-10"]).dataset == "cifar10"
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--data-dir", str(tmp_path / "typo")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "typo") in err
