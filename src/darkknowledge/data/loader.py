"""The fast training/evaluation loader over an in-memory :class:`ArrayDataset`.

* The whole uint8 dataset lives on the training device; a batch is an index gather.
* Order and augmentation of epoch ``e`` depend only on ``(seed, e)`` (their own
  ``torch.Generator``, never the global RNG), so a run killed after epoch ``e`` and
  resumed sees exactly the batches it would have seen.
* ``rank``/``world_size`` shard each epoch's permutation (one process per rank); training
  shards are equal (the last ``n mod world_size`` samples of the permutation wait for
  the next epoch), so every rank takes the same number of steps, and rank r's batch i
  holds every world_size-th sample of the single-process batch i of size
  ``world_size * batch_size``.
* ``view_table`` (N, K, 3): replay one of K fixed augmentation views per sample (for
  the teacher-output cache); ``Batch.views`` then says which.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from darkknowledge.data.augment import Normalizer, apply_augment, identity_params, sample_augment_params
from darkknowledge.data.base import ArrayDataset


@dataclass
class Batch:
    images: Tensor  # float32, normalised, (B, C, H, W) (channels_last if requested)
    targets: Tensor  # int64 (B,)
    indices: Tensor  # int64 (B,) row of each sample in its dataset
    views: Tensor | None = None  # int64 (B,) cached view id, when replaying a view table
    aug_params: Tensor | None = None  # int64 (B, 3) (dy, dx, flip) applied

    @property
    def inputs(self) -> Tensor:
        """What the model reads (the images; token batches have their own)."""
        return self.images

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    unit = "images"  # what train throughput counts: train_images_per_s

    @property
    def units(self) -> int:
        return len(self)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator for (seed, epoch, stream), independent of global RNG state."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + int(stream) * 104_729) % (2**63 - 1))
    return g


class BatchLoader:
    """Iterates :class:`Batch` es of an :class:`ArrayDataset` on ``device``."""

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        train: bool,
        augment: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
        drop_last: bool | None = None,
        view_table: Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.dataset = dataset
        self.spec = dataset.spec
        self.batch_size = batch_size
        self.train = train
        self.augment = augment and train
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.images = dataset.images.to(self.device)
        self.targets = dataset.targets.to(self.device)
        self.normalize = Normalizer(self.spec.mean, self.spec.std, self.device, channels_last)
        if view_table is not None and view_table.shape[:1] != (len(dataset),):
            raise ValueError(f"view table has {view_table.shape[0]} rows for {len(dataset)} samples")
        self.view_table = view_table

    def _shard_size(self) -> int:
        if self.train and self.world_size > 1:  # equal shards: every rank takes the same number of steps
            return len(self.dataset) // self.world_size
        return len(range(self.rank, len(self.dataset), self.world_size))

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        n = len(self.dataset)
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        if self.train and self.world_size > 1:
            order = order[: n - n % self.world_size]
        order = order[self.rank :: self.world_size]
        views = params = None
        if self.view_table is not None:
            k = self.view_table.shape[1]
            views = torch.randint(0, k, (n,), generator=gen)
            params = self.view_table[torch.arange(n), views]
        elif self.augment:
            params = sample_augment_params(n, self.spec.augment, gen)
        steps = len(self)
        # the epoch's order, views and augmentation on the device once: no host copy per step
        augmented = params is not None and (self.spec.augment.pad > 0 or bool(params[:, 2].any()))
        order = order.to(self.device)
        params = None if params is None else params.to(self.device)
        views = None if views is None else views.to(self.device)
        for i in range(steps):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.images[idx]
            p = None if params is None else params[idx]
            if augmented and p is not None:
                images = apply_augment(images, p, self.spec.augment.pad)
            yield Batch(
                images=self.normalize(images),
                targets=self.targets[idx],
                indices=idx,
                views=None if views is None else views[idx],
                aug_params=p,
            )

    __iter__ = epoch


def eval_batches(
    dataset: ArrayDataset, batch_size: int = 512, device: torch.device | str = "cpu", channels_last: bool = True
) -> Iterator[Batch]:
    """Un-augmented batches in dataset order (evaluation, diagnostics, cache builds)."""
    return BatchLoader(
        dataset, batch_size, train=False, augment=False, device=device, channels_last=channels_last
    ).epoch(0)


__all__ = ["Batch", "BatchLoader", "epoch_generator", "eval_batches", "identity_params"]
