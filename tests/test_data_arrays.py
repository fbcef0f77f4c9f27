"""Tests for stability.paper.data.arrays: raw splits and per-pixel standardization,
against numpy float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_support import isolate_paths, make_fashion, np_standardize

from stability.paper import data as D


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    isolate_paths(tmp_path, monkeypatch)


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


def test_pixel_stats_per_position_across_chunks_with_floor():
    gen = np.random.default_rng(1)
    images = gen.integers(0, 256, size=(37, 2, 5, 4), dtype=np.uint8)
    images[:, 1, 0, 0] = 17  # a constant pixel: its deviation is raised to 1/255
    mean, std = D.pixel_stats(torch.from_numpy(images), chunk=8)  # 37 = 4 chunks + 5
    ref = images.astype(np.float64) / 255.0
    assert mean.shape == std.shape == (2, 5, 4) and mean.dtype == torch.float32
    np.testing.assert_allclose(mean.numpy(), ref.mean(0), atol=1e-6)
    np.testing.assert_allclose(std.numpy(), np.maximum(ref.std(0), 1 / 255), atol=1e-6)
    assert float(std[1, 0, 0]) == pytest.approx(1 / 255)
    with pytest.raises(ValueError, match="at least one image"):
        D.pixel_stats(torch.zeros(0, 1, 2, 2, dtype=torch.uint8))


def test_load_arrays_subset_and_bad_arguments(tmp_path):
    ref = make_fashion(tmp_path / "fm")
    x, y = D.load_arrays("fashion-mnist", "test", data_dir=tmp_path / "fm", subset=3)
    np.testing.assert_array_equal(x[:, 0].numpy(), ref["test"][0][:3])
    np.testing.assert_array_equal(y.numpy(), ref["test"][1][:3])
    with pytest.raises(ValueError, match="subset"):
        D.load_arrays("fashion-mnist", "test", data_dir=tmp_path / "fm", subset=0)
    with pytest.raises(ValueError, match="imagenet"):
        D.load_arrays("imagenet", "train", data_dir=tmp_path / "fm")
