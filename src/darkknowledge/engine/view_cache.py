"""A view-keyed soft-label cache for full-resolution image datasets (FKD-style, corrected).

For each image, ``K`` views (float32 rows ``[x0, y0, w, h, flip]`` of
:mod:`darkknowledge.data.views`: a box relative to the original image plus a flip bit, so
a view replays the same crop at any decode resolution) are stored with the teacher's
output on that view:

* the top-``k`` logits: int32 class ids, float16 or float32 values;
* the log-sum-exp of all C logits (float32), so the top-k probabilities are exact;
* what top-k truncation destroys, computed at capture from the full logits: the log
  variance of the non-target probabilities at ``temperatures`` and the per-view
  tau* (the temperature maximising that variance, :func:`darkknowledge.nontarget.isats_search`).

**Missing mass.** :class:`ViewCachedTeacher` reconstructs full logits with
:func:`darkknowledge.engine.cache.expand_topk`: the top-k classes keep their exact
logits; the other C - k classes share the remaining probability ``1 - sum(top-k)``
equally, so the T = 1 distribution sums to 1 and is exact on the top-k. At another
temperature the tail is still uniform but its mass is no longer the teacher's; the KL
error this causes is measured in docs/results.md ("View cache: top-k error").

On disk, a directory written atomically (a temporary directory renamed into place)::

    meta.json       format, key (teacher digest, digest over the file digests, view
                    settings), shapes, temperatures, shards (rows, bytes, sha256 per array)
    files.txt       one name per image (for error messages)
    file_digests.npy  uint8 (N, 16)  blake2b-128 of each image's bytes
    shard-00000/    views.npy float32 (n, K, 5), topk_ids.npy int32 (n, K, k),
                    topk_values.npy float16|float32 (n, K, k), lse.npy float32 (n, K),
                    nt_log_var.npy float32 (n, K, T), tau_star.npy float32 (n, K)
    shard-00001/ ...

Shards hold ``shard_size`` consecutive images and are memory-mapped on load. A cache is
used only for the same files (digests) and the same teacher weights; anything else is an
error, never a silent reuse. Layout, sizes and speed: docs/teachers.md ("View-keyed cache").
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from darkknowledge.data.loader import Batch
from darkknowledge.data.views import VIEW_DIM, apply_view, center_views, sample_crop_views
from darkknowledge.engine.cache import expand_topk
from darkknowledge.engine.checkpoint import state_digest
from darkknowledge.engine.precision import autocast, resolve_precision
from darkknowledge.engine.teacher import TeacherSignal, check_logits_width, prepare_for_inference
from darkknowledge.errors import UserError
from darkknowledge.fileio import DIR_MODE, staging_dir
from darkknowledge.nontarget import isats_search, nontarget_log_variance, split_nontarget

VIEW_CACHE_FORMAT = "darkknowledge-view-cache"
VIEW_CACHE_VERSION = 1
DEFAULT_TEMPERATURES = (1.0, 4.0)
_ARRAYS = ("views", "topk_ids", "topk_values", "lse", "nt_log_var", "tau_star")
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError)


class ImageSource(Protocol):
    """What the builder reads: N images as bytes with their labels (a streaming dataset's
    source, or :class:`PathSource`)."""

    targets: np.ndarray

    def __len__(self) -> int: ...

    def read(self, i: int) -> bytes: ...

    def describe(self, i: int) -> str: ...


class PathSource:
    """Image files ``paths`` with integer ``labels``, as an :class:`ImageSource`."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], labels: Sequence[int] | np.ndarray):
        self.paths = [Path(p) for p in paths]
        self.targets = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.paths) != len(self.targets):
            raise UserError(f"{len(self.paths)} image files but {len(self.targets)} labels; give one label per file")

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> bytes:
        try:
            return self.paths[i].read_bytes()
        except OSError as e:
            raise UserError(f"cannot read image {self.paths[i]}: {e.strerror or e}") from None

    def describe(self, i: int) -> str:
        return str(self.paths[i])


def file_digest(data: bytes) -> bytes:
    """16-byte blake2b digest of one image's bytes."""
    return hashlib.blake2b(data, digest_size=16).digest()


def digest_source(source: ImageSource) -> np.ndarray:
    """uint8 (N, 16): :func:`file_digest` of every image of ``source``."""
    out = np.empty((len(source), 16), dtype=np.uint8)
    for i in range(len(source)):
        out[i] = np.frombuffer(file_digest(source.read(i)), dtype=np.uint8)
    return out


def _digest_of(digests: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(digests).tobytes()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def view_reuse(num_views: int, epochs: int, crops_per_epoch: int = 1) -> float:
    """How many times each stored view is replayed on average over a schedule."""
    return epochs * crops_per_epoch / num_views


def nontarget_statistics(logits: Tensor, targets: Tensor, temperatures: Sequence[float]) -> tuple[Tensor, Tensor]:
    """From full logits (B, C): float32 (B, T) log variance of the non-target probabilities
    at each temperature, and float32 (B,) tau* (NaN where undefined: C = 2, flat non-targets)."""
    z = logits.float()
    z_nt, z_y = split_nontarget(z, targets)
    top = z_nt.amax(1, keepdim=True)
    s_nt, s_y = z_nt - top, z_y - top.squeeze(1)
    log_var = torch.stack([nontarget_log_variance(s_nt, s_y, float(t)) for t in temperatures], dim=1)
    tau = isats_search(z, targets, undefined=float("nan"))
    return log_var.float(), tau.float()


def _decode_views(data: bytes, views: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    """uint8 (K, H, W, 3): the K views of one image, decoded once (JPEG ``draft`` at the
    largest 1/2^k downscale that every view allows)."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if image.format == "JPEG":
            reduce = float(np.min(np.minimum(views[:, 2] * width / size[1], views[:, 3] * height / size[0])))
            if reduce >= 2:
                image.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
        image.load()
        return np.stack([apply_view(image, v, size, draft=False) for v in views])
    except _PIL_ERRORS as e:
        raise UserError(f"cannot decode image {name}: {e or type(e).__name__}; delete or replace the file") from None


def _image_size(data: bytes, name: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except _PIL_ERRORS as e:
        raise UserError(f"cannot read image {name}: {e or type(e).__name__}; delete or replace the file") from None


def _read(source: ImageSource, i: int) -> bytes:
    try:
        return source.read(i)
    except OSError as e:
        raise UserError(f"cannot read image {source.describe(i)}: {e.strerror or e}") from None


class _ShardWriter:
    """The memory-mapped arrays of one shard of ``rows`` images, filled batch by batch."""

    def __init__(self, directory: Path, rows: int, k: int, topk: int, temperatures: int, value_dtype: type):
        directory.mkdir(mode=DIR_MODE)
        self.directory, self.k, self.topk = directory, k, topk
        self.views = np.zeros((rows, k, VIEW_DIM), dtype=np.float32)
        shapes = {
            "topk_ids": ((rows, k, topk), np.int32),
            "topk_values": ((rows, k, topk), value_dtype),
            "lse": ((rows, k), np.float32),
            "nt_log_var": ((rows, k, temperatures), np.float32),
            "tau_star": ((rows, k), np.float32),
        }
        self.arrays = {
            name: np.lib.format.open_memmap(directory / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
            for name, (shape, dt) in shapes.items()
        }

    def write(self, rows: np.ndarray, logits: Tensor, targets: Tensor, temperatures: Sequence[float]) -> None:
        """``logits`` (len(rows) * K, C) float32, view-major within each image; ``targets`` per row of logits."""
        b, k = len(rows), self.k
        values, ids = logits.topk(self.topk, dim=1)
        log_var, tau = nontarget_statistics(logits, targets, temperatures)
        a = self.arrays
        a["topk_ids"][rows] = ids.numpy().astype(np.int32).reshape(b, k, self.topk)
        a["topk_values"][rows] = values.numpy().astype(a["topk_values"].dtype).reshape(b, k, self.topk)
        a["lse"][rows] = torch.logsumexp(logits, 1).numpy().reshape(b, k)
        a["nt_log_var"][rows] = log_var.numpy().reshape(b, k, -1)
        a["tau_star"][rows] = tau.numpy().reshape(b, k)

    def close(self) -> dict[str, Any]:
        """Flush, write the views, and describe the shard (rows, bytes and sha256 per array)."""
        np.save(self.directory / "views.npy", self.views)
        for arr in self.arrays.values():
            arr.flush()
        rows = len(self.views)
        self.arrays.clear()
        files = {}
        for name in _ARRAYS:
            f = self.directory / f"{name}.npy"
            files[f"{name}.npy"] = {"bytes": f.stat().st_size, "sha256": _sha256_file(f)}
        return {"dir": self.directory.name, "rows": rows, "files": files}


@torch.no_grad()
def build_view_cache(
    teacher: nn.Module,
    source: ImageSource,
    path: str | os.PathLike[str],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int = 224,
    num_views: int = 8,
    view_seed: int = 0,
    center_first: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    topk: int = 20,
    dtype: str = "float16",
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    shard_size: int = 10_000,
    batch_size: int = 64,
    precision: str = "auto",
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Capture ``num_views`` views of every image of ``source`` with ``teacher`` and write
    the cache to ``path``; returns its meta (with ``build_seconds``).

    ``teacher``: an ``nn.Module`` mapping images normalised with ``mean``/``std`` at
    ``image_size`` to ``(B, C)`` logits (wrap foreign models in
    :class:`~darkknowledge.engine.adapter.TeacherAdapter`). Views: RandomResizedCrop
    (area ``scale``) + flip drawn from ``view_seed``; with ``center_first`` view 0 is the
    evaluation view (resize ``image_size * 256 / 224``, centre crop). Each image is
    decoded once for its K views."""
    path = Path(path)
    n = len(source)
    if n == 0:
        raise UserError("the view cache needs at least one image; the source is empty")
    if num_views < 1:
        raise UserError(f"num_views must be >= 1, got {num_views}")
    if dtype not in ("float16", "float32"):
        raise UserError(f"view cache dtype must be 'float16' or 'float32', got {dtype!r}")
    if shard_size < 1:
        raise UserError(f"shard_size must be >= 1, got {shard_size}")
    if not temperatures or any(not t > 0 for t in temperatures):
        raise UserError(f"temperatures must be positive, got {list(temperatures)}")
    if path.exists() and not overwrite:
        raise UserError(f"view cache {path} already exists; remove it or pass overwrite=True")
    targets = torch.as_tensor(np.asarray(source.targets), dtype=torch.long)
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    teacher_digest = state_digest(teacher.state_dict())
    model = prepare_for_inference(teacher.to(device), channels_last=channels_last)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    mean_t = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    size = (image_size, image_size)
    gen = torch.Generator().manual_seed(int(view_seed))
    k = num_views
    num_classes: int | None = None
    digests = np.empty((n, 16), dtype=np.uint8)
    names = [source.describe(i) for i in range(n)]
    started = time.perf_counter()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(path)
    shards: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="view cache", unit="img")

    def forward(pixels: list[np.ndarray]) -> Tensor:
        nonlocal num_classes
        x = torch.from_numpy(np.concatenate(pixels)).to(device).permute(0, 3, 1, 2)
        x = x.float().div_(255).sub_(mean_t).div_(std_t)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, precision):
            logits = model(x)
        if num_classes is None:
            num_classes = int(logits.shape[1]) if logits.dim() == 2 else -1
            if not 1 <= topk < num_classes:
                raise UserError(f"topk must be in [1, {num_classes - 1}] for {num_classes} classes, got {topk}")
            if int(targets.max()) >= num_classes:
                raise UserError(f"labels go up to {int(targets.max())} but the teacher has {num_classes} classes")
        check_logits_width(logits, num_classes, "the cached teacher")
        return logits.float().cpu()

    images_per_batch = max(1, batch_size // k)
    try:
        tmp.chmod(DIR_MODE)
        for first in range(0, n, shard_size):
            count = min(shard_size, n - first)
            writer = _ShardWriter(tmp / f"shard-{len(shards):05d}", count, k, topk, len(temperatures), np_dtype)
            pending: list[int] = []  # rows in the shard
            pixels: list[np.ndarray] = []  # their uint8 (K, H, W, 3) views
            for local in range(count):
                i = first + local
                data = _read(source, i)
                digests[i] = np.frombuffer(file_digest(data), dtype=np.uint8)
                w, h = _image_size(data, names[i])
                views = sample_crop_views([(w, h)], k, gen, scale=scale)[0]
                if center_first:
                    views[0] = center_views([(w, h)], round(image_size * 256 / 224), image_size)[0]
                writer.views[local] = views.numpy()
                pending.append(local)
                pixels.append(_decode_views(data, views.numpy(), size, names[i]))
                if len(pending) == images_per_batch or local == count - 1:
                    rows = np.array(pending)
                    writer.write(rows, forward(pixels), targets[first + rows].repeat_interleave(k), temperatures)
                    pending, pixels = [], []
                if bar is not None:
                    bar.update(1)
            shards.append({"first": first, **writer.close()})
        if bar is not None:
            bar.close()
        np.save(tmp / "file_digests.npy", digests)
        (tmp / "files.txt").write_text("".join(name.replace("\n", " ") + "\n" for name in names))
        meta = {
            "format": VIEW_CACHE_FORMAT,
            "version": VIEW_CACHE_VERSION,
            "key": {
                "teacher_digest": teacher_digest,
                "files_digest": _digest_of(digests),
                "num_images": n,
                "num_views": k,
                "view_seed": int(view_seed),
                "center_first": bool(center_first),
                "scale": list(scale),
                "image_size": image_size,
                "mean": list(mean),
                "std": list(std),
            },
            "num_classes": num_classes,
            "topk": topk,
            "dtype": dtype,
            "precision": precision,
            "temperatures": [float(t) for t in temperatures],
            "shard_size": shard_size,
            "shards": shards,
            "build_seconds": time.perf_counter() - started,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if path.exists():  # overwrite: swap in the complete new cache only now
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_view_cache_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"view cache {path} not found (no meta.json); build it with build_view_cache")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"view cache {path}: meta.json is corrupted; rebuild the cache") from None
    if not isinstance(meta, dict) or meta.get("format") != VIEW_CACHE_FORMAT:
        raise UserError(f"{path} is not a darkknowledge view cache")
    if meta.get("version") != VIEW_CACHE_VERSION:
        raise UserError(
            f"view cache {path} has version {meta.get('version')}, this darkknowledge reads {VIEW_CACHE_VERSION}"
        )
    return meta


class ViewCachedTeacher(TeacherSignal):
    """Answers ``(batch.indices, batch.views)`` from a view cache (logits reconstructed by
    the missing-mass policy of the module docstring).

    ``source`` (the images the student reads) and ``teacher``/``teacher_digest`` (the
    teacher weights): when given, the cache must have been built from exactly these, or
    opening it is a :class:`UserError`. ``epochs`` and ``crops_per_epoch``: warn when the
    schedule replays each stored view more than once on average (a fixed teacher view per
    crop overfits on long schedules: Beyer et al. 2022). ``verify``: check each shard's
    sha256 (sizes are always checked)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        source: ImageSource | None = None,
        teacher: nn.Module | None = None,
        teacher_digest: str | None = None,
        epochs: int | None = None,
        crops_per_epoch: int = 1,
        verify: bool = True,
        device: str | torch.device = "cpu",
    ):
        self.path = Path(path)
        self.meta = meta = read_view_cache_meta(self.path)
        self.device = torch.device(device)
        self.num_classes = int(meta["num_classes"])
        self.num_views = int(meta["key"]["num_views"])
        self.num_images = int(meta["key"]["num_images"])
        self.shard_size = int(meta["shard_size"])
        self.temperatures = [float(t) for t in meta["temperatures"]]
        self._shards: list[dict[str, np.ndarray]] = []
        for shard in meta["shards"]:
            arrays = {}
            for a in _ARRAYS:
                f = self.path / shard["dir"] / f"{a}.npy"
                info = shard["files"][f"{a}.npy"]
                if not f.is_file():
                    raise UserError(f"view cache {self.path}: {shard['dir']}/{a}.npy is missing; rebuild the cache")
                if f.stat().st_size != info["bytes"]:
                    raise UserError(
                        f"view cache {self.path}: {shard['dir']}/{a}.npy has {f.stat().st_size} bytes, expected "
                        f"{info['bytes']} (truncated?); rebuild the cache"
                    )
                if verify and _sha256_file(f) != info["sha256"]:
                    raise UserError(f"view cache {self.path}: {shard['dir']}/{a}.npy fails its checksum; rebuild it")
                arrays[a] = np.load(f, mmap_mode="r")
            self._shards.append(arrays)
        if teacher is not None:
            teacher_digest = state_digest(teacher.state_dict())
        if teacher_digest is not None and teacher_digest != meta["key"]["teacher_digest"]:
            raise UserError(f"view cache {self.path} was built from other teacher weights; rebuild it for this teacher")
        if source is not None:
            self.check_source(source)
        if epochs is not None:
            self.warn_if_few_views(epochs, crops_per_epoch)

    def check_source(self, source: ImageSource) -> None:
        """UserError unless ``source`` has the cached images (same bytes, same order)."""
        if len(source) != self.num_images:
            raise UserError(
                f"view cache {self.path} was built for {self.num_images} images, the data has {len(source)}; "
                "rebuild it for these files"
            )
        digests = digest_source(source)
        if _digest_of(digests) == self.meta["key"]["files_digest"]:
            return
        cached = np.load(self.path / "file_digests.npy")
        row = int(np.flatnonzero((cached != digests).any(1))[0])
        names = (self.path / "files.txt").read_text().splitlines()
        raise UserError(
            f"view cache {self.path} was built from other files: image {row} is {source.describe(row)}, the cache "
            f"has {names[row] if row < len(names) else '?'} (different bytes); rebuild the cache for these files"
        )

    def warn_if_few_views(self, epochs: int, crops_per_epoch: int = 1) -> None:
        reuse = view_reuse(self.num_views, epochs, crops_per_epoch)
        if reuse > 1:
            warnings.warn(
                f"view cache {self.path} holds K={self.num_views} views per image for {epochs} epochs x "
                f"{crops_per_epoch} crops: each view is replayed {reuse:.1f} times on average; a student that "
                f"sees the same few crops overfits them on long schedules - build with num_views >= "
                f"{epochs * crops_per_epoch} for one fresh view per crop",
                UserWarning,
                stacklevel=2,
            )

    def _gather(self, name: str, indices: Tensor, views: Tensor) -> np.ndarray:
        i = indices.cpu().numpy().astype(np.int64)
        v = views.cpu().numpy().astype(np.int64)
        if i.size and (i.min() < 0 or i.max() >= self.num_images):
            raise IndexError(f"image index out of range [0, {self.num_images})")
        if v.size and (v.min() < 0 or v.max() >= self.num_views):
            raise IndexError(f"view index out of range [0, {self.num_views})")
        shard, row = i // self.shard_size, i % self.shard_size
        first = self._shards[0][name]
        out = np.empty((len(i), *first.shape[2:]), dtype=first.dtype)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._shards[int(s)][name][row[sel], v[sel]]
        return out

    def topk(self, indices: Tensor, views: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Stored ``(values float32 (B, k), ids int64 (B, k), lse float32 (B,))``."""
        values = torch.from_numpy(self._gather("topk_values", indices, views)).float()
        ids = torch.from_numpy(self._gather("topk_ids", indices, views)).long()
        lse = torch.from_numpy(self._gather("lse", indices, views)).float()
        return values, ids, lse

    def logits(self, indices: Tensor, views: Tensor) -> Tensor:
        """float32 (B, C) logits whose T = 1 softmax is exact on the top-k classes and has the
        remaining mass spread uniformly over the rest."""
        values, ids, lse = self.topk(indices, views)
        return expand_topk(values, ids, lse, self.num_classes).to(self.device)

    def nontarget_statistics(self, indices: Tensor, views: Tensor) -> dict[str, Tensor]:
        """The statistics captured from the full logits: ``nt_log_var`` (B, T) at
        :attr:`temperatures` and ``tau_star`` (B,) (NaN where undefined)."""
        return {
            "nt_log_var": torch.from_numpy(self._gather("nt_log_var", indices, views)),
            "tau_star": torch.from_numpy(self._gather("tau_star", indices, views)),
        }

    def view_table(self) -> Tensor:
        """float32 (N, K, 5): every image's stored views."""
        return torch.from_numpy(np.concatenate([np.asarray(s["views"]) for s in self._shards]))

    def replay_views(self) -> Tensor:
        return self.view_table()

    def _center_first(self) -> None:
        if not self.meta["key"]["center_first"]:
            raise UserError(
                f"un-augmented training needs a view cache whose view 0 is the evaluation view; {self.path} was "
                "built with center_first=False: rebuild it"
            )

    def training_views(self, spec: Any, augment: bool) -> Tensor:
        """The view table; without augmentation only view 0 (the evaluation view)."""
        if augment:
            return self.view_table()
        self._center_first()
        return self.view_table()[:, :1]

    def plain_batches(self, batches: Iterable[Batch], spec: Any) -> Iterable[Batch]:
        """``batches`` answered at view 0 (the evaluation view)."""
        self._center_first()
        return (dataclasses.replace(b, views=torch.zeros_like(b.indices)) for b in batches)

    def __call__(self, batch: Batch) -> Tensor:
        if batch.views is None:
            raise RuntimeError("ViewCachedTeacher needs batches from a loader replaying its view table")
        return self.logits(batch.indices, batch.views)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "view_cache",
            "path": str(self.path),
            "views": self.num_views,
            "topk": self.meta["topk"],
            "dtype": self.meta["dtype"],
        }


def cache_bytes_per_image(num_views: int, topk: int, dtype: str = "float16", temperatures: int = 2) -> int:
    """Bytes one image takes in the shards (views, ids, values, lse, statistics), plus its digest."""
    value_bytes = 2 if dtype == "float16" else 4
    per_view = VIEW_DIM * 4 + topk * (4 + value_bytes) + 4 + temperatures * 4 + 4
    return num_views * per_view + 16


__all__ = [
    "DEFAULT_TEMPERATURES",
    "ImageSource",
    "PathSource",
    "ViewCachedTeacher",
    "build_view_cache",
    "cache_bytes_per_image",
    "digest_source",
    "file_digest",
    "nontarget_statistics",
    "read_view_cache_meta",
    "view_reuse",
]
