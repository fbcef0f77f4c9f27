"""Datasets and the paper's input transforms.

Four data sets are known by name (:data:`DATASETS`):

``fashion-mnist`` (the default everywhere)
    Real Fashion-MNIST, 1 x 28 x 28, 10 classes, 60000 train / 10000 test images, read
    from the idx files by :func:`read_idx` (numpy, no torchvision). Searched for, in this
    order (see :func:`fashion_mnist_candidates`):

    1. the explicit ``data_dir`` argument (CLI ``--data-dir``), ``data_dir/fashion-mnist``;
    2. ``$NORMSTAB_DATA`` and ``$NORMSTAB_DATA/fashion-mnist``;
    3. the user cache, ``$XDG_CACHE_HOME/normstab/fashion-mnist`` (``~/.cache/...``);
    4. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).

    Each root is also searched in torchvision's layout, ``<root>/FashionMNIST/raw``.
    Files may be gzipped (``*.gz``) or not. torchvision downloads the data only when
    asked (``download=True``), into ``data_dir`` if given, else the user cache.

``cifar10``
    CIFAR-10 through :class:`torchvision.datasets.CIFAR10` (``cifar-10-batches-py`` under
    ``data_dir``, ``data_dir/cifar10``, ``$NORMSTAB_DATA[/cifar10]`` or the user cache),
    downloaded only when asked.

``imagenet``
    :class:`torchvision.datasets.ImageFolder` over ``train/`` and ``val/`` under
    ``data_dir`` (or ``data_dir/imagenet``, ``$NORMSTAB_DATA/imagenet``, ``$NORMSTAB_DATA``).
    It cannot be downloaded.

``synthetic``
    Seeded N(0, 1) images and uniform labels of a requested shape, for benchmarks. It is
    used only when asked for by name: a missing data set is a :class:`FileNotFoundError`
    naming every path tried, never a silent fallback to synthetic data.

Transforms (Gitman & Ginsburg 2017):

* CIFAR-10 and Fashion-MNIST follow section 4.1, footnote 3: "During training we sampled
  a random crop of size 28x28 and performed random horizontal flips of the images. During
  testing only the central 28x28 crop was used. Input data was normalized by subtracting
  mean and dividing by standard deviation independently for each pixel."

  - *Standardization.* Mean and standard deviation are computed per pixel, i.e. per
    position ``(c, h, w)`` of the full, uncropped training image (32 x 32 for CIFAR-10,
    28 x 28 for Fashion-MNIST), over the whole training split (never a ``subset`` of it,
    never the test split), with ``ddof=0``. Every image (train and test) is standardized
    with these training statistics *before* it is cropped, so each pixel is always
    standardized with the statistics of the position it came from and the standardized
    full training set has per-pixel mean 0 and standard deviation 1 exactly. Standard
    deviations below one grey level (``1/255``) are raised to ``1/255``: CIFAR-10's
    per-pixel deviations are about 0.25, and in Fashion-MNIST this touches only five
    almost-always-black border pixels (it also keeps constant pixels finite).
  - *Crop.* The paper crops 28 x 28 out of CIFAR-10's 32 x 32, a translation range of
    4 pixels per axis. Fashion-MNIST is already 28 x 28, so it is zero-padded by 2
    pixels per side (zero in standardized units: a padded pixel sits at the training
    mean) to 32 x 32 and then cropped the same way: the same 5 x 5 offsets as CIFAR-10,
    and the test ("central") crop is exactly the original image. In general
    the padding is ``max(0, ceil((crop + 4 - side) / 2))``.
  - *Flip.* Horizontal, with probability 1/2, training only.

  The images are kept in memory as one ``uint8`` tensor and the transforms run on whole
  batches of tensors (:class:`TensorImageDataset`, which implements ``__getitems__``).
  The random crops and flips come from a per-dataset :class:`torch.Generator`, seeded by
  ``seed`` in the main process and by the DataLoader's per-worker seed in a worker, so a
  seeded :func:`make_loader` gives the same augmentations for the same ``num_workers``.

* ImageNet follows section 4.2, footnote 4: "Training images were rescaled to the size of
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
    x, y = standardized_flat("fashion-mnist", "train")   # 60000 x 784 float32, int64
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, get_worker_info

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "SyntheticDataset",
    "TensorImageDataset",
    "add_data_arguments",
    "build_datasets",
    "cache_dir",
    "canonical_name",
    "default_num_workers",
    "fashion_mnist_candidates",
    "imagenet_transform",
    "load_arrays",
    "make_loader",
    "pixel_stats",
    "read_idx",
    "standardized_flat",
]

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "imagenet", "synthetic")
"""Names accepted by :func:`build_datasets`; ``fashion-mnist`` is the default."""

SPLITS: tuple[str, ...] = ("train", "test")

PAPER_CROP = 28
"""Crop side for CIFAR-10 (section 4.1, footnote 3); used for Fashion-MNIST too."""

CROP_SLACK = 4
"""Translation range of the paper's 32 -> 28 CIFAR-10 crop, kept for every in-memory set."""

IMAGENET_RESIZE = 256
"""ImageNet rescale side (section 4.2, footnote 4)."""

IMAGENET_CROP = 224
"""ImageNet crop side (section 4.2, footnote 4)."""

COLOR_JITTER = 0.4
"""Brightness/contrast/saturation jitter strength: not in the paper, our choice."""

MIN_STD = 1.0 / 255.0
"""Floor for the per-pixel standard deviation, in [0, 1] pixel units (one grey level)."""

SYNTHETIC_SIZES = (1024, 256)
"""Default (train, test) length of the synthetic data set when no ``subset`` is given."""

ENV_VAR = "NORMSTAB_DATA"

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the idx files."""

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "imagenet": "imagenet",
    "ilsvrc2012": "imagenet",
    "synthetic": "synthetic",
}

# idx type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------- names, paths


def canonical_name(name: str) -> str:
    """Map a data set name (any case, ``-``/``_`` ignored) to its entry in :data:`DATASETS`.

    Raises:
        ValueError: for an unknown name; the message lists the valid names.
    """
    key = "".join(ch for ch in str(name).lower() if ch not in "-_ ")
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return _ALIASES[key]


def cache_dir() -> Path:
    """The user cache root, ``$XDG_CACHE_HOME/normstab`` or ``~/.cache/normstab``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "normstab"


def _unique(paths: Sequence[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _search_roots(sub: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """``data_dir``, ``data_dir/sub``, ``$NORMSTAB_DATA``, ``$NORMSTAB_DATA/sub``, cache/sub."""
    roots: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        roots += [d, d / sub]
    env = os.environ.get(ENV_VAR)
    if env:
        e = Path(env).expanduser()
        roots += [e, e / sub]
    roots.append(cache_dir() / sub)
    return _unique(roots)


def fashion_mnist_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every directory searched for the Fashion-MNIST idx files, in search order.

    Each of ``data_dir``, ``data_dir/fashion-mnist``, ``$NORMSTAB_DATA``,
    ``$NORMSTAB_DATA/fashion-mnist`` and the user cache ``<cache>/fashion-mnist`` is
    searched as is and in torchvision's layout ``<root>/FashionMNIST/raw``; the system
    directory :data:`SYSTEM_FASHION_MNIST` comes last.
    """
    dirs: list[Path] = []
    for root in _search_roots("fashion-mnist", data_dir):
        dirs += [root, root / "FashionMNIST" / "raw"]
    dirs.append(SYSTEM_FASHION_MNIST)
    return _unique(dirs)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


# --------------------------------------------------------------------------- idx files


def _read_bytes(path: Path) -> bytes:
    """Raw bytes of ``path``, gunzipped when it starts with the gzip magic ``1f 8b``."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not, with its header validated.

    The format: a 4-byte magic number ``0x00 0x00 T D`` (``T`` the type code: 0x08 uint8,
    0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64; ``D`` the number of
    dimensions), then ``D`` big-endian uint32 sizes, then the data, big-endian, C order.
    The data must be exactly ``prod(sizes) * itemsize`` bytes long.

    Args:
        path: the file; gzip is detected from its content, not its name.
        ndim: if given, the number of dimensions the header must declare.

    Returns:
        The array, in native byte order, writable.

    Raises:
        ValueError: naming the file and what is wrong (bad magic number, unknown type
            code, truncated header, size mismatch, corrupt gzip data, wrong ``ndim``).
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise ValueError(
            f"{path}: not an idx file: {len(buf)} bytes, shorter than the 4-byte magic number"
        )
    magic = int.from_bytes(buf[:4], "big")
    type_code, dims_n = buf[2], buf[3]
    if buf[0] != 0 or buf[1] != 0:
        raise ValueError(
            f"{path}: bad magic number 0x{magic:08x}: an idx file starts with two zero "
            "bytes, then a type code and the number of dimensions"
        )
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise ValueError(
            f"{path}: bad magic number 0x{magic:08x}: unknown type code 0x{type_code:02x} "
            f"(known: {known})"
        )
    if dims_n == 0:
        raise ValueError(f"{path}: bad magic number 0x{magic:08x}: zero dimensions")
    header = 4 + 4 * dims_n
    if len(buf) < header:
        raise ValueError(
            f"{path}: truncated header: {dims_n} dimensions need {header} header bytes, "
            f"the file has {len(buf)} bytes"
        )
    shape = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims_n))
    if ndim is not None and dims_n != ndim:
        raise ValueError(
            f"{path}: expected a {ndim}-dimensional idx array, the header declares "
            f"{dims_n} dimensions {shape}"
        )
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(buf) - header
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes"
        raise ValueError(
            f"{path}: size mismatch ({what}): the header declares shape {shape} of "
            f"{dtype.name} = {expected} data bytes, the file has {found}"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=header)
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


# --------------------------------------------------------------------------- raw arrays


def _missing_message(what: str, looked_for: str, tried: Sequence[Path], how: Sequence[str]):
    lines = [f"{what} not found. Looked for {looked_for} in, in this order:"]
    lines += [f"  {p}" for p in tried]
    lines.append("To get it:")
    lines += [f"  - {h}" for h in how]
    return "\n".join(lines)


def _download_fashion_mnist(target: Path) -> None:
    """Download Fashion-MNIST with torchvision into ``target/FashionMNIST/raw``."""
    from torchvision import datasets

    target.mkdir(parents=True, exist_ok=True)
    try:
        datasets.FashionMNIST(root=str(target), train=True, download=True)
        datasets.FashionMNIST(root=str(target), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(f"downloading Fashion-MNIST into {target} failed: {exc}") from exc


def _fashion_mnist_files(
    split: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[Path, Path]:
    image_stem, label_stem = _FASHION_FILES[split]
    tried = fashion_mnist_candidates(data_dir)
    for d in tried:
        img, lab = _find_file(d, image_stem), _find_file(d, label_stem)
        if img is not None and lab is not None:
            return img, lab
    if download:
        target = (
            Path(data_dir).expanduser() if data_dir is not None else cache_dir() / "fashion-mnist"
        )
        _download_fashion_mnist(target)
        d = target / "FashionMNIST" / "raw"
        img, lab = _find_file(d, image_stem), _find_file(d, label_stem)
        if img is not None and lab is not None:
            return img, lab
        tried = [*tried, d]
    default_target = (
        Path(data_dir).expanduser() if data_dir is not None else cache_dir() / "fashion-mnist"
    )
    raise FileNotFoundError(
        _missing_message(
            f"Fashion-MNIST ({split} split)",
            f"{image_stem}[.gz] and {label_stem}[.gz] (both in one directory)",
            tried,
            [
                "sudo apt-get install dataset-fashion-mnist "
                f"(installs into {SYSTEM_FASHION_MNIST})",
                f"pass --download (download=True): torchvision downloads it into "
                f"{default_target}/FashionMNIST/raw",
                f"pass --data-dir DIR (data_dir=DIR) or set {ENV_VAR}=DIR, DIR holding the "
                "four idx files (gzipped or not)",
            ],
        )
    )


def _load_fashion_mnist(
    split: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, Path]:
    img_path, lab_path = _fashion_mnist_files(split, data_dir, download)
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


def _cifar_root(data_dir: str | os.PathLike | None, download: bool) -> tuple[Path, list[Path]]:
    tried = _search_roots("cifar10", data_dir)
    for root in tried:
        if (root / "cifar-10-batches-py").is_dir():
            return root, tried
    target = Path(data_dir).expanduser() if data_dir is not None else cache_dir() / "cifar10"
    if download:
        return target, tried
    raise FileNotFoundError(
        _missing_message(
            "CIFAR-10",
            "cifar-10-batches-py/ (the python version of CIFAR-10)",
            tried,
            [
                f"pass --download (download=True): torchvision downloads it into {target}",
                f"pass --data-dir DIR (data_dir=DIR) or set {ENV_VAR}=DIR, DIR holding "
                "cifar-10-batches-py/",
            ],
        )
    )


def _load_cifar10(
    split: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, Path]:
    from torchvision import datasets

    root, _ = _cifar_root(data_dir, download)
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


def _load(
    key: str, split: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, Path]:
    _check_split(split)
    if key == "fashion-mnist":
        return _load_fashion_mnist(split, data_dir, download)
    if key == "cifar10":
        return _load_cifar10(split, data_dir, download)
    raise ValueError(
        f"{key!r} is not held in memory as arrays; load_arrays() supports fashion-mnist and "
        "cifar10 (use build_datasets() for the others)"
    )


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
    x, y, _ = _load(canonical_name(name), split, data_dir, download)
    if subset is not None:
        n = _check_count(subset, "subset")
        x, y = x[:n], y[:n]
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


def _standardize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
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
    x_train, y_train, _ = _load(key, "train", data_dir, download)
    mean, std = pixel_stats(x_train)
    if split == "train":
        x, y = x_train, y_train
    else:
        x, y, _ = _load(key, split, data_dir, download)
    if subset is not None:
        n = _check_count(subset, "subset")
        x, y = x[:n], y[:n]
    out = _standardize(x, mean, std)
    return (out.reshape(out.shape[0], -1) if flatten else out), y


# --------------------------------------------------------------------------- datasets


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
        return _standardize(self.images, self.mean, self.std)

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
        x = _standardize(images, self.mean, self.std)
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
        self.num_samples = _check_count(num_samples, "num_samples")
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
        self.num_classes = _check_count(num_classes, "num_classes")
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

    size = _check_count(image_size, "image_size")
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


def _imagenet_root(data_dir: str | os.PathLike | None) -> Path:
    tried: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        tried += [d, d / "imagenet"]
    env = os.environ.get(ENV_VAR)
    if env:
        e = Path(env).expanduser()
        tried += [e / "imagenet", e]
    tried = _unique(tried)
    for root in tried:
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root
    raise FileNotFoundError(
        _missing_message(
            "ImageNet",
            "train/ and val/ ImageFolder directories (one subdirectory per class)",
            tried or [Path("(no --data-dir given and $NORMSTAB_DATA unset)")],
            [
                "ImageNet cannot be downloaded automatically: get ILSVRC2012 from "
                "https://image-net.org, arrange train/ and val/ as one folder per class",
                f"then pass --data-dir DIR (data_dir=DIR) or set {ENV_VAR}=DIR",
            ],
        )
    )


def _even_subset(dataset: Dataset, n: int | None) -> Dataset:
    size = len(dataset)  # type: ignore[arg-type]
    if n is None or n >= size:
        return dataset
    return Subset(dataset, [i * size // n for i in range(n)])


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _split_subset(subset: int | tuple[int, int] | None) -> tuple[int | None, int | None]:
    if subset is None:
        return None, None
    if isinstance(subset, tuple | list):
        if len(subset) != 2:
            raise ValueError(f"subset must be an int or a pair (n_train, n_test), got {subset}")
        return _check_count(subset[0], "subset"), _check_count(subset[1], "subset")
    n = _check_count(subset, "subset")
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
            how to get the data. There is no fallback to synthetic data.
    """
    key = canonical_name(name)
    if key != "synthetic" and (in_channels is not None or num_classes is not None):
        raise ValueError("in_channels and num_classes can only be set for the synthetic dataset")
    n_train, n_test = _split_subset(subset)
    if image_size is not None:
        image_size = _check_count(image_size, "image_size")

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

        root = _imagenet_root(data_dir)
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

    x_train, y_train, root = _load(key, "train", data_dir, download)
    x_test, y_test, _ = _load(key, "test", data_dir, download)
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


# --------------------------------------------------------------------------- loaders


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers(dataset: Dataset | None = None) -> int:
    """Worker processes for :func:`make_loader` when none are given.

    0 for :class:`TensorImageDataset` (its batched tensor transforms take microseconds,
    workers would only add start-up cost); otherwise the usable CPUs divided among the
    local processes (``$LOCAL_WORLD_SIZE``), minus one for the main process, at most 8.
    """
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    if isinstance(base, TensorImageDataset):
        return 0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(8, _usable_cpus() // local - 1))


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    distributed: bool | None = None,
    *,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> DataLoader:
    """A DataLoader set up the same way for every experiment.

    * shuffling (training) from a :class:`torch.Generator` seeded with ``seed``, so two
      loaders with the same seed give the same order (and, through the per-worker seeds
      drawn from it, the same augmentations for the same ``num_workers``);
    * ``drop_last`` for training, every sample for testing;
    * pinned memory when the target device is CUDA (``device=None``: when CUDA exists);
    * a :class:`~torch.utils.data.DistributedSampler` (``shuffle=train``, seeded,
      ``drop_last=train``) when ``distributed`` is true, or when it is ``None`` and a
      process group is initialized or ``num_replicas`` is given. Call
      ``loader.sampler.set_epoch(epoch)`` every epoch to reshuffle. ``batch_size`` is then
      per process. Note that a distributed test loader pads to equal shards by repeating
      samples.

    Args:
        dataset: any map-style dataset.
        batch_size: samples per batch (per process when distributed).
        train: shuffle and drop the last incomplete batch.
        seed: seeds the shuffling generator and the distributed sampler.
        num_workers: worker processes; ``None`` picks :func:`default_num_workers`, 0 loads
            in the main process.
        device: where the batches will go, only used to decide on pinned memory.
        distributed: use a DistributedSampler (see above).
        num_replicas: world size for the sampler (default: from the process group).
        rank: this process's rank for the sampler (default: from the process group).

    Returns:
        The :class:`~torch.utils.data.DataLoader`.
    """
    batch_size = _check_count(batch_size, "batch_size")
    if num_workers is None:
        num_workers = default_num_workers(dataset)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if device is None:
        pin = torch.cuda.is_available()
    else:
        pin = torch.device(device).type == "cuda"
    if distributed is None:
        distributed = num_replicas is not None or rank is not None or _dist_initialized()
    elif not distributed and (num_replicas is not None or rank is not None):
        raise ValueError("num_replicas/rank given but distributed=False")
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=train, seed=seed,
            drop_last=train,
        )  # fmt: skip
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=train,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--dataset --data-dir --download --image-size --subset`` to a CLI parser.

    The flag names match the ones the "data not found" messages recommend.
    """
    parser.add_argument(
        "--dataset", default="fashion-mnist", type=canonical_name,
        help=f"one of {', '.join(DATASETS)} (default fashion-mnist)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", default=None, type=Path,
        help=f"searched first; then ${ENV_VAR}, {cache_dir()}/<dataset>, "
        f"and for Fashion-MNIST {SYSTEM_FASHION_MNIST}",
    )  # fmt: skip
    parser.add_argument(
        "--download", action="store_true",
        help="let torchvision download Fashion-MNIST/CIFAR-10 if not found",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", default=None, type=int,
        help="output side (default 28; 224 for ImageNet), e.g. 64 for smoke runs",
    )  # fmt: skip
    parser.add_argument(
        "--subset", default=None, type=int, help="keep the first N samples of each split"
    )
    return parser


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
