"""MNIST and Fashion-MNIST from the official IDX files.

Layout (``root`` is ``./data/mnist`` or ``./data/fashion_mnist`` by default)::

    root/train-images-idx3-ubyte     60,000 x 28 x 28 uint8
    root/train-labels-idx1-ubyte     60,000 uint8 labels
    root/t10k-images-idx3-ubyte      10,000 x 28 x 28
    root/t10k-labels-idx1-ubyte      10,000 labels

Each file may also be gzipped (``<name>.gz``, as distributed). The files are also
looked for in ``root/raw``, ``root/MNIST/raw`` and ``root/FashionMNIST/raw`` (the
layout torchvision leaves behind).

IDX format: a big-endian header - two zero bytes, a type code (``0x08`` = uint8),
the number of dimensions, then one uint32 per dimension - followed by the data.
The first four bytes read as a big-endian int are the "magic" number: 2051 for
an image file (3 dimensions) and 2049 for a label file (1 dimension).

``download=True`` fetches the four ``.gz`` files (MD5-verified) into ``root``
from the mirrors in :data:`MIRRORS`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from darkknowledge.data.base import ArrayDataset, AugmentSpec, DataSpec
from darkknowledge.data.download import download_url
from darkknowledge.data.registry import DATASETS
from darkknowledge.errors import UserError

__all__ = ["read_idx", "read_mnist", "read_fashion_mnist", "MIRRORS", "MD5"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
}

MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (``.gz`` is decompressed) into an array of its shape.

    ``magic``: the expected magic number (2051 images, 2049 labels); a different
    one, a truncated file or a non-uint8 type raises :class:`UserError`.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}; delete it and get the official file again") from None
    if len(raw) < 4:
        raise UserError(f"IDX file {path} is truncated ({len(raw)} bytes); delete it and get the official file again")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise UserError(
            f"IDX file {path} has magic number {found}, expected {magic} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'}); it is not the right file or is corrupt"
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(
            f"IDX file {path} has header {raw[:4].hex()}, expected 0000 08 xx (unsigned bytes); "
            f"it is not an MNIST-style IDX file"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated inside its header; get the official file again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if len(raw) - header != count:
        raise UserError(
            f"IDX file {path} declares shape {shape} ({count} bytes) but holds {len(raw) - header} data bytes; "
            f"it is truncated or corrupt - get the official file again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find(root: Path, stem: str) -> Path | None:
    for d in (root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _read(kind: str, root: str | Path, train: bool, download: bool) -> ArrayDataset:
    root = Path(root)
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    images_path, labels_path = (_find(root, s) for s in stems)
    if images_path is None or labels_path is None:
        if download:
            for s in stems:
                name = s + ".gz"
                download_url(MIRRORS[kind] + name, root / name, MD5[kind][name])
            images_path, labels_path = (root / (s + ".gz") for s in stems)
        else:
            missing = stems[0] if images_path is None else stems[1]
            raise UserError(
                f"{_TITLES[kind]} file {root / missing} (or {missing}.gz) not found; set data.download=true to "
                f"fetch the official files ({MIRRORS[kind]}), or copy the official files or copies in the same "
                f"IDX format into {root} (or pass data.root)"
            )
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise UserError(
            f"{_TITLES[kind]} files {images_path} {images.shape} and {labels_path} {labels.shape} do not match; "
            f"replace them with the official files"
        )
    if labels.size and labels.max() >= 10:
        raise UserError(f"{_TITLES[kind]} labels in {labels_path} exceed 9; replace the file with the official one")
    if kind == "mnist":
        spec = DataSpec(
            name="mnist",
            num_classes=10,
            in_channels=1,
            image_size=tuple(images.shape[1:]),
            mean=(0.1307,),
            std=(0.3081,),
            augment=AugmentSpec(pad=2, flip=False),
            class_names=tuple(str(i) for i in range(10)),
        )
    else:
        spec = DataSpec(
            name="fashion_mnist",
            num_classes=10,
            in_channels=1,
            image_size=tuple(images.shape[1:]),
            mean=(0.2860,),
            std=(0.3530,),
            augment=AugmentSpec(pad=2, flip=True),
            class_names=FASHION_CLASSES,
        )
    x = torch.from_numpy(images).unsqueeze(1).contiguous()
    return ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)), spec)


def read_mnist(root: str | Path, train: bool, download: bool = False) -> ArrayDataset:
    """MNIST (IDX files, raw or .gz): 60,000 / 10,000 1x28x28 digits, 10 classes."""
    return _read("mnist", root, train, download)


def read_fashion_mnist(root: str | Path, train: bool, download: bool = False) -> ArrayDataset:
    """Fashion-MNIST (IDX files, raw or .gz): 60,000 / 10,000 1x28x28 clothing images, 10 classes."""
    return _read("fashion_mnist", root, train, download)


DATASETS.add("mnist", read_mnist)
DATASETS.add("fashion_mnist", read_fashion_mnist)
