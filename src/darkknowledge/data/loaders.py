"""The loader of a dataset, by its kind: in-memory datasets (:class:`~darkknowledge.data.base.ArrayDataset`)
get the on-device :class:`~darkknowledge.data.loader.BatchLoader`; streamed ones
(:class:`~darkknowledge.data.streaming.StreamingDataset`) the worker-decoding
:class:`~darkknowledge.data.streaming.StreamingLoader`. Both yield the same
:class:`~darkknowledge.data.loader.Batch` es, so nothing above the data layer asks which."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from darkknowledge.config import DataConfig
from darkknowledge.data.base import ArrayDataset
from darkknowledge.data.loader import BatchLoader, eval_batches


def is_streamed(dataset: Any) -> bool:
    """Whether ``dataset`` is decoded from files as it is read (``data.stream``)."""
    from darkknowledge.data.streaming import StreamingDataset

    return isinstance(dataset, StreamingDataset)


def is_tokens(dataset: Any) -> bool:
    """Whether ``dataset`` is token windows of a text corpus (a language-model run)."""
    from darkknowledge.data.tokens import TokenWindows

    return isinstance(dataset, TokenWindows)


def training_loader(
    dataset: Any,
    data: DataConfig,
    *,
    seed: int,
    device: torch.device,
    channels_last: bool,
    view_table: Tensor | None,
    rank: int = 0,
    world_size: int = 1,
):
    """The training loader of ``dataset``: ``data.batch_size``, ``data.augment`` (and ``data.workers`` when streamed)."""
    if is_tokens(dataset):
        from darkknowledge.data.tokens import TokenBatchLoader

        return TokenBatchLoader(
            dataset, data.batch_size, train=True, seed=seed, device=device, rank=rank, world_size=world_size
        )
    if is_streamed(dataset):
        from darkknowledge.data.streaming import StreamingLoader

        return StreamingLoader(
            dataset,
            data.batch_size,
            train=True,
            augment=data.augment,
            seed=seed,
            device=device,
            channels_last=channels_last,
            view_table=view_table,
            rank=rank,
            world_size=world_size,
            workers=data.workers,
        )
    assert isinstance(dataset, ArrayDataset)
    return BatchLoader(
        dataset,
        data.batch_size,
        train=True,
        augment=data.augment,
        seed=seed,
        device=device,
        channels_last=channels_last,
        view_table=view_table,
        rank=rank,
        world_size=world_size,
    )


def evaluation_batches(
    dataset: Any, batch_size: int, device: torch.device | str = "cpu", channels_last: bool = True, workers: int = 2
) -> Iterator[Any]:
    """Un-augmented batches of ``dataset`` in order (``workers`` decode a streamed dataset)."""
    if is_tokens(dataset):
        from darkknowledge.data.tokens import TokenBatchLoader

        return TokenBatchLoader(dataset, batch_size, train=False, device=device).epoch(0)
    if is_streamed(dataset):
        from darkknowledge.data import streaming

        return streaming.eval_batches(dataset, batch_size, device, channels_last, workers=workers)
    return eval_batches(dataset, batch_size, device, channels_last)
