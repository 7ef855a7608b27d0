"""A run's dataset splits: training, validation held out of it, and test.

The validation split is data logic: ``data.val_per_class`` rows of each class are taken out
of the training split by a generator seeded with (``data.subset_seed``, class), the same rows
for every run, model and method, and they are never in the training rows that come with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from darkknowledge.config import DataConfig
from darkknowledge.data.base import ArrayDataset, held_out_rows
from darkknowledge.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    """The training rows (validation rows removed), the validation rows (or None) and the test split
    (in-memory datasets, or streamed ones with ``data.stream``)."""

    train: Any
    val: Any | None
    test: Any

    def __iter__(self):  # train, val, test = splits
        return iter((self.train, self.val, self.test))


def load_splits(data: DataConfig) -> Splits:
    """The configured splits, reading the training files once (indexing them, when streamed)."""
    if data.stream:
        from darkknowledge.data.streaming import build_splits

        return Splits(*build_splits(data))
    from darkknowledge.data.corpora import is_text, load_text_splits

    if is_text(data):
        return Splits(*load_text_splits(data))
    train, val = split_validation(_training_files(data), data.val_per_class, data.subset_seed)
    return Splits(train, val, load_split(data, "test"))


def load_split(data: DataConfig, split: str) -> Any:
    """One split: ``train`` (without the validation rows), ``val`` or ``test``."""
    from darkknowledge.data.corpora import is_text

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "val" and not data.val_per_class and not is_text(data):
        raise UserError(
            "there is no validation split: set data.val_per_class=N (images per class held out of training)"
        )
    if data.stream or is_text(data):
        return getattr(load_splits(data), split)
    if split == "test":
        return _read(data, train=False)
    train, val = split_validation(_training_files(data), data.val_per_class, data.subset_seed)
    return val if split == "val" and val is not None else train


def _training_files(data: DataConfig) -> ArrayDataset:
    """The training split as read (``train_per_class`` applied), before the validation rows are held out."""
    return _read(data, train=True)


def _read(data: DataConfig, train: bool) -> ArrayDataset:
    from darkknowledge.data import build_dataset

    return build_dataset(
        data.name,
        root=data.root,
        train=train,
        download=data.download,
        classes=data.classes,
        train_per_class=data.train_per_class if train else data.test_per_class,
        image_size=data.image_size,
        seed=data.subset_seed,
    )


def split_validation(full: ArrayDataset, per_class: int | None, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(training rows, validation rows) of an in-memory split (:func:`held_out_rows`)."""
    if not per_class:
        return full, None
    val_rows = held_out_rows(full.targets, per_class, seed, full.spec.num_classes)
    keep = torch.ones(len(full), dtype=torch.bool)
    keep[val_rows] = False
    return full.subset(keep.nonzero().flatten()), full.subset(val_rows)
