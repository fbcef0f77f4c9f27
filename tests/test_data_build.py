"""Tests for stability.paper.data.build: the data sets by name (Fashion-MNIST, CIFAR-10
pickles, PNG/JPEG ImageFolders written by the test), the ImageNet transform, subsets and
flat training sets. References are numpy and PIL operations."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data_support import REAL_FASHION_MNIST, isolate_paths, make_fashion, np_standardize
from PIL import Image

from stability.paper import data as D
from stability.paper import names


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    isolate_paths(tmp_path, monkeypatch)


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


def test_synthetic_never_used_implicitly(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.build_datasets()
    with pytest.raises(FileNotFoundError):
        D.build_datasets("fashion-mnist", data_dir=tmp_path)


def test_flat_training_set_matches_standardized_flat_and_synthetic_shape(tmp_path):
    ref = make_fashion(tmp_path / "fm", n_train=12)
    x, y = D.flat_training_set("fashion-mnist", data_dir=tmp_path / "fm")
    assert x.shape == (12, 784) and x.dtype == torch.float32
    z = np_standardize(ref["train"][0], ref["train"][0]).reshape(12, 784)
    np.testing.assert_allclose(x.numpy(), z, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), ref["train"][1])
    xs, ys = D.flat_training_set("synthetic", subset=7)
    assert xs.shape == (7, 784) and ys.shape == (7,) and ys.dtype == torch.int64
    first, _, _ = D.build_datasets("synthetic", subset=(7, 1), in_channels=1)
    assert torch.equal(xs[3], first[3][0].flatten())


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
    (tmp_path / "elsewhere").mkdir()
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
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        D.build_datasets("imagenet", data_dir=tmp_path / "nothing")
    listed = [line.strip() for line in str(err.value).splitlines()]
    assert str(tmp_path / "nothing") in listed and str(tmp_path / "nothing" / "imagenet") in listed
    assert "train/ and val/" in str(err.value) and "--data-dir" in str(err.value)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(names, "SYSTEM_FASHION_MNIST", str(REAL_FASHION_MNIST))
    train_ds, test_ds, info = D.build_datasets()
    assert info.root == REAL_FASHION_MNIST
    assert (info.train_size, info.test_size, info.num_classes) == (60000, 10000, 10)
    assert train_ds.images.shape == (60000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert torch.bincount(train_ds.labels).tolist() == [6000] * 10
    assert torch.bincount(test_ds.labels).tolist() == [1000] * 10
    x, y = next(iter(D.make_loader(train_ds, 256, train=True, seed=0, num_workers=0)))
    assert x.shape == (256, 1, 28, 28) and torch.isfinite(x).all()
