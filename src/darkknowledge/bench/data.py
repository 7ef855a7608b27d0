"""``darkknowledge bench --data``: the streaming image path against a reference loader
written as torchvision-style training scripts do it, on the same files.

* ``reference``: a map-style ``Dataset`` whose ``__getitem__`` opens the file with Pillow,
  decodes it in full (``convert("RGB")``), crops the RandomResizedCrop box, resizes to the
  crop size (bilinear), flips, converts to a float tensor (``ToTensor``) and normalises it
  per sample; a ``DataLoader`` with the default collate stacks the float tensors.
  Written here with torch and Pillow only (torchvision is not a dependency).
* ``ours``: :class:`~darkknowledge.data.streaming.StreamingLoader` (decode + view on uint8
  in the workers, one uint8 batch per worker task, normalisation batched in the main process).
* ``floor``: the bare per-image work of our decoder (read + decode + crop + resize + flip)
  in a loop without any loader, in as many processes as there are workers.

Images/s are counted over whole passes over the files after a warm-up pass; the three are
timed in interleaved rounds (so a change in the machine's load hits all of them), median of
``passes``; the projected ImageNet epoch time is 1,281,167 images at that rate.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from darkknowledge.data.folders import IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS
from darkknowledge.data.jpeg import DECODERS, get_decoder
from darkknowledge.data.sources import FileSource
from darkknowledge.data.streaming import StreamingDataset, StreamingLoader, view_uniforms
from darkknowledge.data.views import crop_views_from_uniforms, view_box
from darkknowledge.errors import UserError

__all__ = [
    "IMAGENET_TRAIN_IMAGES",
    "ReferenceDataset",
    "folder_source",
    "format_data_report",
    "measure_worker_count",
    "run_data_bench",
]

IMAGENET_TRAIN_IMAGES = 1_281_167


def folder_source(folder: str | Path) -> FileSource:
    """Every image below ``folder`` (sorted; class folders or one flat folder), label = class folder index,
    or the file's position for a flat folder (the ImageNet sample: one file per class)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"bench --data: {folder} is not a folder of images")
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        paths.extend(
            os.path.relpath(os.path.join(dirpath, f), folder)
            for f in sorted(filenames)
            if os.path.splitext(f)[1].lower() in IMG_EXTENSIONS
        )
    if not paths:
        raise UserError(f"bench --data: no images under {folder}")
    parents = sorted({os.path.dirname(p) for p in paths})
    if parents == [""]:
        targets = np.arange(len(paths), dtype=np.int64)
        names = tuple(os.path.splitext(p)[0] for p in paths)
    else:
        lookup = {d: i for i, d in enumerate(parents)}
        targets = np.array([lookup[os.path.dirname(p)] for p in paths], dtype=np.int64)
        names = tuple(parents)
    return FileSource(targets, names, [], folder, np.array([os.fsencode(p) for p in paths]))


class ReferenceDataset(Dataset):
    """The torchvision-style per-sample pipeline (see the module docstring). ``views`` (N, 5): replay these
    views instead of sampling (the crop box rounded to whole pixels, as RandomResizedCrop's are)."""

    def __init__(self, source: FileSource, crop_size: int = 224, seed: int = 0, views: np.ndarray | None = None):
        self.source, self.crop_size, self.seed, self.views = source, crop_size, seed, views
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.source.describe(i)) as f:
            img = f.convert("RGB")
        if self.views is not None:
            view = self.views[i]
        else:
            u = view_uniforms(self.seed, self.epoch, np.array([i]))[0]
            view = crop_views_from_uniforms(float(img.width), float(img.height), u)
        left, top, right, bottom = (round(v) for v in view_box(view, img.width, img.height))
        img = img.crop((left, top, right, bottom)).resize((self.crop_size, self.crop_size), Image.Resampling.BILINEAR)
        if view[4] >= 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)  # ToTensor
        return (x - self.mean) / self.std, int(self.source.targets[i])  # Normalize


def _ours_pass(source: FileSource, workers: int, *, batch_size: int, crop_size: int, decoder: str):
    ds = StreamingDataset(source, "bench", crop_size=crop_size, decoder=decoder)
    loader = StreamingLoader(ds, batch_size, train=True, drop_last=False, workers=workers)
    state = {"epoch": 0}

    def one_pass() -> None:
        for _ in loader.epoch(state["epoch"]):  # each batch normalised, as the trainer receives it
            pass
        state["epoch"] += 1

    return one_pass


def _reference_pass(source: FileSource, workers: int, *, batch_size: int, crop_size: int):
    ref = DataLoader(
        ReferenceDataset(source, crop_size),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )

    def one_pass() -> None:
        for _ in ref:
            pass

    return one_pass


_FLOOR: dict[str, Any] = {}


def _floor_init(source: FileSource, crop_size: int, decoder: str) -> None:
    torch.set_num_threads(1)
    _FLOOR.update(source=source, crop_size=crop_size, decoder=DECODERS[decoder])


def _floor_share(task: tuple[np.ndarray, np.ndarray]) -> int:
    """The bare per-image work on a share of the files: read, header, decode + crop + resize + flip."""
    rows, views = task
    source, decoder, size = _FLOOR["source"], _FLOOR["decoder"], (_FLOOR["crop_size"],) * 2
    for j, i in enumerate(rows.tolist()):
        decoder.decode(decoder.probe(source.read(i)), views[j], size)
    return len(rows)


def _floor_pass(source: FileSource, processes: int, pool, *, decoder: str):
    d = DECODERS[decoder]
    rows = np.arange(len(source))
    sizes = np.array([[p.width, p.height] for p in map(d.probe, map(source.read, rows.tolist()))], dtype=np.float64)
    views = crop_views_from_uniforms(sizes[:, 0], sizes[:, 1], view_uniforms(0, 0, rows))
    shares = [(rows[p::processes], views[p::processes]) for p in range(processes)]

    def one_pass() -> None:
        pool.map(_floor_share, shares)

    return one_pass


def measure_worker_count(
    source: FileSource, workers: int, *, batch_size: int, crop_size: int, decoder: str, passes: int
) -> dict[str, float]:
    """Images/s of the reference loader, ours and the floor (``max(workers, 1)`` processes), timed in
    interleaved rounds (the order rotating) after one warm-up pass each; the median pass of each."""
    n = len(source)
    ctx = mp.get_context("fork")
    with ctx.Pool(max(workers, 1), initializer=_floor_init, initargs=(source, crop_size, decoder)) as pool:
        runs = {
            "floor": _floor_pass(source, max(workers, 1), pool, decoder=decoder),
            "reference": _reference_pass(source, workers, batch_size=batch_size, crop_size=crop_size),
            "ours": _ours_pass(source, workers, batch_size=batch_size, crop_size=crop_size, decoder=decoder),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for one_pass in runs.values():
            one_pass()
        names = list(runs)
        for r in range(passes):
            for name in names[r % 3 :] + names[: r % 3]:
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
    return {k: n / statistics.median(v) for k, v in times.items()}


def run_data_bench(
    folder: str | Path,
    *,
    workers: Sequence[int] = (1, 2),
    batch_size: int = 64,
    crop_size: int = 224,
    decoder: str = "auto",
    passes: int = 3,
    limit: int | None = None,
) -> dict[str, Any]:
    """Ours vs the reference at each worker count, and the floor, on the images under ``folder``."""
    source = folder_source(folder)
    if limit is not None:
        source = source.subset(np.arange(min(limit, len(source))))
    decoder = get_decoder(decoder)
    rows = []
    for w in workers:
        rates = measure_worker_count(
            source, w, batch_size=batch_size, crop_size=crop_size, decoder=decoder, passes=passes
        )
        rows.append({"workers": w, **rates})
    return {
        "folder": str(folder),
        "images": len(source),
        "batch_size": batch_size,
        "crop_size": crop_size,
        "decoder": decoder,
        "passes": passes,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "rows": rows,
    }


def format_data_report(result: dict[str, Any]) -> str:
    lines = [
        f"data path: {result['images']} images from {result['folder']}, crop {result['crop_size']}, "
        f"batch {result['batch_size']}, decoder {result['decoder']}, median of {result['passes']} passes "
        f"({result['cores']} cores, torch {result['torch']})",
        "",
        "| workers | reference img/s | ours img/s | floor img/s | ours / reference | ours / floor "
        "| ImageNet epoch (ours) | ImageNet epoch (reference) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['workers']} | {r['reference']:.0f} | {r['ours']:.0f} | {r['floor']:.0f} "
            f"| {r['ours'] / r['reference']:.2f}x | {100 * r['ours'] / r['floor']:.0f} % "
            f"| {IMAGENET_TRAIN_IMAGES / r['ours'] / 60:.0f} min | {IMAGENET_TRAIN_IMAGES / r['reference'] / 60:.0f} min |"
        )
    return "\n".join(lines)
