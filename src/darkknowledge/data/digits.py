"""scikit-learn's bundled 8 x 8 handwritten digits: the offline default dataset.

The 1,797 images ship inside scikit-learn (``sklearn.datasets.load_digits``), so
this reader needs no files and no network; ``root`` and ``download`` are ignored.

* Images: 1 x 8 x 8; the original values 0..16 are scaled to 0..255 and rounded
  to uint8 (``round(v * 255 / 16)``).
* Split: a fixed stratified 80/20 split. For each digit ``c`` the images of that
  digit (in their original order) are permuted with
  ``numpy.random.default_rng([0, c])`` and the first ``round(0.2 * n_c)`` go to the
  test split - 359 test and 1,438 training images, the same on every machine
  and independent of any other seed. Rows are returned in original order.
* mean/std (0.3050,)/(0.3759,): the training split's pixel statistics.
* Augmentation: pad 1 pixel, no flip (digits are not mirror-symmetric).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from darkknowledge.data.base import ArrayDataset, AugmentSpec, DataSpec
from darkknowledge.data.registry import DATASETS

__all__ = ["read_digits", "digits_split"]

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_split(targets: np.ndarray) -> np.ndarray:
    """Boolean mask of the test rows of the fixed stratified 80/20 split."""
    test = np.zeros(len(targets), dtype=bool)
    for c in np.unique(targets):
        rows = np.flatnonzero(targets == c)
        n_test = int(round(TEST_FRACTION * rows.size))
        perm = np.random.default_rng([SPLIT_SEED, int(c)]).permutation(rows.size)
        test[rows[perm[:n_test]]] = True
    return test


def read_digits(root: str | Path | None = None, train: bool = True, download: bool = False) -> ArrayDataset:
    """scikit-learn's bundled digits (offline): 1,438 / 359 1x8x8 images, 10 classes."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    targets = np.asarray(bunch.target, dtype=np.int64)
    keep = ~digits_split(targets) if train else digits_split(targets)
    spec = DataSpec(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=(8, 8),
        mean=(0.3050,),
        std=(0.3759,),
        augment=AugmentSpec(pad=1, flip=False),
        class_names=tuple(str(i) for i in range(10)),
    )
    x = torch.from_numpy(np.ascontiguousarray(images[keep])).unsqueeze(1).contiguous()
    return ArrayDataset(x, torch.from_numpy(targets[keep]), spec)


DATASETS.add("digits", read_digits)
