"""Where the data sets live: search roots, the idx reader, downloads on request.

Fashion-MNIST is read from its idx files by :func:`read_idx` (numpy, no torchvision),
searched for in this order (see :func:`fashion_mnist_candidates`):

1. the explicit ``data_dir`` argument (CLI ``--data-dir``), ``data_dir/fashion-mnist``;
2. ``$NORMSTAB_DATA`` and ``$NORMSTAB_DATA/fashion-mnist``;
3. the user cache, ``$XDG_CACHE_HOME/normstab/fashion-mnist`` (``~/.cache/...``);
4. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).

Each root is also searched in torchvision's layout, ``<root>/FashionMNIST/raw``. Files
may be gzipped (``*.gz``) or not. CIFAR-10 (``cifar-10-batches-py``) is searched for in
``data_dir``, ``data_dir/cifar10``, ``$NORMSTAB_DATA[/cifar10]`` and the user cache;
ImageNet (``train/`` and ``val/`` ImageFolders) in ``data_dir``, ``data_dir/imagenet``,
``$NORMSTAB_DATA/imagenet`` and ``$NORMSTAB_DATA``. torchvision downloads Fashion-MNIST
or CIFAR-10 only when asked (``download=True``), into ``data_dir`` if given, else the user
cache; ImageNet cannot be downloaded.

An explicit ``data_dir`` that is not an existing folder is a :class:`FileNotFoundError`
naming it (unless ``download=True``, which creates it): a mistyped path never lets the
search fall through to other data. Missing data is a :class:`FileNotFoundError` that
lists every path tried and how to get the data, never a silent fallback to synthetic data.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stability.paper import names
from stability.paper.names import DATA_ENV_VAR, DATASETS

__all__ = [
    "cache_dir",
    "canonical_name",
    "cifar_root",
    "download_target",
    "fashion_mnist_candidates",
    "fashion_mnist_files",
    "given_data_dir",
    "imagenet_root",
    "read_idx",
]

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


def given_data_dir(data_dir: str | os.PathLike | None, download: bool = False) -> Path | None:
    """The explicit ``data_dir``, expanded; ``None`` when none is given.

    Raises:
        FileNotFoundError: naming the path, when it is not an existing folder (a path
            that does not exist is accepted with ``download=True``: the download creates it).
    """
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir() and (path.exists() or not download):
        raise FileNotFoundError(
            f"data_dir {path} does not exist or is not a directory (--data-dir must name one)"
        )
    return path


def download_target(sub: str, data_dir: str | os.PathLike | None) -> Path:
    """Where torchvision downloads to: ``data_dir`` if given, else ``<cache>/sub``."""
    return Path(data_dir).expanduser() if data_dir is not None else cache_dir() / sub


def _search_roots(
    sub: str, data_dir: str | os.PathLike | None, download: bool = False
) -> list[Path]:
    """``data_dir``, ``data_dir/sub``, ``$NORMSTAB_DATA``, ``$NORMSTAB_DATA/sub``, cache/sub."""
    roots: list[Path] = []
    given = given_data_dir(data_dir, download)
    if given is not None:
        roots += [given, given / sub]
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        e = Path(env).expanduser()
        roots += [e, e / sub]
    roots.append(cache_dir() / sub)
    return _unique(roots)


def fashion_mnist_candidates(
    data_dir: str | os.PathLike | None = None, download: bool = False
) -> list[Path]:
    """Every directory searched for the Fashion-MNIST idx files, in search order.

    Each of ``data_dir``, ``data_dir/fashion-mnist``, ``$NORMSTAB_DATA``,
    ``$NORMSTAB_DATA/fashion-mnist`` and the user cache ``<cache>/fashion-mnist`` is
    searched as is and in torchvision's layout ``<root>/FashionMNIST/raw``; the system
    directory :data:`stability.paper.names.SYSTEM_FASHION_MNIST` comes last.

    Raises:
        FileNotFoundError: ``data_dir`` is given but is not an existing folder (see
            :func:`given_data_dir`).
    """
    dirs: list[Path] = []
    for root in _search_roots("fashion-mnist", data_dir, download):
        dirs += [root, root / "FashionMNIST" / "raw"]
    dirs.append(Path(names.SYSTEM_FASHION_MNIST))
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


# --------------------------------------------------------------------------- finding a data set


def _not_found(
    what: str,
    looked_for: str,
    tried: Sequence[Path],
    *,
    holding: str,
    download_into: Path | None = None,
    first_steps: Sequence[str] = (),
) -> FileNotFoundError:
    """The error for a missing data set: every path tried, in order, then how to get it."""
    how = [*first_steps]
    if download_into is not None:
        how.append(
            f"pass --download (download=True): torchvision downloads it into {download_into}"
        )
    how.append(
        f"pass --data-dir DIR (data_dir=DIR) or set {DATA_ENV_VAR}=DIR, DIR holding {holding}"
    )
    lines = [f"{what} not found. Looked for {looked_for} in, in this order:"]
    lines += [f"  {p}" for p in tried]
    lines.append("To get it:")
    lines += [f"  - {h}" for h in how]
    return FileNotFoundError("\n".join(lines))


def _download_fashion_mnist(target: Path) -> None:
    """Download Fashion-MNIST with torchvision into ``target/FashionMNIST/raw``."""
    from torchvision import datasets

    target.mkdir(parents=True, exist_ok=True)
    try:
        datasets.FashionMNIST(root=str(target), train=True, download=True)
        datasets.FashionMNIST(root=str(target), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(f"downloading Fashion-MNIST into {target} failed: {exc}") from exc


def _idx_pair(directory: Path, split: str) -> tuple[Path, Path] | None:
    image_stem, label_stem = _FASHION_FILES[split]
    img, lab = _find_file(directory, image_stem), _find_file(directory, label_stem)
    return None if img is None or lab is None else (img, lab)


def fashion_mnist_files(
    split: str, data_dir: str | os.PathLike | None = None, download: bool = False
) -> tuple[Path, Path]:
    """``(images, labels)`` idx files of one Fashion-MNIST split, the first pair found.

    Searches :func:`fashion_mnist_candidates`; with ``download=True`` and nothing found,
    torchvision downloads into :func:`download_target` first.

    Raises:
        FileNotFoundError: not found (the message lists every path tried and how to get
            the data), or an explicit ``data_dir`` that is not an existing folder.
    """
    tried = fashion_mnist_candidates(data_dir, download)
    for directory in tried:
        if (pair := _idx_pair(directory, split)) is not None:
            return pair
    target = download_target("fashion-mnist", data_dir)
    if download:
        _download_fashion_mnist(target)
        directory = target / "FashionMNIST" / "raw"
        if (pair := _idx_pair(directory, split)) is not None:
            return pair
        tried = [*tried, directory]
    image_stem, label_stem = _FASHION_FILES[split]
    raise _not_found(
        f"Fashion-MNIST ({split} split)",
        f"{image_stem}[.gz] and {label_stem}[.gz] (both in one directory)",
        tried,
        holding="the four idx files (gzipped or not)",
        download_into=target / "FashionMNIST" / "raw",
        first_steps=[
            "sudo apt-get install dataset-fashion-mnist "
            f"(installs into {names.SYSTEM_FASHION_MNIST})"
        ],
    )


def cifar_root(data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder holding ``cifar-10-batches-py/`` (with ``download=True``: where it goes).

    Raises:
        FileNotFoundError: not found and no download asked (the message lists every path
            tried), or an explicit ``data_dir`` that is not an existing folder.
    """
    tried = _search_roots("cifar10", data_dir, download)
    for root in tried:
        if (root / "cifar-10-batches-py").is_dir():
            return root
    target = download_target("cifar10", data_dir)
    if download:
        return target
    raise _not_found(
        "CIFAR-10",
        "cifar-10-batches-py/ (the python version of CIFAR-10)",
        tried,
        holding="cifar-10-batches-py/",
        download_into=target,
    )


def imagenet_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding ImageNet's ``train/`` and ``val/`` ImageFolders.

    Raises:
        FileNotFoundError: not found (the message lists every path tried), or an
            explicit ``data_dir`` that is not an existing folder.
    """
    tried: list[Path] = []
    given = given_data_dir(data_dir)
    if given is not None:
        tried += [given, given / "imagenet"]
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        e = Path(env).expanduser()
        tried += [e / "imagenet", e]
    tried = _unique(tried)
    for root in tried:
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root
    raise _not_found(
        "ImageNet",
        "train/ and val/ ImageFolder directories (one subdirectory per class)",
        tried or [Path(f"(no --data-dir given and ${DATA_ENV_VAR} unset)")],
        holding="train/ and val/",
        first_steps=[
            "ImageNet cannot be downloaded automatically: get ILSVRC2012 from "
            "https://image-net.org, arrange train/ and val/ as one folder per class"
        ],
    )
