"""Build a teacher-output cache ahead of a distillation, or describe one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from darkknowledge.config import RunConfig
from darkknowledge.data.corpora import is_text
from darkknowledge.data.splits import load_splits
from darkknowledge.engine.cache import CachedTeacher, build_cache, read_cache_meta
from darkknowledge.engine.checkpoint import load_model
from darkknowledge.engine.factory import check_teacher_fits, resolve_device
from darkknowledge.errors import UserError

if TYPE_CHECKING:
    from darkknowledge.engine.lm_cache import LMTeacherCache


def cache_info(path: str, sample_rows: int = 65536) -> dict[str, Any]:
    """The metadata of the cache at ``path`` (its key, files and sizes), for each kind of cache: an
    image cache, a view-keyed cache of streamed images, or a language-model cache. A language-model
    cache also reports, over its first ``sample_rows`` predicted tokens, the mean probability its
    top-k leaves out and the means of the statistics it recorded from the full distribution."""
    import json

    from darkknowledge.engine.lm_cache import LM_CACHE_FORMAT, LMTeacherCache
    from darkknowledge.engine.view_cache import VIEW_CACHE_FORMAT, ViewCachedTeacher

    meta_path = Path(path) / "meta.json"
    try:
        kind = json.loads(meta_path.read_text()).get("format") if meta_path.is_file() else None
    except (ValueError, OSError, AttributeError):
        kind = None
    if kind == LM_CACHE_FORMAT:
        cache = LMTeacherCache.open(path)
        return {**cache.meta, "sample": lm_cache_summary(cache, sample_rows)}
    if kind == VIEW_CACHE_FORMAT:
        return ViewCachedTeacher(path).meta
    return CachedTeacher(path).meta


def lm_cache_summary(cache: LMTeacherCache, rows: int) -> dict[str, Any]:
    """Means over the first ``rows`` predicted tokens of a language-model cache: the probability
    outside its top-k, and the recorded full-distribution statistics."""
    import numpy as np

    windows, keep = cache.first_predicted(rows)
    if keep.numel() == 0:
        return {"tokens": 0}
    values = cache.window_arrays(windows, "values").reshape(-1, cache.k)[keep].double()
    lse = cache.window_arrays(windows, "lse").reshape(-1)[keep].double()
    kept = (values - lse[:, None]).exp().sum(-1)
    out: dict[str, Any] = {"tokens": int(keep.numel()), "mean_tail_mass": float((1 - kept).mean())}
    for name in cache.meta.get("statistics", []):
        column = cache.window_arrays(windows, name).reshape(-1)[keep].double().numpy()
        out[f"mean_{name}"] = float(np.nanmean(column)) if np.isfinite(column).any() else None
    return out


def build_teacher_cache(
    path: str,
    cfg: RunConfig,
    *,
    views: int | None = None,
    storage: str = "full",
    topk: int = 20,
    dtype: str = "float16",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Cache ``cfg``'s teacher (``teacher.checkpoint``; for text also a pretrained ``teacher.hf`` or
    ``teacher.gguf``) on ``cfg``'s training split: ``views`` augmentation views per sample (default
    ``teacher.views``), full logits or top-k + log-partition. ``overwrite`` replaces only an existing,
    readable cache (the old one stays until the new one is complete)."""
    checkpoint = cfg.teacher.checkpoint_path
    pretrained = cfg.teacher.pretrained_source
    if not checkpoint and not pretrained:
        raise UserError("cache build needs teacher.checkpoint=PATH (or, for text, teacher.hf=DIR / teacher.gguf=FILE)")
    if views is not None and views < 1:
        raise UserError(f"--views must be at least 1, got {views}")
    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise UserError(f"cache path {target} is a file; choose a directory path")
        if not overwrite:
            raise UserError(
                f"cache directory {target} already exists; pass --overwrite to replace it (only a cache is ever "
                "replaced) or choose another path"
            )
        if not (target / "meta.json").is_file():
            raise UserError(
                f"--overwrite: {target} is not a teacher cache (no meta.json); it is left as it is: choose another path"
            )
        read_cache_meta(target)  # a damaged meta.json is an error too: only a readable cache is replaced
    teacher = cfg.teacher
    if is_text(cfg.data):
        return _build_language_model_cache(target, cfg, topk if storage == "topk" else None, overwrite)
    if not checkpoint:
        raise UserError("teacher.hf / teacher.gguf: a pretrained language model needs a text dataset (data.name)")
    num_views = views if views is not None else int(getattr(teacher, "views", 8))
    device = resolve_device(cfg.engine.device)
    splits = load_splits(cfg.data)
    model, ckpt = load_model(checkpoint, device)
    check_teacher_fits(ckpt, splits.train.spec, checkpoint)
    built = build_cache(
        model,
        splits.train,
        path,
        num_views=num_views,
        view_seed=getattr(teacher, "view_seed", 0),
        storage=storage,
        topk=topk,
        dtype=dtype,
        precision=cfg.engine.precision,
        batch_size=cfg.data.eval_batch_size,
        device=device,
        channels_last=cfg.engine.channels_last,
        fold_batchnorm=getattr(teacher, "fold_batchnorm", True),
        eval_dataset=splits.test,
        overwrite=overwrite,
        progress=cfg.engine.progress,
    )
    return CachedTeacher(built, verify=False).meta


def _build_language_model_cache(target: Path, cfg: RunConfig, topk: int | None, overwrite: bool) -> dict[str, Any]:
    """A language model's top-k cache of the training windows (``topk``: default ``teacher.topk``) from
    ``cfg``'s teacher: a checkpoint or a pretrained model (``teacher.hf`` / ``teacher.gguf``)."""
    import shutil

    from darkknowledge.config import CacheTeacher
    from darkknowledge.engine.factory import build_teacher_signal
    from darkknowledge.engine.lm_cache import LMCachedTeacher, LMTeacherCache

    k = topk if topk is not None else getattr(cfg.teacher, "topk", CacheTeacher.model_fields["topk"].default)
    if overwrite and (target / "meta.json").is_file():
        LMTeacherCache.open(target)  # only a readable language-model cache is replaced
        shutil.rmtree(target)
    kind, path = cfg.teacher.pretrained_source or ("checkpoint", cfg.teacher.checkpoint_path)
    teacher = CacheTeacher.model_validate({"cache": str(target), "build": True, "topk": k, kind: path})
    signal = build_teacher_signal(
        cfg.model_copy(update={"teacher": teacher}), load_splits(cfg.data), resolve_device(cfg.engine.device)
    )
    assert isinstance(signal, LMCachedTeacher)
    return dict(signal.cache.meta)
