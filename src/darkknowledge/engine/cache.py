"""Teacher-output cache that stays correct under random augmentation.

Teacher logits are precomputed for ``K`` fixed augmentation *views* of every training
sample. The view parameters ``(dy, dx, flip)`` are stored with the logits; during
distillation the loader replays exactly those views (each epoch picks one of the K
views per sample from its seeded generator), so the cached logit always belongs to the
image the student sees — the failure mode of augmentation-unaware caches.

On disk, a cache is a directory written atomically (a temporary directory renamed into
place)::

    meta.json    key (teacher weight digest, dataset fingerprint, views, view seed,
                 augmentation), shapes, dtype, storage mode, sha256 of each array
    views.npy    int16 (N, K, 3)  view parameters
    eval_logits.npy  float32 (M, C)  the teacher on the test split, if built with
                 ``eval_dataset`` (teacher agreement and rank fidelity of cached runs)
    logits.npy   float16|float32 (N, K, C)          storage "full"
      or
    topk_values.npy (N, K, k), topk_indices.npy int16/int32 (N, K, k),
    lse.npy (N, K)                                    storage "topk"

Arrays are memory-mapped on load. A cache is only used when its key matches the run
(same teacher weights, same dataset rows, same augmentation); otherwise opening it is
an error — never a silent reuse. A truncated or edited file fails the size or checksum
check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from darkknowledge.data.augment import Normalizer, apply_augment, identity_params, sample_augment_params
from darkknowledge.data.base import ArrayDataset, DataSpec
from darkknowledge.data.loader import Batch, epoch_generator, eval_batches
from darkknowledge.data.resident import resident_arrays
from darkknowledge.engine.checkpoint import state_digest
from darkknowledge.engine.precision import autocast, resolve_precision
from darkknowledge.engine.teacher import TeacherSignal, check_logits_width, prepare_for_inference
from darkknowledge.errors import UserError
from darkknowledge.fileio import DIR_MODE, staging_dir
from darkknowledge.methods.topk import uniform_tail_logit

CACHE_FORMAT = "darkknowledge-teacher-cache"
CACHE_VERSION = 1


def dataset_fingerprint(ds: ArrayDataset) -> str:
    """sha256 over the dataset's pixels, labels and normalisation: any change of rows,
    subset, resize or order gives a different fingerprint."""
    h = hashlib.sha256()
    h.update(ds.spec.name.encode())
    h.update(json.dumps([list(ds.spec.mean), list(ds.spec.std), list(ds.spec.image_size)]).encode())
    h.update(ds.images.contiguous().numpy().tobytes())
    h.update(ds.targets.contiguous().numpy().tobytes())
    return h.hexdigest()


def make_view_table(ds: ArrayDataset, num_views: int, view_seed: int, include_identity: bool = True) -> Tensor:
    """(N, K, 3) int64 view parameters drawn from ``view_seed`` (view 0 = un-augmented if asked)."""
    n = len(ds)
    gen = epoch_generator(view_seed, 0, stream=17)
    table = sample_augment_params(n * num_views, ds.spec.augment, gen).view(n, num_views, 3)
    if include_identity:
        table[:, 0] = identity_params(n, ds.spec.augment)
    return table


def cache_key(teacher_digest: str, ds: ArrayDataset, num_views: int, view_seed: int) -> dict[str, Any]:
    return {
        "teacher_digest": teacher_digest,
        "dataset": ds.spec.name,
        "dataset_fingerprint": dataset_fingerprint(ds),
        "num_samples": len(ds),
        "num_views": num_views,
        "view_seed": view_seed,
        "augment": asdict(ds.spec.augment),
    }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def build_cache(
    teacher: nn.Module,
    dataset: ArrayDataset,
    path: str | Path,
    *,
    num_views: int = 8,
    view_seed: int = 0,
    storage: str = "full",
    topk: int = 20,
    dtype: str = "float16",
    precision: str = "auto",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    fold_batchnorm: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    eval_dataset: ArrayDataset | None = None,
) -> Path:
    """Run ``teacher`` on ``num_views`` views of every sample and write a cache directory.

    ``teacher``: any ``nn.Module`` returning ``(B, C)`` logits for the dataset's C classes
    (checked on the first batch). ``eval_dataset``: also store the teacher's logits on
    it (the test split), so that cached runs log teacher agreement and rank fidelity."""
    path = Path(path)
    if storage not in ("full", "topk"):
        raise UserError(f"cache storage must be 'full' or 'topk', got {storage!r}")
    if dtype not in ("float16", "float32"):
        raise UserError(f"cache dtype must be 'float16' or 'float32', got {dtype!r}")
    if path.exists() and not overwrite:
        raise UserError(f"cache {path} already exists; remove it or pass --overwrite")
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    num_classes = dataset.spec.num_classes
    key_digest = state_digest(teacher.state_dict())  # of the checkpoint's weights, before folding
    teacher = prepare_for_inference(teacher.to(device), channels_last=channels_last, fold_batchnorm=fold_batchnorm)
    n, k = len(dataset), num_views
    if storage == "topk" and not 1 <= topk < num_classes:
        raise UserError(f"cache topk must be in [1, {num_classes - 1}], got {topk}")
    key = cache_key(key_digest, dataset, k, view_seed)
    table = make_view_table(dataset, k, view_seed)
    normalize = Normalizer(dataset.spec.mean, dataset.spec.std, device, channels_last)
    images = dataset.images.to(device)
    np_dtype = np.float16 if dtype == "float16" else np.float32

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(path)
    try:
        tmp.chmod(DIR_MODE)
        np.save(tmp / "views.npy", table.numpy().astype(np.int16))
        if storage == "full":
            out = np.lib.format.open_memmap(tmp / "logits.npy", mode="w+", dtype=np_dtype, shape=(n, k, num_classes))
        else:
            idx_dtype = np.int16 if num_classes < 2**15 else np.int32
            out_v = np.lib.format.open_memmap(tmp / "topk_values.npy", mode="w+", dtype=np_dtype, shape=(n, k, topk))
            out_i = np.lib.format.open_memmap(tmp / "topk_indices.npy", mode="w+", dtype=idx_dtype, shape=(n, k, topk))
            out_l = np.lib.format.open_memmap(tmp / "lse.npy", mode="w+", dtype=np.float32, shape=(n, k))
        flat = table.view(n * k, 3)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n * k, desc="teacher cache", unit="img")
        for start in range(0, n * k, batch_size):
            rows = torch.arange(start, min(start + batch_size, n * k))
            sample = rows // k
            x = normalize(apply_augment(images[sample.to(device)], flat[rows], dataset.spec.augment.pad))
            with torch.inference_mode(), autocast(device, precision):
                logits = teacher(x)
            check_logits_width(logits, num_classes, "the cached teacher")
            logits = logits.float().cpu()
            si, vi = sample.numpy(), (rows % k).numpy()
            if storage == "full":
                out[si, vi] = logits.numpy().astype(np_dtype)
            else:
                vals, idx = logits.topk(topk, dim=1)
                out_v[si, vi] = vals.numpy().astype(np_dtype)
                out_i[si, vi] = idx.numpy().astype(out_i.dtype)
                out_l[si, vi] = torch.logsumexp(logits, dim=1).numpy()
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        arrays = ["views.npy"] + (
            ["logits.npy"] if storage == "full" else ["topk_values.npy", "topk_indices.npy", "lse.npy"]
        )
        eval_info = None
        if eval_dataset is not None:
            np.save(
                tmp / "eval_logits.npy",
                _eval_outputs(teacher, eval_dataset, batch_size, device, precision, channels_last, num_classes),
            )
            arrays.append("eval_logits.npy")
            eval_info = {
                "dataset": eval_dataset.spec.name,
                "num_samples": len(eval_dataset),
                "fingerprint": dataset_fingerprint(eval_dataset),
            }
        if storage == "full":
            out.flush()
            del out
        else:
            for a in (out_v, out_i, out_l):
                a.flush()
            del out_v, out_i, out_l
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "key": key,
            "num_classes": num_classes,
            "storage": storage,
            "topk": topk if storage == "topk" else None,
            "dtype": dtype,
            "precision": precision,
            "eval": eval_info,
            "files": {a: {"bytes": (tmp / a).stat().st_size, "sha256": _sha256_file(tmp / a)} for a in arrays},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if path.exists():  # overwrite: swap in the complete new cache only now
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _eval_outputs(
    teacher: nn.Module,
    dataset: ArrayDataset,
    batch_size: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
    num_classes: int,
) -> np.ndarray:
    """float32 (M, C) logits of ``teacher`` on the un-augmented ``dataset``, in order."""
    out = []
    for batch in eval_batches(dataset, batch_size, device, channels_last):
        with torch.inference_mode(), autocast(device, precision):
            logits = teacher(batch.images)
        check_logits_width(logits, num_classes, "the cached teacher")
        out.append(logits.float().cpu())
    return torch.cat(out).numpy()


def read_cache_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"teacher cache {path} not found (no meta.json); build it with `darkknowledge cache build`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"teacher cache {path}: meta.json is corrupted; rebuild the cache") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise UserError(f"{path} is not a darkknowledge teacher cache")
    return meta


class CachedTeacher(TeacherSignal):
    """Replays cached teacher logits for ``batch.indices`` at ``batch.views``; held in the
    device's memory when it fits (``resident``: :mod:`darkknowledge.data.resident`)."""

    def __init__(
        self,
        path: str | Path,
        *,
        verify: bool = True,
        device: str | torch.device = "cpu",
        resident: bool | None = None,
    ):
        self.path = Path(path)
        self.meta = meta = read_cache_meta(self.path)
        self.device = torch.device(device)
        for name, info in meta["files"].items():
            f = self.path / name
            if not f.is_file():
                raise UserError(f"teacher cache {self.path}: {name} is missing; rebuild the cache")
            if f.stat().st_size != info["bytes"]:
                raise UserError(
                    f"teacher cache {self.path}: {name} has {f.stat().st_size} bytes, expected {info['bytes']} (truncated?); rebuild the cache"
                )
            if verify and _sha256_file(f) != info["sha256"]:
                raise UserError(f"teacher cache {self.path}: {name} fails its checksum (corrupted); rebuild the cache")
        self.num_classes = int(meta["num_classes"])
        self.storage = meta["storage"]
        self.view_table = torch.from_numpy(np.load(self.path / "views.npy").astype(np.int64))
        names = ["logits"] if self.storage == "full" else ["topk_values", "topk_indices", "lse"]
        self._arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in names}
        self._on_device = resident_arrays({name: [a] for name, a in self._arrays.items()}, self.device, resident)

    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]

    def check_matches(self, dataset: ArrayDataset, teacher_digest: str | None = None) -> None:
        """Error (never silently reuse) unless the cache was built for these rows/weights."""
        key = self.key
        if key["num_samples"] != len(dataset) or key["dataset_fingerprint"] != dataset_fingerprint(dataset):
            raise UserError(
                f"teacher cache {self.path} was built for other data ({key['dataset']}, {key['num_samples']} samples) "
                f"than this run ({dataset.spec.name}, {len(dataset)} samples, or different subset/resize); rebuild it"
            )
        if key["augment"] != asdict(dataset.spec.augment):
            raise UserError(f"teacher cache {self.path} was built with augmentation {key['augment']}; rebuild it")
        if teacher_digest is not None and teacher_digest != key["teacher_digest"]:
            raise UserError(
                f"teacher cache {self.path} was built from other teacher weights than teacher.checkpoint; rebuild it"
            )

    def _rows(self, name: str, indices: Tensor, views: Tensor) -> Tensor:
        """Entries (sample, view) of one stored array: gathered on the device when resident (no
        host sync), else from the memory map and copied there."""
        if self._on_device is not None:
            return self._on_device[name][indices.to(self.device), views.to(self.device)]
        rows = np.ascontiguousarray(self._arrays[name][indices.cpu().numpy(), views.cpu().numpy()])
        return torch.from_numpy(rows).to(self.device)

    def logits(self, indices: Tensor, views: Tensor) -> Tensor:
        if self.storage == "full":
            return self._rows("logits", indices, views).float()
        vals = self._rows("topk_values", indices, views).float()
        idx = self._rows("topk_indices", indices, views).long()
        lse = self._rows("lse", indices, views).float()
        return expand_topk(vals, idx, lse, self.num_classes)

    @property
    def resident(self) -> bool:
        """Whether the cache is held in the device's memory."""
        return self._on_device is not None

    def replay_views(self) -> Tensor:
        return self.view_table

    def _has_plain_view(self, spec: DataSpec) -> bool:
        """Whether view 0 is the un-augmented image of every sample."""
        plain = identity_params(self.view_table.shape[0], spec.augment)
        return bool(torch.equal(self.view_table[:, 0], plain.to(self.view_table.device)))

    def training_views(self, spec: DataSpec, augment: bool) -> Tensor:
        if augment:
            return self.view_table
        if not self._has_plain_view(spec):
            raise UserError(
                f"data.augment=false needs a teacher cache whose view 0 is the un-augmented image; {self.path} has "
                "none: rebuild it"
            )
        return self.view_table[:, :1]

    def plain_batches(self, batches: Iterable[Batch], spec: DataSpec) -> Iterable[Batch]:
        if not self._has_plain_view(spec):
            raise UserError(
                f"this method needs the teacher on un-augmented images, but the teacher cache {self.path} has no "
                "plain view 0; rebuild it"
            )
        return (dataclasses.replace(b, views=torch.zeros_like(b.indices)) for b in batches)

    def eval_logits(self, dataset: ArrayDataset, batches: Any = None) -> Tensor | None:
        """The stored test-split logits, if the cache was built with this ``dataset``
        as ``eval_dataset`` (same rows: fingerprint checked); else None."""
        info = self.meta.get("eval")
        if not info or info["fingerprint"] != dataset_fingerprint(dataset):
            return None
        return torch.from_numpy(np.load(self.path / "eval_logits.npy")).to(self.device)

    def __call__(self, batch: Batch) -> Tensor:
        if batch.views is None:
            raise RuntimeError("CachedTeacher needs batches from a loader replaying the cache's view table")
        return self.logits(batch.indices, batch.views)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "cache",
            "path": str(self.path),
            "storage": self.storage,
            "views": self.key["num_views"],
            "eval_logits": bool(self.meta.get("eval")),
            "resident": self.resident,
        }


def expand_topk(values: Tensor, indices: Tensor, lse: Tensor, num_classes: int) -> Tensor:
    """Full logits from top-k logits + the log-partition: the tail's probability mass
    (1 - sum of top-k probabilities) is spread uniformly over the other classes, so the
    T=1 distribution is exact on the top-k classes and preserves total mass."""
    tail_logit = uniform_tail_logit(values, lse, num_classes)
    out = tail_logit[:, None].expand(values.shape[0], num_classes).clone()
    out.scatter_(1, indices, values)
    return out


__all__ = ["CachedTeacher", "build_cache", "dataset_fingerprint", "expand_topk", "make_view_table", "read_cache_meta"]
