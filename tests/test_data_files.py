"""Tests for stability.paper.data: idx parsing, data discovery, the paper's transforms, loaders.

Every data set here is written by the test itself (idx files by hand from the format
spec, CIFAR-10 pickles, PNG/JPEG ImageFolders); nothing is downloaded. The references
are numpy computations and PIL operations, not the module under test.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stability.paper import data as D

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08, compress: bool = True):
    """Write ``array`` as an idx file, by hand, following the format's definition."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim])
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + np.asarray(array).astype(dtypes[type_code]).tobytes()
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


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    """No user cache, no $NORMSTAB_DATA, and a system directory that does not exist."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("NORMSTAB_DATA", raising=False)
    monkeypatch.setattr(D, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")


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
        monkeypatch.setattr(D, "SYSTEM_FASHION_MNIST", directory)
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


# --------------------------------------------------------------------------- transforms


def test_standardization_per_pixel_on_training_set(tmp_path):
    ref = make_fashion(tmp_path / "fm", n_train=64, n_test=16)
    train_ds, test_ds, info = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm")
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 28)
    z = train_ds.standardized().numpy()[:, 0].astype(np.float64)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(z, np_standardize(ref["train"][0], ref["train"][0]), atol=1e-5)
    # The test split uses the training statistics.
    zt = test_ds.standardized().numpy()[:, 0]
    np.testing.assert_allclose(zt, np_standardize(ref["train"][0], ref["test"][0]), atol=1e-5)
    # standardized_flat: the same numbers, N x 784, also for the test split.
    x, y = D.standardized_flat("fashion-mnist", "test", data_dir=tmp_path / "fm")
    assert x.shape == (16, 784) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), zt.reshape(16, 784), atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), ref["test"][1])
    # A subset keeps the statistics of the full training split.
    xs, _ = D.standardized_flat("fashion-mnist", "train", data_dir=tmp_path / "fm", subset=4)
    np.testing.assert_allclose(xs.numpy(), z[:4].reshape(4, 784), atol=1e-5)


def test_test_crop_is_central_fashion_mnist(tmp_path):
    ref = make_fashion(tmp_path / "fm")
    _, test_ds, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm")
    assert test_ds.padding == 2  # 28 -> pad to 32 -> central 28 = the original image
    expected = np_standardize(ref["train"][0], ref["test"][0])
    for i in range(len(test_ds)):
        x, y = test_ds[i]
        assert x.shape == (1, 28, 28) and int(y) == ref["test"][1][i]
        np.testing.assert_allclose(x[0].numpy(), expected[i], atol=1e-5)


def _candidate_crops(padded: np.ndarray, size: int) -> list[np.ndarray]:
    """Every crop (and its mirror image) of a C x H x W array, brute force."""
    out = []
    for top in range(padded.shape[1] - size + 1):
        for left in range(padded.shape[2] - size + 1):
            crop = padded[:, top : top + size, left : left + size]
            out += [crop, crop[:, :, ::-1]]
    return out


def test_train_crop_and_flip_cifar_shape():
    gen = np.random.default_rng(4)
    images = torch.from_numpy(gen.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8))
    labels = torch.arange(6)
    mean, std = D.pixel_stats(images)
    ds = D.TensorImageDataset(images, labels, mean, std, train=True, seed=7)
    assert (ds.crop_size, ds.padding) == (28, 0)  # CIFAR-10: 32 -> 28, no padding
    z = np_standardize(images.numpy(), images.numpy())
    tops_flips = set()
    for _ in range(30):
        batch = ds.__getitems__(list(range(6)))
        for i, (x, y) in enumerate(batch):
            assert x.shape == (3, 28, 28) and int(y) == i
            candidates = _candidate_crops(z[i], 28)
            dist = [np.abs(x.numpy() - c).max() for c in candidates]
            k = int(np.argmin(dist))
            assert dist[k] < 1e-5
            tops_flips.add(k)
    flips = {k % 2 for k in tops_flips}
    assert flips == {0, 1}, "both flipped and unflipped crops must occur"
    assert len({k // 2 for k in tops_flips}) > 10, "crop offsets must vary"
    # Central crop for the test split: direct slicing.
    test_ds = D.TensorImageDataset(images, labels, mean, std, train=False)
    x = torch.stack([test_ds[i][0] for i in range(6)]).numpy()
    np.testing.assert_allclose(x, z[:, :, 2:30, 2:30], atol=1e-5)


def test_train_augmentation_is_seeded(tmp_path):
    ref = make_fashion(tmp_path / "fm")
    a, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm", seed=3)
    b, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm", seed=3)
    c, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm", seed=4)
    idx = list(range(20))
    xa = torch.stack([x for x, _ in a.__getitems__(idx)])
    xb = torch.stack([x for x, _ in b.__getitems__(idx)])
    xc = torch.stack([x for x, _ in c.__getitems__(idx)])
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    # Fashion-MNIST: each training sample is a crop of the zero-padded 32 x 32 image.
    z = np.pad(np_standardize(ref["train"][0], ref["train"][0]), ((0, 0), (2, 2), (2, 2)))
    for i in range(20):
        dist = [np.abs(xa[i].numpy() - c).max() for c in _candidate_crops(z[i][None], 28)]
        assert min(dist) < 1e-5


def test_image_size_override_and_subset(tmp_path):
    ref = make_fashion(tmp_path / "fm")
    train_ds, test_ds, info = D.build_datasets(
        "fashion-mnist", data_dir=tmp_path / "fm", image_size=16, subset=(5, 3)
    )
    assert (info.image_size, info.train_size, info.test_size) == (16, 5, 3)
    assert train_ds[0][0].shape == (1, 16, 16)
    z = np_standardize(ref["train"][0], ref["test"][0][:3])
    np.testing.assert_allclose(test_ds[1][0][0].numpy(), z[1, 6:22, 6:22], atol=1e-5)
    _, t2, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm", subset=4)
    assert len(t2) == 4 and torch.equal(t2.labels, torch.from_numpy(ref["test"][1][:4]).long())
    with pytest.raises(ValueError, match="image_size"):
        D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm", image_size=29)


# --------------------------------------------------------------------------- cifar10


def test_cifar10_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "c" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = np.random.default_rng(2)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = gen.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = [int(v) for v in gen.integers(0, 10, size=4)]
        batches[name] = (d, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": d, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)

    x, y = D.load_arrays("cifar10", "train", data_dir=tmp_path / "c")
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(x.numpy(), expected.reshape(20, 3, 32, 32))
    assert y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    train_ds, test_ds, info = D.build_datasets("cifar10", data_dir=tmp_path / "c")
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 28)
    assert (len(train_ds), len(test_ds)) == (20, 4)
    z = np_standardize(
        expected.reshape(20, 3, 32, 32), batches["test_batch"][0].reshape(4, 3, 32, 32)
    )
    np.testing.assert_allclose(test_ds[2][0].numpy(), z[2, :, 2:30, 2:30], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        D.build_datasets("cifar10", data_dir=tmp_path / "elsewhere")


# --------------------------------------------------------------------------- imagenet


def _write_image_folder(root: Path) -> dict[str, list[Path]]:
    gen = np.random.default_rng(8)
    written: dict[str, list[Path]] = {"train": [], "val": []}
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = (300, 260) if i % 2 else (240, 320)
                img = Image.fromarray(gen.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
                ext = "jpg" if split == "train" and i == 0 else "png"
                path = root / split / cls / f"{i}.{ext}"
                img.save(path)
                written[split].append(path)
    return written


@pytest.mark.parametrize("image_size", [None, 64])
def test_imagenet_image_folder(tmp_path, image_size):
    written = _write_image_folder(tmp_path / "in")
    train_ds, test_ds, info = D.build_datasets(
        "imagenet", data_dir=tmp_path / "in", image_size=image_size
    )
    size = image_size or 224
    assert (info.num_classes, info.in_channels, info.image_size) == (2, 3, size)
    assert (len(train_ds), len(test_ds)) == (6, 4)
    for i in range(len(train_ds)):
        x, y = train_ds[i]
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert int(y) == (0 if i < 3 else 1)
    # Validation: rescale to R x R, central crop, [-1, 1]; PIL reference.
    resize = round(size * 256 / 224)
    off = (resize - size) // 2
    for i, path in enumerate(sorted(written["val"])):
        img = Image.open(path).convert("RGB").resize((resize, resize), Image.BILINEAR)
        ref = np.asarray(img.crop((off, off, off + size, off + size)), dtype=np.float64)
        ref = ref.transpose(2, 0, 1) / 255.0 * 2.0 - 1.0
        np.testing.assert_allclose(test_ds[i][0].numpy(), ref, atol=1e-5)


def test_imagenet_transform_steps_follow_the_paper():
    from torchvision import transforms as T

    train = [type(t) for t in D.imagenet_transform(True).transforms]
    assert train == [T.Resize, T.RandomCrop, T.ColorJitter, T.RandomHorizontalFlip,
                     T.ToTensor, T.Normalize]  # fmt: skip
    assert D.imagenet_transform(True).transforms[0].size == (256, 256)
    assert D.imagenet_transform(False, 64).transforms[0].size == (73, 73)
    test = [type(t) for t in D.imagenet_transform(False).transforms]
    assert test == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]


def test_imagenet_subset_is_evenly_spaced_and_missing_is_error(tmp_path):
    _write_image_folder(tmp_path / "in")
    train_ds, _, info = D.build_datasets("imagenet", data_dir=tmp_path / "in", subset=2)
    assert info.train_size == 2
    assert sorted(int(train_ds[i][1]) for i in range(2)) == [0, 1]  # both classes kept
    with pytest.raises(FileNotFoundError) as err:
        D.build_datasets("imagenet", data_dir=tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(err.value)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_and_shaped():
    a, at, info = D.build_datasets(
        "synthetic", image_size=12, in_channels=2, num_classes=5, subset=(6, 3), seed=1
    )
    b, _, _ = D.build_datasets(
        "synthetic", image_size=12, in_channels=2, num_classes=5, subset=10, seed=1
    )
    c, _, _ = D.build_datasets(
        "synthetic", image_size=12, in_channels=2, num_classes=5, subset=6, seed=2
    )
    assert (info.num_classes, info.in_channels, info.image_size, info.root) == (5, 2, 12, None)
    assert (len(a), len(at), len(b)) == (6, 3, 10)
    for i in range(6):
        xa, ya = a[i]
        xb, yb = b[i]  # the same sample whatever the length
        assert xa.shape == (2, 12, 12) and 0 <= int(ya) < 5
        assert torch.equal(xa, xb) and int(ya) == int(yb)
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], at[0][0])  # train and test differ
    assert torch.equal(a.labels, torch.stack([a[i][1] for i in range(6)]))
    with pytest.raises(ValueError, match="synthetic"):
        D.build_datasets("fashion-mnist", num_classes=3)


def test_synthetic_never_used_implicitly(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.build_datasets()
    with pytest.raises(FileNotFoundError):
        D.build_datasets("fashion-mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------- loaders


def _order(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_loader_seeded_order_and_drop_last():
    ds = torch.utils.data.TensorDataset(torch.zeros(50, 1), torch.arange(50))
    first = _order(D.make_loader(ds, 8, train=True, seed=5, num_workers=0))
    again = _order(D.make_loader(ds, 8, train=True, seed=5, num_workers=0))
    other = _order(D.make_loader(ds, 8, train=True, seed=6, num_workers=0))
    assert first == again and first != other
    assert len(first) == 48 and len(set(first)) == 48  # drop_last for training
    test = D.make_loader(ds, 8, train=False, seed=5, num_workers=0)
    assert _order(test) == list(range(50))
    assert D.make_loader(ds, 8, train=False, device="cpu", num_workers=0).pin_memory is False


def test_loader_with_worker_repeats_augmentation(tmp_path):
    make_fashion(tmp_path / "fm", n_train=40)
    train_ds, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm")
    assert D.default_num_workers(train_ds) == 0

    def epoch(seed):
        loader = D.make_loader(train_ds, 16, train=True, seed=seed, num_workers=1)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert len(a) == 2 and a[0][0].shape == (16, 1, 28, 28) and a[0][1].dtype == torch.int64
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True)
    )
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c, strict=True))


def test_loader_distributed_sampler_explicit_ranks():
    ds = torch.utils.data.TensorDataset(torch.zeros(21, 1), torch.arange(21))
    shards = []
    for rank in range(2):
        loader = D.make_loader(ds, 4, train=False, seed=0, num_workers=0, num_replicas=2, rank=rank)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        shards.append(_order(loader))
    assert set(shards[0]) | set(shards[1]) == set(range(21))  # evaluation sees everything
    train = [
        D.make_loader(ds, 2, train=True, seed=3, num_workers=0, num_replicas=2, rank=r)
        for r in range(2)
    ]
    orders = [_order(t) for t in train]
    assert not set(orders[0]) & set(orders[1])  # disjoint shards
    assert orders[0] == _order(
        D.make_loader(ds, 2, train=True, seed=3, num_workers=0, num_replicas=2, rank=0)
    )
    plain = D.make_loader(ds, 4, train=True, seed=0, num_workers=0)
    assert not isinstance(plain.sampler, torch.utils.data.DistributedSampler)
    with pytest.raises(ValueError):
        D.make_loader(ds, 4, train=True, distributed=False, num_replicas=2, rank=0)


def test_loader_distributed_when_group_initialized(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", world_size=1, rank=0)
    try:
        ds = torch.utils.data.TensorDataset(torch.zeros(10, 1), torch.arange(10))
        loader = D.make_loader(ds, 4, train=True, seed=0, num_workers=0)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        assert loader.sampler.num_replicas == 1 and loader.sampler.shuffle
        off = D.make_loader(ds, 4, train=True, seed=0, num_workers=0, distributed=False)
        assert not isinstance(off.sampler, torch.utils.data.DistributedSampler)
    finally:
        dist.destroy_process_group()


def test_tensor_dataset_pickles_without_its_generator(tmp_path):
    make_fashion(tmp_path / "fm")
    train_ds, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm", seed=9)
    first = train_ds[0][0]
    copy = pickle.loads(pickle.dumps(train_ds))
    assert copy._rng is None and torch.equal(copy[0][0], first)  # restarts from the seed


@pytest.mark.gpu
def test_loader_pins_memory_for_cuda(tmp_path):
    make_fashion(tmp_path / "fm")
    train_ds, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm")
    loader = D.make_loader(train_ds, 4, train=True, device="cuda", num_workers=0)
    assert loader.pin_memory
    x, y = next(iter(loader))
    assert x.is_pinned() and y.is_pinned()


def test_default_num_workers_from_cpus(monkeypatch):
    monkeypatch.setattr(D, "_usable_cpus", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    ds = torch.utils.data.TensorDataset(torch.zeros(2))
    assert D.default_num_workers(ds) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert D.default_num_workers(ds) == 3
    monkeypatch.setattr(D, "_usable_cpus", lambda: 1)
    assert D.default_num_workers(ds) == 0


def test_cli_arguments():
    parser = D.add_data_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--data-dir", "/x", "--download", "--subset", "5"])
    assert (args.dataset, args.data_dir, args.download, args.subset) == (
        "fashion-mnist", Path("/x"), True, 5,
    )  # fmt: skip
    assert parser.parse_args(["--dataset", "CIFAR-10"]).dataset == "cifar10"


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(D, "SYSTEM_FASHION_MNIST", REAL_FASHION_MNIST)
    train_ds, test_ds, info = D.build_datasets()
    assert info.root == REAL_FASHION_MNIST
    assert (info.train_size, info.test_size, info.num_classes) == (60000, 10000, 10)
    assert train_ds.images.shape == (60000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert torch.bincount(train_ds.labels).tolist() == [6000] * 10
    assert torch.bincount(test_ds.labels).tolist() == [1000] * 10
    x, y = next(iter(D.make_loader(train_ds, 256, train=True, seed=0, num_workers=0)))
    assert x.shape == (256, 1, 28, 28) and torch.isfinite(x).all()
