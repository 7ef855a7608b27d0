"""Streaming full-resolution image datasets: files are decoded lazily in ``DataLoader``
workers, one view per sample, and only uint8 batches cross to the training device.

* :class:`StreamingDataset`: a :class:`~darkknowledge.data.sources.Source` (class
  folders or webdataset shards) + the output size, decoder and bad-file policy. It holds
  no pixels; memory does not grow with the dataset.
* :class:`StreamingLoader`: :class:`~darkknowledge.data.loader.BatchLoader`'s interface
  (``epoch(e)``, ``len``, rank/world_size sharding, ``view_table`` replay). A worker turns
  one batch description (rows + views) into one uint8 ``(B, H, W, 3)`` tensor; the
  loader normalises it on the device (channels_last when asked).
* Determinism: epoch ``e``'s order is ``randperm`` of ``(seed, e)`` as in the in-memory
  loader, and sample ``i``'s training view is a function of ``(seed, e, i)`` and the
  image's size only (counter-based uniforms), so neither the worker count, the batch
  size nor the number of ranks changes what a sample looks like.
* :func:`build_splits` builds (train, val or None, test) from a ``DataConfig``.
"""

from __future__ import annotations

import copy
import math
import mmap
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from darkknowledge.data.base import AugmentSpec, DataSpec, held_out_rows
from darkknowledge.data.folders import IMAGENET_MEAN, IMAGENET_STD
from darkknowledge.data.jpeg import DECODERS, BadImage, Probed, get_decoder
from darkknowledge.data.loader import Batch, epoch_generator
from darkknowledge.data.sources import BAD_FILES, Source, index_class_folders, index_shards
from darkknowledge.data.transforms import select_indices
from darkknowledge.data.views import (
    UNIFORMS_PER_VIEW,
    VIEW_DIM,
    center_views,
    crop_views_from_uniforms,
)
from darkknowledge.errors import UserError
from darkknowledge.registry import Registry

__all__ = [
    "STREAMING_DATASETS",
    "StreamingDataset",
    "StreamingLoader",
    "build_splits",
    "eval_batches",
    "held_out_rows",
    "is_streaming",
    "view_uniforms",
]

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 in, uint64 out; wraps modulo 2**64)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def view_uniforms(seed: int, epoch: int, rows: np.ndarray, count: int = UNIFORMS_PER_VIEW) -> np.ndarray:
    """Uniforms in [0, 1) for each row: float64 (len(rows), count), a function of (seed, epoch, row) only."""
    with np.errstate(over="ignore"):
        key = _mix(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + 1)
        key = _mix(key ^ (np.uint64(int(epoch) & 0xFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)))
        counter = np.asarray(rows, dtype=np.uint64)[:, None] * np.uint64(count) + np.arange(count, dtype=np.uint64)
        bits = _mix((counter * np.uint64(0x9E3779B97F4A7C15)) ^ key) & _M64
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass
class _Work:
    """One batch to decode: dataset rows, and either fixed views (B, 5) or (seed, epoch) to sample them;
    ``slot``: write the pixels into this slot of the dataset's shared ``slots`` (-1: return them)."""

    rows: np.ndarray
    views: np.ndarray | None
    seed: int
    epoch: int
    slot: int = -1


class StreamingDataset(torch.utils.data.Dataset):
    """Samples of ``source`` decoded on demand to ``crop_size`` x ``crop_size`` uint8 RGB.

    ``dataset[work]`` (called in a loader worker) returns one batch as a dict: ``images``
    uint8 (B, H, W, 3) (None when written into the loader's shared ``slot``), ``rows``, ``views``
    float32 (B, 5) as applied, ``skipped``
    ("file: reason" of each bad file left out, with ``bad_files=skip``) and ``error``
    (the one-line message of the first bad file, with ``bad_files=error``).
    """

    def __init__(
        self,
        source: Source,
        name: str,
        *,
        crop_size: int = 224,
        resize_size: int = 256,
        decoder: str = "auto",
        bad_files: str = "error",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ):
        if bad_files not in BAD_FILES:
            raise UserError(f"data.bad_files={bad_files!r} is not one of {', '.join(BAD_FILES)}")
        if crop_size < 1 or resize_size < crop_size:
            raise UserError(
                f"data.crop_size={crop_size} and data.resize_size={resize_size}: need 1 <= crop_size <= resize_size"
            )
        self.source = source
        self.slots: Tensor | None = None  # a loader's shared uint8 (S, B, H, W, 3) output slots
        self.crop_size, self.resize_size = int(crop_size), int(resize_size)
        self.decoder = get_decoder(decoder)
        self.bad_files = bad_files
        self.scale, self.ratio = scale, ratio
        self.targets = torch.from_numpy(np.asarray(source.targets, dtype=np.int64))
        self.spec = DataSpec(
            name=name,
            num_classes=len(source.class_names),
            in_channels=3,
            image_size=(self.crop_size, self.crop_size),
            mean=mean,
            std=std,
            augment=AugmentSpec(pad=0, flip=True),
            class_names=tuple(source.class_names),
        )

    def __len__(self) -> int:
        return len(self.source)

    def subset(self, rows: Tensor | np.ndarray) -> StreamingDataset:
        """Rows ``rows`` (same settings)."""
        out = object.__new__(StreamingDataset)
        out.__dict__.update(self.__dict__)
        out.source = self.source.subset(np.asarray(rows, dtype=np.int64))
        out.targets = torch.from_numpy(np.asarray(out.source.targets, dtype=np.int64))
        return out

    def relabel(self, classes: list[int]) -> StreamingDataset:
        """Keep labels in ``classes`` only (callers subset first), renumbered 0..k-1 in that order."""
        lookup = np.full(self.spec.num_classes, -1, dtype=np.int64)
        lookup[np.asarray(classes, dtype=np.int64)] = np.arange(len(classes))
        out = self.subset(np.arange(len(self)))
        out.source.targets = lookup[out.source.targets]
        out.targets = torch.from_numpy(out.source.targets)
        names = tuple(self.spec.class_names[c] for c in classes)
        out.spec = replace(self.spec, num_classes=len(classes), class_names=names)
        return out

    def describe(self, i: int) -> str:
        """The file (or shard member) of row ``i``."""
        return self.source.describe(i)

    def original_size(self, i: int) -> tuple[int, int]:
        """(width, height) of row ``i``'s image as stored (reads the header only)."""
        try:
            probed = DECODERS[self.decoder].probe(self.source.read(i))
        except (BadImage, OSError) as e:
            raise UserError(f"cannot read image {self.describe(i)}: {e}; delete or replace the file") from None
        return probed.width, probed.height

    def _views(self, work: _Work, kept: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """float32 (len(kept), 5): the stored views, RandomResizedCrop views from (seed, epoch, row), or the
        centre views of images of ``sizes`` (width, height)."""
        if work.views is not None:
            return np.asarray(work.views[kept], dtype=np.float32)
        if work.seed >= 0:
            uniforms = view_uniforms(work.seed, work.epoch, work.rows[kept])
            return crop_views_from_uniforms(sizes[:, 0], sizes[:, 1], uniforms, scale=self.scale, ratio=self.ratio)
        return center_views(sizes, self.resize_size, self.crop_size).numpy()

    def _bad(self, row: int, error: Exception, skipped: list[str]) -> str | None:
        message = f"cannot decode image {self.describe(row)}: {error}"
        if self.bad_files == "error":
            return message + "; delete or replace the file (or set data.bad_files=skip)"
        skipped.append(message)
        return None

    def __getitem__(self, work: _Work) -> dict[str, Any]:
        decoder = DECODERS[self.decoder]
        out_size = (self.crop_size, self.crop_size)
        rows = work.rows
        skipped: list[str] = []
        # 1. headers of the whole batch, 2. every view at once, 3. decode
        probes: list[Probed] = []
        kept: list[int] = []
        for j, row in enumerate(rows.tolist()):
            try:
                probes.append(decoder.probe(self.source.read(row)))
            except (BadImage, OSError) as e:
                if (error := self._bad(row, e, skipped)) is not None:
                    return {"error": error}
                continue
            kept.append(j)
        sizes = np.array([(p.width, p.height) for p in probes], dtype=np.float64).reshape(-1, 2)
        views = self._views(work, np.asarray(kept, dtype=np.int64), sizes)
        if work.slot >= 0 and self.slots is not None:
            batch = self.slots[work.slot, : len(kept)]  # shared with the loader: nothing to send
        else:
            batch = torch.empty((len(kept), self.crop_size, self.crop_size, 3), dtype=torch.uint8)
        images = batch.numpy()
        done: list[int] = []
        for k, (j, probed) in enumerate(zip(kept, probes)):
            try:
                images[len(done)] = decoder.decode(probed, views[k], out_size)
            except (BadImage, OSError) as e:
                if (error := self._bad(int(rows[j]), e, skipped)) is not None:
                    return {"error": error}
                continue
            done.append(k)
        keep = np.asarray(kept, dtype=np.int64)[done]
        return {
            "images": None if work.slot >= 0 and self.slots is not None else batch[: len(done)],
            "slot": work.slot,
            "rows": rows[keep],  # small arrays travel pickled; a tensor would get its own shared memory
            "views": np.ascontiguousarray(views[done]),
            "skipped": skipped,
            "error": None,
        }


class _HostBuffers:
    """Page-mapped output memory for normalised CPU batches, reused once nothing made from it is alive.

    A fresh float batch of several MB per step from the C heap fragments it: the training process grew by
    hundreds of MB over an epoch (glibc keeps the freed chunks). Here each batch lives in its own anonymous
    mapping; a pooled mapping is handed out again only when no tensor (or view) of it exists any more, so
    batches never alias; when every pooled one is in use a new mapping is made (returned to the system
    when its tensors die)."""

    def __init__(self, pool: int = 4):
        self.pool = pool
        self.buffers: list[mmap.mmap] = []
        self.free_refs: list[int] = []

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self.buffers[i])

    def empty(self, shape: tuple[int, ...], channels_last: bool) -> Tensor:
        """float32 ``shape`` (B, C, H, W), channels_last or contiguous, in mapped memory."""
        nbytes = 4 * math.prod(shape)
        buf = None
        for i in range(len(self.buffers)):
            if len(self.buffers[i]) == nbytes and self._refs(i) == self.free_refs[i]:
                buf = self.buffers[i]
                break
        if buf is None:
            buf = mmap.mmap(-1, nbytes)
            if len(self.buffers) < self.pool:
                self.buffers.append(buf)
                self.free_refs.append(self._refs(len(self.buffers) - 1) - 1)  # minus the local name `buf`
        flat = torch.frombuffer(buf, dtype=torch.float32, count=math.prod(shape))
        b, c, h, w = shape
        return flat.view(b, h, w, c).permute(0, 3, 1, 2) if channels_last else flat.view(b, c, h, w)


class _Plan(torch.utils.data.Sampler):
    """The loader's current epoch as an iterable of :class:`_Work` (re-set before each epoch)."""

    def __init__(self) -> None:
        self.items: list[_Work] = []

    def __iter__(self) -> Iterator[_Work]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _identity(x: Any) -> Any:
    return x


class StreamingLoader:
    """Iterates :class:`~darkknowledge.data.loader.Batch` es of a :class:`StreamingDataset` on ``device``.

    Same arguments and sharding as :class:`~darkknowledge.data.loader.BatchLoader`, plus ``workers``
    (``DataLoader`` worker processes, persistent; 0 decodes in this process) and ``prefetch``
    (batches in flight per worker). Training views are RandomResizedCrop + flip (``augment``), otherwise
    the evaluation view (resize, centre crop); ``view_table`` (N, K, 5) float32 replays stored views
    (``Batch.views`` says which). ``Batch.aug_params`` holds the float32 (B, 5) views applied.
    ``skipped`` lists the bad files left out so far (``bad_files=skip``).
    """

    def __init__(
        self,
        dataset: StreamingDataset,
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
        workers: int = 2,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if workers < 0:
            raise UserError(f"data.workers={workers} must be >= 0")
        self.dataset = dataset
        self.spec = dataset.spec
        self.batch_size = batch_size
        self.train = train
        self.augment = augment and train
        self.seed = seed
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        if view_table is not None:
            if view_table.dim() != 3 or view_table.shape[0] != len(dataset) or view_table.shape[2] != VIEW_DIM:
                raise ValueError(f"view table {tuple(view_table.shape)} is not ({len(dataset)}, K, {VIEW_DIM})")
            view_table = view_table.to(torch.float32).cpu()
        self.view_table = view_table
        self.skipped: list[str] = []
        self._skipped_seen: set[str] = set()
        from darkknowledge.data.augment import Normalizer

        self.normalize = Normalizer(self.spec.mean, self.spec.std, self.device, channels_last)
        self._host = _HostBuffers() if self.device.type == "cpu" else None
        self._tiled: tuple[Tensor, Tensor] | None = None
        self._plan = _Plan()
        # CPU with workers: each worker decodes into one of a ring of shared-memory slots that outlives the
        # batch, so no batch is allocated in shared memory and copied per step. A slot is reused after
        # in_flight + 1 batches: by then the loader has normalised out of it (the DataLoader keeps at most
        # workers * prefetch tasks in flight and dispatches the next when it hands one over).
        worker_ds = dataset
        self._slots: Tensor | None = None
        if self.device.type == "cpu" and workers > 0:
            size = dataset.crop_size
            self._slots = torch.empty((workers * prefetch + 2, batch_size, size, size, 3), dtype=torch.uint8)
            self._slots.share_memory_()
            worker_ds = copy.copy(dataset)
            worker_ds.slots = self._slots
        self._loader = torch.utils.data.DataLoader(
            worker_ds,
            batch_size=None,
            sampler=self._plan,
            num_workers=workers,
            collate_fn=_identity,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
        )

    def _shard_size(self) -> int:
        n = len(self.dataset)
        if self.train and self.world_size > 1:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _normalise(self, pixels: Tensor) -> Tensor:
        """The Normalizer's ``x * scale + shift`` on the CPU, into mapped memory (:class:`_HostBuffers`).
        channels_last: over rows of W * 3 values with scale and shift tiled along the row, so the innermost
        loop runs over a whole row instead of over 3 channels (4x faster than broadcasting (1, 3, 1, 1))."""
        assert self._host is not None
        b, h, w, c = pixels.shape
        out = self._host.empty((b, c, h, w), self.channels_last)
        if not self.channels_last:
            out.copy_(pixels.permute(0, 3, 1, 2))
            return torch.addcmul(self.normalize.shift, out, self.normalize.scale, out=out)
        if self._tiled is None or self._tiled[0].numel() != w * c:
            self._tiled = (self.normalize.scale.flatten().repeat(w), self.normalize.shift.flatten().repeat(w))
        scale, shift = self._tiled
        rows = out.permute(0, 2, 3, 1).view(b * h, w * c)
        rows.copy_(pixels.view(b * h, w * c))
        torch.addcmul(shift, rows, scale, out=rows)
        return out

    def plan(self, epoch: int = 0) -> tuple[list[_Work], Tensor | None]:
        """The batches of ``epoch`` (rows and views, before decoding) and the view ids when replaying."""
        n = len(self.dataset)
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        if self.train and self.world_size > 1:
            order = order[: n - n % self.world_size]
        order = order[self.rank :: self.world_size]
        view_ids = fixed = None
        if self.view_table is not None:
            view_ids = torch.randint(0, self.view_table.shape[1], (n,), generator=gen)
            fixed = self.view_table[torch.arange(n), view_ids].numpy()
        rows_all = order.numpy()
        seed = self.seed if self.augment else -1  # -1: the evaluation view
        work = []
        for i in range(len(self)):
            rows = rows_all[i * self.batch_size : (i + 1) * self.batch_size]
            slot = i % len(self._slots) if self._slots is not None else -1
            work.append(_Work(rows, None if fixed is None else fixed[rows], seed, epoch, slot))
        return work, view_ids

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        self._plan.items, view_ids = self.plan(epoch)
        non_blocking = self.device.type == "cuda"
        for out in self._loader:
            if out["error"] is not None:
                raise UserError(out["error"])
            for message in out["skipped"]:
                if message not in self._skipped_seen:
                    self._skipped_seen.add(message)
                    self.skipped.append(message)
            if len(out["rows"]) == 0:
                continue
            if out["images"] is None:
                assert self._slots is not None
                pixels = self._slots[out["slot"], : len(out["rows"])]  # uint8 (B, H, W, 3)
            else:
                pixels = out["images"].to(self.device, non_blocking=non_blocking)
            images = self._normalise(pixels) if self._host is not None else self.normalize(pixels.permute(0, 3, 1, 2))
            rows = torch.from_numpy(out["rows"])
            yield Batch(
                images=images,
                targets=self.dataset.targets[rows].to(self.device, non_blocking=non_blocking),
                indices=rows.to(self.device),
                views=None if view_ids is None else view_ids[rows].to(self.device),
                aug_params=torch.from_numpy(out["views"]),
            )

    __iter__ = epoch


def eval_batches(
    dataset: StreamingDataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    workers: int = 2,
) -> Iterator[Batch]:
    """Evaluation-view batches in dataset order (evaluation, diagnostics, cache builds); for repeated
    evaluations keep one ``StreamingLoader(train=False)`` instead, so its workers persist."""
    loader = StreamingLoader(
        dataset, batch_size, train=False, device=device, channels_last=channels_last, workers=workers
    )
    return loader.epoch(0)


# --------------------------------------------------------------------------- splits

STREAMING_DATASETS: Registry[Any] = Registry("streaming dataset")


def _imagenet(root: Path, train: bool, bad_files: str) -> Source:
    split = "train" if train else "val"
    class_split = "train" if (root / "train").is_dir() else split
    return index_class_folders(root, split, class_split, name="imagenet", bad_files=bad_files)


def _imagefolder(root: Path, train: bool, bad_files: str) -> Source:
    split = "train" if train else ("val" if (root / "val").is_dir() or not (root / "test").is_dir() else "test")
    class_split = "train" if (root / "train").is_dir() else split
    return index_class_folders(root, split, class_split, name="imagefolder", bad_files=bad_files)


def _webdataset(root: Path, train: bool, bad_files: str) -> Source:
    split = "train" if train else ("val" if (root / "val").is_dir() or not (root / "test").is_dir() else "test")
    return index_shards(root / split, bad_files=bad_files)


_imagenet.__doc__ = "ImageNet layout, streamed: train/<wnid>/*.JPEG, val/<wnid>/*"
_imagefolder.__doc__ = "class folders, streamed: train/<class>/**, val/<class>/** (or test/)"
_webdataset.__doc__ = "webdataset tar shards, streamed: train/*.tar, val/*.tar (key.jpg + key.cls)"
STREAMING_DATASETS.add("imagenet", _imagenet)
STREAMING_DATASETS.add("imagefolder", _imagefolder)
STREAMING_DATASETS.add("webdataset", _webdataset)


def is_streaming(data_cfg: Any) -> bool:
    """Whether the data section asks for the streaming path (``data.stream``)."""
    return bool(getattr(data_cfg, "stream", False))


def _read_split(data_cfg: Any, train: bool, per_class: int | None) -> StreamingDataset:
    reader = STREAMING_DATASETS.get(data_cfg.name)
    from darkknowledge.data.registry import default_root

    root = Path(data_cfg.root).expanduser() if data_cfg.root else default_root(data_cfg.name)
    if not root.is_dir():
        raise UserError(f"{data_cfg.name}: data.root {root} is not a folder")
    source = reader(root, train, data_cfg.bad_files)
    ds = StreamingDataset(
        source,
        data_cfg.name,
        crop_size=data_cfg.crop_size,
        resize_size=data_cfg.resize_size,
        decoder=data_cfg.decoder,
        bad_files=data_cfg.bad_files,
    )
    return _select(ds, data_cfg.classes, per_class, data_cfg.subset_seed)


def _select(ds: StreamingDataset, classes: list[int] | None, per_class: int | None, seed: int) -> StreamingDataset:
    from darkknowledge.data.transforms import resolve_classes

    if classes is None and per_class is None:
        return ds
    idx = resolve_classes(classes, ds.spec) if classes is not None else None
    rows = select_indices(ds.targets, idx, per_class, seed)
    ds = ds.subset(rows.numpy())
    return ds.relabel(idx) if idx is not None else ds


def build_splits(data_cfg: Any) -> tuple[StreamingDataset, StreamingDataset | None, StreamingDataset]:
    """(train, validation or None, test) of a streaming ``data`` config section: the files are indexed,
    ``classes`` / ``train_per_class`` / ``test_per_class`` applied, and ``val_per_class`` images per class
    held out of the training split (:func:`held_out_rows`)."""
    full = _read_split(data_cfg, True, data_cfg.train_per_class)
    test = _read_split(data_cfg, False, data_cfg.test_per_class)
    if test.spec.num_classes != full.spec.num_classes:  # shards: class count from the largest label of either split
        k = max(test.spec.num_classes, full.spec.num_classes)
        names = tuple(str(c) for c in range(k))
        for ds in (full, test):
            ds.spec = replace(ds.spec, num_classes=k, class_names=names)
    val = None
    if data_cfg.val_per_class:
        held = held_out_rows(full.targets, data_cfg.val_per_class, data_cfg.subset_seed, full.spec.num_classes)
        keep = torch.ones(len(full), dtype=torch.bool)
        keep[held] = False
        train, val = full.subset(keep.nonzero().flatten().numpy()), full.subset(held.numpy())
    else:
        train = full
    return train, val, test
