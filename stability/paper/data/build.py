"""The data sets by name (:func:`build_datasets`) with the paper's transforms.

Four data sets are known by name (:data:`stability.paper.names.DATASETS`):
``fashion-mnist`` (the default everywhere; 1 x 28 x 28, 10 classes, 60000 / 10000),
``cifar10``, ``imagenet`` and ``synthetic`` (seeded N(0, 1) images and uniform labels of a
requested shape, for benchmarks, used only when asked for by name: missing data is a
:class:`FileNotFoundError` naming every path tried, never a silent fallback). Where each
is searched for: :mod:`stability.paper.data.files`. CIFAR-10 and Fashion-MNIST get the
transforms of :mod:`stability.paper.data.datasets`.

ImageNet follows section 4.2, footnote 4: "Training images were rescaled to the size of
256x256 pixels and then randomly cropped to 224x224. We applied random color distortions
and horizontal flips and finally normalized images to [-1, 1] range. During testing
images were rescaled to 256x256 and the central crop of size 224x224 was used." The
rescale is to a square (aspect ratio not kept), as the paper says. The paper does not
give the colour distortion; we use ``ColorJitter(brightness=0.4, contrast=0.4,
saturation=0.4)`` (the strengths of the widely used fb.resnet.torch recipe). See
:func:`imagenet_transform`.

``image_size`` overrides the output side for smoke runs: the crop size for CIFAR-10 and
Fashion-MNIST (at most the stored side), and for ImageNet the crop with the rescale
scaled in proportion (``round(image_size * 256 / 224)``, e.g. 73 for 64). ``subset=N``
keeps the first ``N`` samples of each split (a pair ``(n_train, n_test)`` sets them
separately); for ImageNet, whose ImageFolder order is sorted by class, it keeps ``N``
evenly spaced samples instead, so that a small subset still covers the classes.

Typical use::

    train_ds, test_ds, info = build_datasets("fashion-mnist", data_dir=args.data_dir)
    loader = make_loader(train_ds, batch_size=128, train=True, seed=0, device="cuda")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from stability.paper.data.arrays import (
    MIN_STD,
    check_count,
    load_split,
    pixel_stats,
    standardized_flat,
)
from stability.paper.data.datasets import (
    PAPER_CROP,
    SyntheticDataset,
    TensorImageDataset,
    crop_padding,
)
from stability.paper.data.files import canonical_name, given_data_dir, imagenet_root
from stability.paper.data.loaders import default_num_workers

__all__ = [
    "COLOR_JITTER",
    "IMAGENET_CROP",
    "IMAGENET_RESIZE",
    "SYNTHETIC_SIZES",
    "DatasetInfo",
    "build_datasets",
    "flat_training_set",
    "imagenet_transform",
]

IMAGENET_RESIZE = 256
"""ImageNet rescale side (section 4.2, footnote 4)."""

IMAGENET_CROP = 224
"""ImageNet crop side (section 4.2, footnote 4)."""

COLOR_JITTER = 0.4
"""Brightness/contrast/saturation jitter strength: not in the paper, our choice."""

SYNTHETIC_SIZES = (1024, 256)
"""Default (train, test) length of the synthetic data set when no ``subset`` is given."""


def imagenet_transform(train: bool, image_size: int = IMAGENET_CROP):
    """The paper's ImageNet transform (section 4.2, footnote 4), on PIL images.

    Training: rescale to ``R x R`` (``R = round(image_size * 256 / 224)``, 256 for the
    paper's 224), random ``image_size`` crop, colour distortion
    (``ColorJitter(0.4, 0.4, 0.4)``; strengths are ours, the paper gives none), random
    horizontal flip, then ``[0, 1] -> [-1, 1]`` (``2x - 1``). Test: rescale to ``R x R``,
    central ``image_size`` crop, ``[-1, 1]``.

    Returns:
        A :class:`torchvision.transforms.Compose` producing 3 x image_size x image_size
        ``float32`` tensors in [-1, 1].
    """
    from torchvision import transforms as T

    size = check_count(image_size, "image_size")
    resize = round(size * IMAGENET_RESIZE / IMAGENET_CROP)
    to_unit_range = [T.ToTensor(), T.Normalize(mean=[0.5] * 3, std=[0.5] * 3)]
    if train:
        steps = [
            T.Resize((resize, resize)),
            T.RandomCrop(size),
            T.ColorJitter(brightness=COLOR_JITTER, contrast=COLOR_JITTER, saturation=COLOR_JITTER),
            T.RandomHorizontalFlip(),
        ]
    else:
        steps = [T.Resize((resize, resize)), T.CenterCrop(size)]
    return T.Compose(steps + to_unit_range)


def _even_subset(dataset: Dataset, n: int | None) -> Dataset:
    size = len(dataset)  # type: ignore[arg-type]
    if n is None or n >= size:
        return dataset
    return Subset(dataset, [i * size // n for i in range(n)])


def _split_subset(subset: int | tuple[int, int] | None) -> tuple[int | None, int | None]:
    if subset is None:
        return None, None
    if isinstance(subset, tuple | list):
        if len(subset) != 2:
            raise ValueError(f"subset must be an int or a pair (n_train, n_test), got {subset}")
        return check_count(subset[0], "subset"), check_count(subset[1], "subset")
    n = check_count(subset, "subset")
    return n, n


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set, and where it came from.

    Attributes:
        name: the canonical name (an entry of :data:`DATASETS`).
        num_classes: number of classes.
        in_channels: channels of a transformed sample.
        image_size: side of a transformed (square) sample.
        train_size: samples in the training dataset (after ``subset``).
        test_size: samples in the test dataset (after ``subset``).
        root: the directory the data was read from (``None`` for synthetic).
        transform: a one-line description of the transforms.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int
    test_size: int
    root: Path | None
    transform: str


def build_datasets(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    subset: int | tuple[int, int] | None = None,
    seed: int = 0,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """The training and test datasets of ``name`` with the paper's transforms.

    Args:
        name: one of :data:`DATASETS` (case, ``-`` and ``_`` ignored).
        data_dir: searched first (CLI ``--data-dir``); see the module docstring.
        download: let torchvision download Fashion-MNIST / CIFAR-10 if not found (into
            ``data_dir`` if given, else the user cache). Never done otherwise.
        image_size: output side; default 28 (CIFAR-10, Fashion-MNIST, synthetic) or 224
            (ImageNet). For CIFAR-10 / Fashion-MNIST it must not exceed the stored side.
        subset: keep the first N samples of each split (evenly spaced ones for ImageNet);
            a pair ``(n_train, n_test)`` sets the two separately. For synthetic it is the
            length (default 1024 train / 256 test).
        seed: seeds the training augmentation stream (main process) and the synthetic
            samples.
        in_channels: synthetic only: channels (default 3).
        num_classes: synthetic only: classes (default 10).

    Returns:
        ``(train_ds, test_ds, info)``. Samples are ``(float32 C x S x S tensor, int64
        label)``.

    Raises:
        ValueError: unknown name (the message lists the valid names), bad arguments, or
            corrupt data.
        FileNotFoundError: the data is missing; the message lists every path tried and
            how to get the data. There is no fallback to synthetic data. Also for an
            explicit ``data_dir`` that is not an existing folder, whatever the data set.
    """
    key = canonical_name(name)
    given_data_dir(data_dir, download)  # a mistyped --data-dir is an error for every set
    if key != "synthetic" and (in_channels is not None or num_classes is not None):
        raise ValueError("in_channels and num_classes can only be set for the synthetic dataset")
    n_train, n_test = _split_subset(subset)
    if image_size is not None:
        image_size = check_count(image_size, "image_size")

    if key == "synthetic":
        size = image_size or PAPER_CROP
        shape = (in_channels or 3, size, size)
        classes = num_classes or 10
        train_ds = SyntheticDataset(n_train or SYNTHETIC_SIZES[0], shape, classes, seed, True)
        test_ds = SyntheticDataset(n_test or SYNTHETIC_SIZES[1], shape, classes, seed, False)
        info = DatasetInfo(
            key, classes, shape[0], size, len(train_ds), len(test_ds), None,
            "synthetic: i.i.d. N(0, 1) pixels, uniform labels, seeded per sample",
        )  # fmt: skip
        return train_ds, test_ds, info

    if key == "imagenet":
        from torchvision import datasets

        root = imagenet_root(data_dir)
        size = image_size or IMAGENET_CROP
        train_full = datasets.ImageFolder(root / "train", transform=imagenet_transform(True, size))
        test_full = datasets.ImageFolder(root / "val", transform=imagenet_transform(False, size))
        if train_full.classes != test_full.classes:
            raise ValueError(
                f"{root}: train/ has {len(train_full.classes)} classes and val/ has "
                f"{len(test_full.classes)}, or their names differ; both need the same classes"
            )
        train_ds, test_ds = _even_subset(train_full, n_train), _even_subset(test_full, n_test)
        resize = round(size * IMAGENET_RESIZE / IMAGENET_CROP)
        info = DatasetInfo(
            key, len(train_full.classes), 3, size, len(train_ds), len(test_ds), root,
            f"train: resize {resize}x{resize}, random crop {size}, colour jitter "
            f"{COLOR_JITTER}, h-flip, [-1, 1]; test: resize {resize}x{resize}, "
            f"central crop {size}, [-1, 1]",
        )  # fmt: skip
        return train_ds, test_ds, info

    x_train, y_train, root = load_split(key, "train", data_dir, download)
    x_test, y_test, _ = load_split(key, "test", data_dir, download)
    mean, std = pixel_stats(x_train)  # full training split, before any subset
    side = min(x_train.shape[2:])
    size = image_size or PAPER_CROP
    if size > side:
        raise ValueError(f"image_size {size} exceeds the {side}x{side} images of {key}")
    if n_train is not None:
        x_train, y_train = x_train[:n_train], y_train[:n_train]
    if n_test is not None:
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    pad = crop_padding(side, size)
    train_ds = TensorImageDataset(x_train, y_train, mean, std, True, size, pad, seed)
    test_ds = TensorImageDataset(x_test, y_test, mean, std, False, size, pad, seed)
    pad_txt = f"zero-pad {pad}, " if pad else ""
    info = DatasetInfo(
        key, 10, x_train.shape[1], size, len(train_ds), len(test_ds), root,
        f"per-pixel standardization (train stats); train: {pad_txt}random crop {size}, "
        f"h-flip; test: {pad_txt}central crop {size}",
    )  # fmt: skip
    return train_ds, test_ds, info


def flat_training_set(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    subset: int | None = None,
    image_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole training split as one ``float32`` N x D matrix, for fully connected networks.

    Fashion-MNIST and CIFAR-10: :func:`standardized_flat` (per-pixel standardized, no
    crop). ImageNet: the training images through the paper's transform at ``image_size``
    (default 32, so ``D = 3 * 32 * 32``), then per-pixel standardized over the samples
    taken (``subset``, default 10000 evenly spaced). Synthetic: ``subset`` (default 60000)
    seeded N(0, 1) samples of 1 x 28 x 28 with uniform labels.
    """
    key = canonical_name(name)
    if key in ("fashion-mnist", "cifar10"):
        return standardized_flat(key, "train", data_dir, download, subset=subset)
    if key == "synthetic":
        train, _, _ = build_datasets(
            key, subset=(subset or 60_000, 1), image_size=image_size or PAPER_CROP, in_channels=1
        )
    else:
        train, _, _ = build_datasets(
            key, data_dir, image_size=image_size or 32, subset=(subset or 10_000, 1)
        )
    loader = DataLoader(train, batch_size=512, num_workers=default_num_workers(train))
    xs, ys = zip(*loader, strict=True)
    x, y = torch.cat(xs).flatten(1), torch.cat(ys)
    if key == "imagenet":
        x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(MIN_STD)
    return x, y
