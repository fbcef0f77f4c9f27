"""The in-memory image datasets: the paper's CIFAR-10 transforms on whole batches, and
seeded synthetic data.

CIFAR-10 and Fashion-MNIST follow Gitman & Ginsburg (2017), section 4.1, footnote 3:
"During training we sampled a random crop of size 28x28 and performed random horizontal
flips of the images. During testing only the central 28x28 crop was used."

* *Standardization* (:func:`stability.paper.data.arrays.pixel_stats`) comes first, on the
  full uncropped image, so each pixel is standardized with the statistics of the position
  it came from.
* *Crop.* The paper crops 28 x 28 out of CIFAR-10's 32 x 32, a translation range of
  :data:`CROP_SLACK` ``= 4`` pixels per axis. Fashion-MNIST is already 28 x 28, so it is
  zero-padded by 2 pixels per side (zero in standardized units: a padded pixel sits at the
  training mean) to 32 x 32 and then cropped the same way: the same 5 x 5 offsets as
  CIFAR-10, and the test ("central") crop is exactly the original image. In general the
  padding is ``max(0, ceil((crop + 4 - side) / 2))`` (:func:`crop_padding`).
* *Flip.* Horizontal, with probability 1/2, training only.

The images are kept in memory as one ``uint8`` tensor and the transforms run on whole
batches of tensors (:class:`TensorImageDataset`, which implements ``__getitems__``). The
random crops and flips come from a per-dataset :class:`torch.Generator`, seeded by
``seed`` in the main process and by the DataLoader's per-worker seed in a worker, so a
seeded :func:`~stability.paper.data.loaders.make_loader` gives the same augmentations for
the same ``num_workers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, get_worker_info

from stability.paper.data.arrays import check_count, standardize

__all__ = ["CROP_SLACK", "PAPER_CROP", "SyntheticDataset", "TensorImageDataset", "crop_padding"]

PAPER_CROP = 28
"""Crop side for CIFAR-10 (section 4.1, footnote 3); used for Fashion-MNIST too."""

CROP_SLACK = 4
"""Translation range of the paper's 32 -> 28 CIFAR-10 crop, kept for every in-memory set."""


def crop_padding(side: int, crop: int) -> int:
    """Zero padding per side so a ``crop`` crop of a ``side`` image has >= 4 px of play.

    ``max(0, ceil((crop + 4 - side) / 2))``: 0 for CIFAR-10 (32 -> 28, as in the paper),
    2 for Fashion-MNIST (28 -> pad to 32 -> 28).
    """
    return max(0, -(-(crop + CROP_SLACK - side) // 2))


def _mix_seed(*parts: int) -> int:
    """Deterministic 63-bit mix of integers (splitmix64-style), independent of PYTHONHASHSEED."""
    h = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for p in parts:
        h = (h ^ (int(p) & mask)) * 0xBF58476D1CE4E5B9 & mask
        h ^= h >> 31
        h = h * 0x94D049BB133111EB & mask
        h ^= h >> 29
    return h & ((1 << 63) - 1)


class TensorImageDataset(Dataset):
    """In-memory images with the paper's CIFAR-10 transforms applied on whole batches.

    A sample is ``standardize -> zero-pad -> crop -> flip``:

    * ``(image / 255 - mean) / std`` with per-pixel training statistics (C x H x W);
    * zero padding of ``padding`` pixels per side (in standardized units);
    * training: a uniformly random ``crop_size`` crop and a horizontal flip with
      probability 1/2 (section 4.1, footnote 3); test: the central crop.

    ``__getitems__`` transforms a whole batch with one gather, so a DataLoader with
    automatic batching never touches single samples. The random numbers come from a
    :class:`torch.Generator` owned by the dataset: seeded with ``seed`` in the main
    process, and with the DataLoader's per-worker seed (``get_worker_info().seed``,
    drawn from the loader's generator) inside a worker.

    Attributes:
        images: N x C x H x W ``uint8``, as stored.
        labels: N ``int64``.
        mean, std: C x H x W ``float32`` per-pixel statistics ([0, 1] units).
        train: random crop and flip if true, central crop if false.
        crop_size: output side.
        padding: zero padding per side before cropping.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        train: bool,
        crop_size: int = PAPER_CROP,
        padding: int | None = None,
        seed: int = 0,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if tuple(mean.shape) != tuple(images.shape[1:]) or mean.shape != std.shape:
            raise ValueError("mean and std must be C x H x W, the shape of one image")
        side = min(images.shape[2], images.shape[3])
        if padding is None:
            padding = crop_padding(side, crop_size)
        if not 0 < crop_size <= side + 2 * padding:
            raise ValueError(
                f"crop size {crop_size} does not fit a {tuple(images.shape[2:])} image "
                f"padded by {padding}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)
        self.train = bool(train)
        self.crop_size = int(crop_size)
        self.padding = int(padding)
        self.seed = int(seed)
        self._rng: torch.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rng"], state["_rng_key"] = None, None
        return state

    def reseed(self, seed: int) -> None:
        """Restart the main-process augmentation stream from ``seed``."""
        self.seed = int(seed)
        self._rng, self._rng_key = None, None

    def _generator(self) -> torch.Generator:
        info = get_worker_info()
        key = (-1, self.seed) if info is None else (info.id, info.seed)
        if self._rng is None or self._rng_key != key:
            self._rng = torch.Generator()
            self._rng.manual_seed(self.seed if info is None else _mix_seed(info.seed, self.seed))
            self._rng_key = key
        return self._rng

    def standardized(self) -> torch.Tensor:
        """All images standardized, uncropped and unpadded: N x C x H x W ``float32``."""
        return standardize(self.images, self.mean, self.std)

    def transform(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Standardize, pad and crop (and flip, if training) a batch of ``uint8`` images.

        Args:
            images: B x C x H x W ``uint8``.
            generator: source of the crop offsets and flips (training only); defaults to
                the dataset's own generator.

        Returns:
            B x C x crop x crop ``float32``.
        """
        x = standardize(images, self.mean, self.std)
        p, s = self.padding, self.crop_size
        if p:
            x = F.pad(x, (p, p, p, p))
        b, c, h, w = x.shape
        if not self.train:
            top, left = (h - s) // 2, (w - s) // 2
            return x[:, :, top : top + s, left : left + s].contiguous()
        g = self._generator() if generator is None else generator
        top = torch.randint(0, h - s + 1, (b,), generator=g)
        left = torch.randint(0, w - s + 1, (b,), generator=g)
        flip = torch.rand(b, generator=g) < 0.5
        steps = torch.arange(s)
        rows = top[:, None] + steps
        cols = left[:, None] + steps
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        x = x.gather(2, rows[:, None, :, None].expand(b, c, s, w))
        return x.gather(3, cols[:, None, None, :].expand(b, c, s, s))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.transform(self.images[idx])
        return list(zip(x.unbind(0), self.labels[idx].unbind(0), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]


class SyntheticDataset(Dataset):
    """Seeded random images and labels, for benchmarks; used only when named.

    Sample ``i`` is drawn from its own generator seeded by ``(seed, split, i)``: a label
    uniform in ``0..num_classes-1``, then an image of i.i.d. N(0, 1) values (already in
    the standardized units the real transforms produce). It is therefore the same
    whatever the batching, the worker or the data set length.
    """

    def __init__(
        self,
        num_samples: int,
        shape: tuple[int, int, int] = (3, PAPER_CROP, PAPER_CROP),
        num_classes: int = 10,
        seed: int = 0,
        train: bool = True,
    ) -> None:
        self.num_samples = check_count(num_samples, "num_samples")
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
        self.num_classes = check_count(num_classes, "num_classes")
        self.seed = int(seed)
        self.train = bool(train)

    def __len__(self) -> int:
        return self.num_samples

    def _sample_generator(self, index: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(_mix_seed(self.seed, 0 if self.train else 1, index))
        return g

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        index %= self.num_samples
        g = self._sample_generator(index)
        label = torch.randint(0, self.num_classes, (), generator=g)
        return torch.randn(self.shape, generator=g), label

    @property
    def labels(self) -> torch.Tensor:
        """All labels (computed on demand, one generator per sample)."""
        return torch.stack(
            [
                torch.randint(0, self.num_classes, (), generator=self._sample_generator(i))
                for i in range(self.num_samples)
            ]
        )
