"""The dataset registry and :func:`build_dataset`.

``DATASETS`` maps a name to a *reader*::

    reader(root: str | Path, train: bool, download: bool = False) -> ArrayDataset

A reader returns the whole split with its original labels. Readers that decode
image files (the folder datasets) also accept two keyword-only arguments that let
:func:`build_dataset` avoid decoding what it would throw away:

* ``image_size``: decode straight to this (height, width);
* ``select``: ``select(targets, spec) -> row indices``, called with the labels of
  every file before anything is decoded; only those rows are decoded, in
  ascending order.

A reader may carry a ``default_root`` attribute (a folder name under ``./data``)
when several names share the same files (``cifar100`` and ``cifar100_coarse``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from darkknowledge.data.base import ArrayDataset, DataSpec
from darkknowledge.data.transforms import (
    _check_seed,
    _relabel,
    normalize_size,
    resize_dataset,
    resolve_classes,
    select_indices,
)
from darkknowledge.registry import Registry

__all__ = ["DATASETS", "Reader", "build_dataset", "default_root"]

Reader = Callable[..., ArrayDataset]

DATASETS: Registry[Reader] = Registry("dataset")

DEFAULT_DATA_DIR = Path("data")


def default_root(name: str) -> Path:
    """``./data/<name>`` (or ``./data/<reader.default_root>``), relative to the working directory."""
    reader = DATASETS.get(name)
    return DEFAULT_DATA_DIR / getattr(reader, "default_root", name)


def _accepts(fn: Callable, param: str) -> bool:
    try:
        return param in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


def build_dataset(
    name: str,
    root: str | Path | None = None,
    train: bool = True,
    *,
    download: bool = False,
    classes: Sequence[int | str] | None = None,
    train_per_class: int | None = None,
    image_size: int | Sequence[int] | None = None,
    seed: int = 0,
) -> ArrayDataset:
    """Read dataset ``name`` and apply, in this order:

    1. ``classes``: keep only these classes (indices, or class names), relabelled
       ``0..k-1`` in the order given; ``spec.num_classes``/``class_names`` follow.
    2. ``train_per_class``: keep at most this many samples of each class, chosen
       with a generator seeded by ``(seed, original class id)`` - the same seed
       always keeps the same rows, independent of torch's global RNG. It applies
       to whichever split is read (``train=False`` with a value thins the test
       split the same way; pass None for the full split).
    3. ``image_size``: resize (int or ``(h, w)``) with antialiased interpolation;
       ``spec.image_size`` follows. Folder datasets decode straight to this size.

    ``root`` defaults to ``./data/<name>``. Rows keep the reader's order (the
    loader shuffles).
    """
    reader = DATASETS.get(name)
    _check_seed(seed)
    root = Path(root).expanduser() if root is not None else default_root(name)
    size = normalize_size(image_size) if image_size is not None else None
    per_class = train_per_class
    chosen: dict[str, list[int] | None] = {"classes": None}

    def select(targets: Tensor, spec: DataSpec) -> Tensor:
        idx = resolve_classes(classes, spec) if classes is not None else None
        chosen["classes"] = idx
        return select_indices(targets, idx, per_class, seed)

    kwargs: dict = {"download": download}
    if size is not None and _accepts(reader, "image_size"):
        kwargs["image_size"] = size
    lazy = _accepts(reader, "select")
    if lazy:
        kwargs["select"] = select
    ds = reader(root, train, **kwargs)
    if not lazy and (classes is not None or per_class is not None):
        ds = ds.subset(select(ds.targets, ds.spec))
    if chosen["classes"] is not None:
        ds = _relabel(ds, chosen["classes"])
    if size is not None:
        ds = resize_dataset(ds, size)
    return ds
