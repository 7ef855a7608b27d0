"""Dataset readers: every dataset becomes an in-memory :class:`ArrayDataset`
(uint8 images ``(N, C, H, W)``, int64 labels, a :class:`DataSpec`).

Use :func:`build_dataset` (name, root, split, class subset, per-class cap,
resize); ``DATASETS.names()`` lists the registered readers:

==================  ===========================================  ======================
name                files (default root ``./data/<name>``)       download=True
==================  ===========================================  ======================
digits              none (bundled with scikit-learn; offline)    not needed
cifar10             cifar-10-batches-py/ (official python files)  official archive, MD5
cifar100            cifar-100-python/ (100 fine labels)           official archive, MD5
cifar100_coarse     cifar-100-python/ (20 coarse labels)          official archive, MD5
mnist               train-images-idx3-ubyte[.gz], ...             official .gz files, MD5
fashion_mnist       same IDX file names                           official .gz files, MD5
imagefolder         train/<class>/*, val/<class>/*                no
imagenet            train/<wnid>/*.JPEG, val/<wnid>/*.JPEG        no
tinyimagenet        tiny-imagenet-200 layout                      no
cub200              CUB_200_2011 layout                           no
stanford_dogs       Images/ + train_list.mat/test_list.mat        no
==================  ===========================================  ======================

Each module's docstring describes its file layout in detail.
"""

from darkknowledge.data.base import ArrayDataset, AugmentSpec, DataSpec
from darkknowledge.data.registry import DATASETS, build_dataset, default_root

# Importing the reader modules registers them in DATASETS.
from darkknowledge.data import cifar, digits, folders, mnist  # noqa: F401  isort: skip
from darkknowledge.data.transforms import (
    resize_dataset,
    resize_images,
    select_indices,
    subsample_per_class,
    subset_classes,
)

__all__ = [
    "ArrayDataset",
    "AugmentSpec",
    "DataSpec",
    "DATASETS",
    "build_dataset",
    "default_root",
    "resize_dataset",
    "resize_images",
    "select_indices",
    "subsample_per_class",
    "subset_classes",
]
