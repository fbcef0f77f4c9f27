"""Datasets and the paper's input transforms (Gitman & Ginsburg 2017, sections 4.1-4.2).

One module a concern:

* :mod:`~stability.paper.data.files`: where each data set is searched for, the idx
  reader (header validated), torchvision downloads on request;
* :mod:`~stability.paper.data.arrays`: in-memory splits as tensors and the paper's
  per-pixel standardization (:func:`load_arrays`, :func:`pixel_stats`,
  :func:`standardized_flat`);
* :mod:`~stability.paper.data.datasets`: :class:`TensorImageDataset` (crop and flip on
  whole batches) and :class:`SyntheticDataset`;
* :mod:`~stability.paper.data.build`: the data sets by name (:func:`build_datasets`,
  :class:`DatasetInfo`), the ImageNet transform, :func:`flat_training_set`;
* :mod:`~stability.paper.data.loaders`: :func:`make_loader` (seeded, pinned,
  distributed) and :func:`default_num_workers`.

The names of the data sets, the environment variable and the system Fashion-MNIST folder
belong to :mod:`stability.paper.names`. Typical use::

    train_ds, test_ds, info = build_datasets("fashion-mnist", data_dir=args.data_dir)
    loader = make_loader(train_ds, batch_size=128, train=True, seed=0, device="cuda")
    x, y = standardized_flat("fashion-mnist", "train")   # 60000 x 784 float32, int64
"""

from stability.paper.data.arrays import (
    MIN_STD,
    SPLITS,
    load_arrays,
    pixel_stats,
    standardized_flat,
)
from stability.paper.data.build import (
    COLOR_JITTER,
    IMAGENET_CROP,
    IMAGENET_RESIZE,
    SYNTHETIC_SIZES,
    DatasetInfo,
    build_datasets,
    flat_training_set,
    imagenet_transform,
)
from stability.paper.data.datasets import (
    CROP_SLACK,
    PAPER_CROP,
    SyntheticDataset,
    TensorImageDataset,
    crop_padding,
)
from stability.paper.data.files import (
    cache_dir,
    canonical_name,
    fashion_mnist_candidates,
    given_data_dir,
    read_idx,
)
from stability.paper.data.loaders import default_num_workers, make_loader
from stability.paper.names import DATASETS

__all__ = [
    "COLOR_JITTER",
    "CROP_SLACK",
    "DATASETS",
    "IMAGENET_CROP",
    "IMAGENET_RESIZE",
    "MIN_STD",
    "PAPER_CROP",
    "SPLITS",
    "SYNTHETIC_SIZES",
    "DatasetInfo",
    "SyntheticDataset",
    "TensorImageDataset",
    "build_datasets",
    "cache_dir",
    "canonical_name",
    "crop_padding",
    "default_num_workers",
    "fashion_mnist_candidates",
    "flat_training_set",
    "given_data_dir",
    "imagenet_transform",
    "load_arrays",
    "make_loader",
    "pixel_stats",
    "read_idx",
    "standardized_flat",
]
