"""CIFAR-10 and CIFAR-100 from the official "python version" files.

Layouts (``root`` is ``./data/cifar10`` or ``./data/cifar100`` by default; ``root``
may also be the inner folder itself)::

    root/cifar-10-batches-py/          (cifar-10-python.tar.gz)
        data_batch_1 ... data_batch_5  training: 5 x 10,000 images
        test_batch                     test: 10,000 images
        batches.meta                   {"label_names": [10 names], ...}

    root/cifar-100-python/             (cifar-100-python.tar.gz)
        train                          50,000 images
        test                           10,000 images
        meta                           {"fine_label_names": [100], "coarse_label_names": [20]}

Each data file is a pickled dict with ``data`` (uint8, N x 3072: the 1024 red, then
green, then blue values of a 32 x 32 image, row-major) and ``labels`` (CIFAR-10) or
``fine_labels``/``coarse_labels`` (CIFAR-100). The originals were pickled by
Python 2, so they are read with ``encoding="latin1"`` and the dict keys may be
``str`` or ``bytes``; both are accepted. Unpickling is restricted to the NumPy
array machinery, so a tampered file cannot run code.

Registered names: ``cifar10``, ``cifar100`` (100 fine labels) and
``cifar100_coarse`` (the 20 superclasses; reads ``./data/cifar100`` by default).

``download=True`` fetches the official archive from
https://www.cs.toronto.edu/~kriz/ into ``root``, checks its MD5 and extracts it
(see :mod:`darkknowledge.data.download`). :data:`ARCHIVES` holds the URLs and MD5s.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from darkknowledge.data.base import ArrayDataset, AugmentSpec, DataSpec
from darkknowledge.data.download import Archive, download_and_extract
from darkknowledge.data.registry import DATASETS
from darkknowledge.errors import UserError

__all__ = ["ARCHIVES", "read_cifar10", "read_cifar100", "read_cifar100_coarse", "load_cifar_pickle"]

ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays/scalars (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _text(v) -> str:
    return v.decode("latin1") if isinstance(v, (bytes, bytearray)) else str(v)


def load_cifar_pickle(path: Path) -> dict:
    """Load one CIFAR pickle; keys are returned as ``str`` whether stored as str or bytes."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise UserError(
            f"cannot read CIFAR file {path}: {e}; the file is corrupt or not in the official python "
            f"format - delete it and get the official archive again (data.download=true)"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"CIFAR file {path} holds a {type(obj).__name__}, not a dict; replace it with the official file"
        )
    return {_text(k): v for k, v in obj.items()}


def _field(d: dict, key: str, path: Path):
    if key not in d:
        raise UserError(
            f"CIFAR file {path} has no {key!r} entry (found: {', '.join(sorted(d))}); replace it with the official file"
        )
    return d[key]


def _images(d: dict, path: Path) -> np.ndarray:
    data = np.asarray(_field(d, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(
            f"CIFAR file {path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072); "
            f"replace it with the official file"
        )
    return data.reshape(-1, 3, 32, 32)


def _labels(d: dict, key: str, n: int, path: Path) -> np.ndarray:
    y = np.asarray(_field(d, key, path), dtype=np.int64).reshape(-1)
    if y.shape[0] != n:
        raise UserError(f"CIFAR file {path}: {n} images but {y.shape[0]} {key}; replace it with the official file")
    return y


def _locate(kind: str, root: Path, files: list[str], download: bool) -> Path:
    """The folder holding ``files`` (``root/<official folder>`` or ``root`` itself).

    Downloads the official archive into ``root`` when files are missing and
    ``download`` is set; otherwise raises a :class:`UserError` naming the missing file.
    """
    folder = _FOLDERS[kind]
    candidates = [root / folder, root] if root.name != folder else [root]
    for d in candidates:
        if all((d / f).is_file() for f in files):
            return d
    archive = ARCHIVES[kind]
    if download:
        download_and_extract(archive.url, root, archive.md5, filename=archive.name)
        if all((root / folder / f).is_file() for f in files):
            return root / folder
        missing = next(f for f in files if not (root / folder / f).is_file())
        raise UserError(
            f"{archive.name} was downloaded and extracted into {root} but {root / folder / missing} is still "
            f"missing; delete {root} and try again"
        )
    base = candidates[0]
    missing = next(f for f in files if not (base / f).is_file())
    title = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
    raise UserError(
        f"{title} file {base / missing} not found; set data.download=true to fetch the official archive "
        f"({archive.url}), or extract the official archive or a copy in the same layout so that "
        f"{base}/ exists (or pass data.root)"
    )


def _spec(name: str, names: list[str], mean, std) -> DataSpec:
    return DataSpec(
        name=name,
        num_classes=len(names),
        in_channels=3,
        image_size=(32, 32),
        mean=tuple(mean),
        std=tuple(std),
        augment=AugmentSpec(pad=4, flip=True),
        class_names=tuple(names),
    )


def read_cifar10(root: str | Path, train: bool, download: bool = False) -> ArrayDataset:
    """CIFAR-10 (cifar-10-batches-py/): 50,000 / 10,000 3x32x32 images, 10 classes."""
    batches = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    folder = _locate("cifar10", Path(root), batches + ["batches.meta"], download)
    meta = load_cifar_pickle(folder / "batches.meta")
    names = [_text(n) for n in _field(meta, "label_names", folder / "batches.meta")]
    xs, ys = [], []
    for b in batches:
        d = load_cifar_pickle(folder / b)
        x = _images(d, folder / b)
        xs.append(x)
        ys.append(_labels(d, "labels", len(x), folder / b))
    y = np.concatenate(ys)
    _check_range(y, len(names), folder)
    spec = _spec("cifar10", names, CIFAR10_MEAN, CIFAR10_STD)
    return ArrayDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(y), spec)


def _read_cifar100(root: str | Path, train: bool, download: bool, coarse: bool) -> ArrayDataset:
    split = "train" if train else "test"
    folder = _locate("cifar100", Path(root), [split, "meta"], download)
    meta = load_cifar_pickle(folder / "meta")
    key = "coarse" if coarse else "fine"
    names = [_text(n) for n in _field(meta, f"{key}_label_names", folder / "meta")]
    d = load_cifar_pickle(folder / split)
    x = _images(d, folder / split)
    y = _labels(d, f"{key}_labels", len(x), folder / split)
    _check_range(y, len(names), folder)
    spec = _spec("cifar100_coarse" if coarse else "cifar100", names, CIFAR100_MEAN, CIFAR100_STD)
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), spec)


def _check_range(y: np.ndarray, k: int, folder: Path) -> None:
    if y.size and (y.min() < 0 or y.max() >= k):
        raise UserError(f"CIFAR labels in {folder} fall outside 0..{k - 1}; replace the files with the official ones")


def read_cifar100(root: str | Path, train: bool, download: bool = False) -> ArrayDataset:
    """CIFAR-100 (cifar-100-python/): 50,000 / 10,000 3x32x32 images, 100 fine labels."""
    return _read_cifar100(root, train, download, coarse=False)


def read_cifar100_coarse(root: str | Path, train: bool, download: bool = False) -> ArrayDataset:
    """CIFAR-100 (cifar-100-python/) with the 20 coarse (superclass) labels."""
    return _read_cifar100(root, train, download, coarse=True)


read_cifar100_coarse.default_root = "cifar100"  # type: ignore[attr-defined]

DATASETS.add("cifar10", read_cifar10)
DATASETS.add("cifar100", read_cifar100)
DATASETS.add("cifar100_coarse", read_cifar100_coarse)
