"""Tests for stability.paper.data.datasets: the paper's crop and flip on whole batches
(brute-force references over every crop), seeding, and the synthetic data set."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from data_support import candidate_crops, isolate_paths, make_fashion, np_standardize

from stability.paper import data as D


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    isolate_paths(tmp_path, monkeypatch)


# --------------------------------------------------------------------------- transforms


def test_test_crop_is_central_fashion_mnist(tmp_path):
    ref = make_fashion(tmp_path / "fm")
    _, test_ds, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm")
    assert test_ds.padding == 2  # 28 -> pad to 32 -> central 28 = the original image
    expected = np_standardize(ref["train"][0], ref["test"][0])
    for i in range(len(test_ds)):
        x, y = test_ds[i]
        assert x.shape == (1, 28, 28) and int(y) == ref["test"][1][i]
        np.testing.assert_allclose(x[0].numpy(), expected[i], atol=1e-5)


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
            candidates = candidate_crops(z[i], 28)
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
        dist = [np.abs(xa[i].numpy() - c).max() for c in candidate_crops(z[i][None], 28)]
        assert min(dist) < 1e-5


def test_tensor_dataset_pickles_without_its_generator(tmp_path):
    make_fashion(tmp_path / "fm")
    train_ds, _, _ = D.build_datasets("fashion-mnist", data_dir=tmp_path / "fm", seed=9)
    first = train_ds[0][0]
    copy = pickle.loads(pickle.dumps(train_ds))
    assert copy._rng is None and torch.equal(copy[0][0], first)  # restarts from the seed


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
