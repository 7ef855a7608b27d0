"""In-memory datasets: uint8 image tensors + int64 labels + a description.

Every reader in :mod:`darkknowledge.data` returns an :class:`ArrayDataset`; the fast
loader (:mod:`darkknowledge.data.loader`) augments whole batches on the training
device from these tensors, so no per-sample Python transform runs in the hot loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from darkknowledge.errors import UserError


@dataclass(frozen=True)
class AugmentSpec:
    """Default training augmentation of a dataset: random crop with zero padding
    ``pad`` pixels on each side, and a random horizontal flip if ``flip``."""

    pad: int = 4
    flip: bool = True


@dataclass(frozen=True)
class DataSpec:
    """What a model and the loader need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    class_names: tuple[str, ...] = ()


@dataclass
class ArrayDataset:
    """``images``: uint8 (N, C, H, W); ``targets``: int64 (N,) in [0, num_classes)."""

    images: Tensor
    targets: Tensor
    spec: DataSpec

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.targets.dtype != torch.int64 or self.targets.shape != (self.images.shape[0],):
            raise ValueError("targets must be int64 with one label per image")
        n, c, h, w = self.images.shape
        if c != self.spec.in_channels or (h, w) != tuple(self.spec.image_size):
            raise ValueError(f"images {tuple(self.images.shape)} do not match spec {self.spec}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Tensor) -> ArrayDataset:
        """Rows ``indices`` (keeps labels and spec)."""
        return ArrayDataset(self.images[indices], self.targets[indices], self.spec)

    def with_spec(self, **changes) -> ArrayDataset:
        return ArrayDataset(self.images, self.targets, replace(self.spec, **changes))


def held_out_rows(targets: torch.Tensor, per_class: int, seed: int, num_classes: int) -> torch.Tensor:
    """The validation rows (sorted): ``per_class`` rows of each class chosen by a generator seeded with
    (seed, class) — the same rows for every run, model and method, in memory or streamed."""
    held = []
    for c in range(num_classes):
        rows = (targets == c).nonzero().flatten()
        if len(rows) == 0:
            continue
        if len(rows) <= per_class:
            raise UserError(
                f"data.val_per_class={per_class} leaves no training image of class {c} "
                f"({len(rows)} in the training split); lower it"
            )
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + c * 7919 + 424_242) % (2**63 - 1))
        held.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
    return torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.int64)
