"""Whole-dataset helpers used by :func:`darkknowledge.data.build_dataset`.

These run once, when a dataset is built (not per batch):

* :func:`select_indices` - which rows a class subset and a per-class cap keep.
  It depends only on the labels and the seed (NumPy generators seeded with
  ``(seed, class id)``), never on torch's global RNG, so the same call always
  keeps the same rows, and the rows kept for one class do not depend on which
  other classes were selected.
* :func:`subset_classes` - keep some classes, relabel them ``0..k-1``.
* :func:`subsample_per_class` - keep at most ``n`` rows per class.
* :func:`resize_images` / :func:`resize_dataset` - antialiased resize of uint8
  image tensors to a fixed size, result uint8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from darkknowledge.data.base import ArrayDataset, DataSpec
from darkknowledge.errors import UserError

__all__ = [
    "normalize_size",
    "resolve_classes",
    "select_indices",
    "subset_classes",
    "subsample_per_class",
    "resize_images",
    "resize_dataset",
]


def normalize_size(size: int | Sequence[int], *, what: str = "image_size") -> tuple[int, int]:
    """``32`` -> ``(32, 32)``; ``(h, w)`` -> ``(h, w)``; anything else is a :class:`UserError`."""
    if isinstance(size, bool):
        raise UserError(f"{what} must be an int or (height, width), got {size!r}")
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise UserError(f"{what} must be an int or (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise UserError(f"{what} must be positive, got {size!r}")
    return h, w


def resolve_classes(classes: Sequence[int | str], spec: DataSpec) -> list[int]:
    """Turn a list of class indices and/or class names into validated indices.

    Raises :class:`UserError` on an empty list, an index out of range, an unknown
    name or a repeated class.
    """
    if isinstance(classes, (str, int)):
        classes = [classes]
    classes = list(classes)
    if not classes:
        raise UserError(f"data.classes is empty for dataset {spec.name!r}; give at least one class index")
    names = {n: i for i, n in enumerate(spec.class_names)}
    out: list[int] = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise UserError(
                    f"unknown class name {c!r} in data.classes for dataset {spec.name!r}; use a class index "
                    f"0..{spec.num_classes - 1} or one of its class names"
                )
            idx = names[c]
        else:
            idx = int(c)
        if not 0 <= idx < spec.num_classes:
            raise UserError(
                f"class index {idx} in data.classes is out of range for dataset {spec.name!r} "
                f"({spec.num_classes} classes: use 0..{spec.num_classes - 1})"
            )
        if idx in out:
            raise UserError(f"class {c!r} appears twice in data.classes for dataset {spec.name!r}; list each once")
        out.append(idx)
    return out


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"the subset seed (data.subset_seed) must be a non-negative integer, got {seed!r}")
    return int(seed)


def select_indices(
    targets: Tensor,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Row indices (int64, ascending) kept by a class subset and a per-class cap.

    ``classes``: original class indices to keep (None: all). ``per_class``: keep at
    most this many rows of each class, chosen uniformly at random with a NumPy
    generator seeded by ``(seed, original class id)`` (None: all rows).
    """
    targets = torch.as_tensor(targets).to(torch.int64).cpu()
    if per_class is not None and (isinstance(per_class, bool) or int(per_class) < 1):
        raise UserError(
            f"the per-class sample count (data.train_per_class / data.test_per_class) must be a positive "
            f"integer, got {per_class!r}"
        )
    seed = _check_seed(seed)
    if classes is None:
        if per_class is None:
            return torch.arange(targets.numel(), dtype=torch.int64)
        classes = torch.unique(targets).tolist()
    y = targets.numpy()
    kept: list[np.ndarray] = []
    for c in classes:
        rows = np.flatnonzero(y == int(c))
        if per_class is not None and rows.size > per_class:
            rng = np.random.default_rng([seed, int(c)])
            rows = rows[rng.permutation(rows.size)[: int(per_class)]]
        kept.append(rows)
    if not kept:
        return torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(np.sort(np.concatenate(kept)).astype(np.int64))


def subset_classes(ds: ArrayDataset, classes: Sequence[int | str]) -> ArrayDataset:
    """Keep the rows of ``classes`` (indices or names), relabelled ``0..k-1`` in the given order.

    ``spec.num_classes`` and ``spec.class_names`` follow the new labels.
    """
    idx = resolve_classes(classes, ds.spec)
    rows = select_indices(ds.targets, idx)
    return _relabel(ds.subset(rows), idx)


def _relabel(ds: ArrayDataset, classes: list[int]) -> ArrayDataset:
    """Map original labels ``classes[i]`` to ``i`` (all rows must be in ``classes``)."""
    lut = torch.full((ds.spec.num_classes,), -1, dtype=torch.int64)
    lut[torch.tensor(classes, dtype=torch.int64)] = torch.arange(len(classes), dtype=torch.int64)
    targets = lut[ds.targets]
    names = tuple(ds.spec.class_names[i] for i in classes) if ds.spec.class_names else ()
    spec = replace(ds.spec, num_classes=len(classes), class_names=names)
    return ArrayDataset(ds.images, targets, spec)


def subsample_per_class(ds: ArrayDataset, per_class: int, seed: int = 0) -> ArrayDataset:
    """At most ``per_class`` rows of each class, chosen deterministically from ``seed``."""
    return ds.subset(select_indices(ds.targets, None, per_class, seed))


def resize_images(images: Tensor, size: int | Sequence[int], *, chunk: int = 4096) -> Tensor:
    """Resize uint8 ``(N, C, H, W)`` images to ``size`` with antialiased bilinear interpolation.

    Shrinking averages over the source area (antialiasing, like Pillow's resize);
    enlarging is plain bilinear. The result is uint8. Uses torch's native uint8
    kernel (about 50,000 CIFAR images per second per core); should it be missing,
    falls back to float maths rounded back to uint8 (within 1 level of it). Works
    in chunks of ``chunk`` images to bound the working memory.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"resize_images expects uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    h, w = normalize_size(size)
    n, c = images.shape[:2]
    if tuple(images.shape[2:]) == (h, w):
        return images
    out = torch.empty((n, c, h, w), dtype=torch.uint8)
    for start in range(0, n, chunk):
        block = images[start : start + chunk].cpu()
        try:
            out[start : start + chunk] = F.interpolate(
                block, size=(h, w), mode="bilinear", align_corners=False, antialias=True
            )
        except (RuntimeError, NotImplementedError):  # pragma: no cover - torch without the uint8 kernel
            resized = F.interpolate(block.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize_dataset(ds: ArrayDataset, size: int | Sequence[int]) -> ArrayDataset:
    """:func:`resize_images` on a dataset; ``spec.image_size`` follows, and the
    augmentation padding is scaled by the same factor as the height."""
    h, w = normalize_size(size)
    old_h = ds.spec.image_size[0]
    if (h, w) == tuple(ds.spec.image_size):
        return ds
    pad = ds.spec.augment.pad
    new_pad = max(1, round(pad * h / old_h)) if pad > 0 else 0
    spec = replace(ds.spec, image_size=(h, w), augment=replace(ds.spec.augment, pad=new_pad))
    return ArrayDataset(resize_images(ds.images, (h, w)), ds.targets, spec)
