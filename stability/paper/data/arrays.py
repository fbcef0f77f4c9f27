"""Data sets held in memory as arrays, and the paper's per-pixel standardization.

"Input data was normalized by subtracting mean and dividing by standard deviation
independently for each pixel" (Gitman & Ginsburg 2017, section 4.1, footnote 3): for
every position ``(c, h, w)`` of the full, uncropped training image, the mean and
(population, ``ddof=0``) standard deviation over the whole training split (never a
``subset`` of it, never the test split), in [0, 1] pixel units; every image, train and
test, becomes ``(image / 255 - mean) / std``. Deviations below one grey level
(:data:`MIN_STD` ``= 1/255``) are raised to it: CIFAR-10's per-pixel deviations are about
0.25, and in Fashion-MNIST this touches only five almost-always-black border pixels (it
also keeps constant pixels finite). The standardized full training set therefore has
per-pixel mean 0 and standard deviation 1 exactly.

Typical use (the deep linear experiment, section 5)::

    x, y = standardized_flat("fashion-mnist", "train")   # 60000 x 784 float32, int64
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stability.paper.data.files import canonical_name, cifar_root, fashion_mnist_files, read_idx

__all__ = [
    "MIN_STD",
    "SPLITS",
    "load_arrays",
    "load_split",
    "pixel_stats",
    "standardize",
    "standardized_flat",
]

SPLITS: tuple[str, ...] = ("train", "test")

MIN_STD = 1.0 / 255.0
"""Floor for the per-pixel standard deviation, in [0, 1] pixel units (one grey level)."""


def check_count(value: Any, what: str) -> int:
    """``value`` as an ``int`` if it is a positive integer (not a bool).

    Raises:
        ValueError: naming ``what`` and the bad value.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _load_fashion_mnist(
    split: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, Path]:
    img_path, lab_path = fashion_mnist_files(split, data_dir, download)
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(
            f"{img_path}, {lab_path}: expected uint8 idx data, found {images.dtype} and "
            f"{labels.dtype}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{img_path} holds {images.shape[0]} images but {lab_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{lab_path}: label {int(labels.max())} outside 0..9")
    x = torch.from_numpy(images).unsqueeze(1)  # N x 1 x H x W
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y, img_path.parent


def _load_cifar10(
    split: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, Path]:
    from torchvision import datasets

    root = cifar_root(data_dir, download)
    try:
        ds = datasets.CIFAR10(root=str(root), train=split == "train", download=download)
    except RuntimeError as exc:
        raise ValueError(
            f"{root / 'cifar-10-batches-py'}: CIFAR-10 is incomplete or corrupted ({exc})"
        ) from exc
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # N x 3 x H x W
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    return x, y, root


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def load_split(
    key: str, split: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """``(images, labels, folder read)`` of one split of ``fashion-mnist`` or ``cifar10``.

    ``key`` is a canonical name (:func:`~stability.paper.data.files.canonical_name`).
    """
    _check_split(split)
    if key == "fashion-mnist":
        return _load_fashion_mnist(split, data_dir, download)
    if key == "cifar10":
        return _load_cifar10(split, data_dir, download)
    raise ValueError(
        f"{key!r} is not held in memory as arrays; load_arrays() supports fashion-mnist and "
        "cifar10 (use build_datasets() for the others)"
    )


def _first(
    x: torch.Tensor, y: torch.Tensor, subset: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``subset`` samples (all of them for ``None``)."""
    if subset is None:
        return x, y
    n = check_count(subset, "subset")
    return x[:n], y[:n]


def load_arrays(
    name: str = "fashion-mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    subset: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an in-memory data set as raw tensors.

    Args:
        name: ``fashion-mnist`` or ``cifar10``.
        split: ``train`` or ``test``.
        data_dir: searched first (see the module docstring for the full search order).
        download: let torchvision download the data if it is not found.
        subset: keep only the first ``subset`` samples.

    Returns:
        ``(images, labels)``: ``uint8`` N x C x H x W (C = 1 for Fashion-MNIST, 3 for
        CIFAR-10) exactly as stored, and ``int64`` labels of length N.

    Raises:
        FileNotFoundError: the data is not found; the message lists every path tried.
        ValueError: unknown name or split, or a corrupt file.
    """
    x, y, _ = load_split(canonical_name(name), split, data_dir, download)
    x, y = _first(x, y, subset)
    return x, y


# --------------------------------------------------------------------------- standardization


def pixel_stats(
    images: torch.Tensor, min_std: float = MIN_STD, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and standard deviation of ``uint8`` images, in [0, 1] units.

    "Input data was normalized by subtracting mean and dividing by standard deviation
    independently for each pixel" (section 4.1, footnote 3): the statistics are taken
    over the sample axis for every position ``(c, h, w)``. Accumulated in float64 in
    chunks; population standard deviation (``ddof=0``), floored at ``min_std``.

    Args:
        images: N x C x H x W ``uint8`` (or any real dtype on the 0..255 scale).
        min_std: floor for the standard deviation (default one grey level, ``1/255``).
        chunk: samples per accumulation step.

    Returns:
        ``(mean, std)``, each C x H x W ``float32``.
    """
    n = images.shape[0]
    if n == 0:
        raise ValueError("pixel_stats needs at least one image")
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, n, chunk):
        block = images[start : start + chunk].to(torch.float64) / 255.0
        total += block.sum(0)
        total_sq += block.square().sum(0)
    mean = total / n
    var = (total_sq / n - mean.square()).clamp_min(0.0)
    std = var.sqrt().clamp_min(min_std)
    return mean.float(), std.float()


def standardize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(images / 255 - mean) / std`` in ``float32``: 0..255 images, [0, 1]-unit stats."""
    return (images.to(torch.float32) / 255.0 - mean) / std


def standardized_flat(
    name: str = "fashion-mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    subset: int | None = None,
    flatten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as one per-pixel standardized ``float32`` tensor (no crop, no flip).

    For the deep linear experiment (section 5): ``x`` is ``(image / 255 - mean) / std``
    with the per-pixel mean and standard deviation of the full *training* split (also for
    ``split="test"``), see :func:`pixel_stats`.

    Args:
        name: ``fashion-mnist`` or ``cifar10``.
        split: ``train`` or ``test``.
        data_dir: searched first.
        download: let torchvision download the data if it is not found.
        subset: keep only the first ``subset`` samples (statistics still from the full
            training split).
        flatten: return N x (C*H*W) (784 for Fashion-MNIST); else N x C x H x W.

    Returns:
        ``(x, labels)``: ``float32`` and ``int64``.
    """
    key = canonical_name(name)
    _check_split(split)
    x_train, y_train, _ = load_split(key, "train", data_dir, download)
    mean, std = pixel_stats(x_train)
    if split == "train":
        x, y = x_train, y_train
    else:
        x, y, _ = load_split(key, split, data_dir, download)
    x, y = _first(x, y, subset)
    out = standardize(x, mean, std)
    return (out.reshape(out.shape[0], -1) if flatten else out), y
