"""Diagnostics of trained checkpoints: load them, run them once over a split, diagnose."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from darkknowledge.data.base import ArrayDataset
from darkknowledge.data.loaders import evaluation_batches, is_tokens
from darkknowledge.data.splits import load_split
from darkknowledge.diagnostics import collect_outputs, diagnose
from darkknowledge.diagnostics.report import check_report_dir
from darkknowledge.engine.checkpoint import load_checkpoint, load_model, state_digest
from darkknowledge.engine.factory import check_teacher_fits, checkpoint_data_config, resolve_device
from darkknowledge.errors import UserError
from darkknowledge.methods import METHODS
from darkknowledge.models import count_parameters

TOKEN_ROWS = 16384  # predicted tokens a language model is diagnosed on by default (rows x vocabulary floats)


def diagnose_checkpoints(
    teachers: list[str],
    students: list[str],
    data_overrides: list[str],
    *,
    split: str = "train",
    out_dir: str | Path = "runs/diagnose",
    options=None,
    device: str = "cpu",
    names: list[str] | None = None,
    tuned: str | None = None,
    max_rows: int | None = None,
):
    """Load checkpoints, run them over the (un-augmented) split once, and diagnose.
    ``tuned``: a ``tune.json``; the card of the teacher it chose recommends its choice.
    ``max_rows``: diagnose the first rows only (language models: one row per predicted token;
    default there: :data:`TOKEN_ROWS`).

    The result records the data it was computed on; a (teacher, student) report card is
    made only when the student was distilled from that teacher or trained without one.
    ``names``: one distinct name per checkpoint (teachers, then students); default: the
    run directory's name."""
    if names is not None and (len(names) != len(teachers) + len(students) or len(set(names)) != len(names)):
        raise UserError(
            f"diagnose: give one distinct name per checkpoint ({len(teachers) + len(students)}), got {names}"
        )
    if out_dir is not None:
        check_report_dir(out_dir)
    torch_device = resolve_device(str(device))
    models = [(p, *load_model(p, torch_device)) for p in teachers + students]
    d = checkpoint_data_config(models[0][2], data_overrides, "diagnose")
    ds = load_split(d, split)
    outputs, used = [], set()
    for i, (path, model, ckpt) in enumerate(models):
        check_teacher_fits(ckpt, ds.spec, path)
        name = names[i] if names is not None else Path(path).parent.name or Path(path).stem
        if name in used:  # the same run given twice (e.g. as teacher and student), or two best.pt of one dir
            name = f"{name}-{'student' if i >= len(teachers) else 'teacher'}{i}"
        used.add(name)
        outputs.append(
            collect_outputs(
                model,
                evaluation_batches(ds, d.eval_batch_size, torch_device, channels_last=False),
                torch_device,
                name=name,
                num_params=count_parameters(model),
                max_rows=max_rows if max_rows is not None or not is_tokens(ds) else TOKEN_ROWS,
            )
        )
    t_out, s_out = outputs[: len(teachers)], outputs[len(teachers) :]
    data = {
        "dataset": d.name,
        "root": d.root,
        "split": split,
        "num_samples": len(ds),
        "num_classes": ds.spec.num_classes,
        "classes": d.classes,
        "per_class": d.train_per_class if split == "train" else d.test_per_class,
        "subset_seed": d.subset_seed,
        "image_size": d.image_size,  # the setting: None keeps the dataset's own size
        "image_shape": [ds.spec.in_channels, *ds.spec.image_size],
    }
    t_models = [(path, state_digest(ckpt["model"]) if students else "") for path, _, ckpt in models[: len(teachers)]]
    memo: dict[str, str | None] = {}
    pairs = [
        (t.name, s.name)
        for (_, _, s_ckpt), s in zip(models[len(teachers) :], s_out)
        for (t_path, t_digest), t in zip(t_models, t_out)
        if taught_by(s_ckpt, t_path, t_digest, memo)
    ]
    t_out.sort(key=lambda o: o.num_params or 0)
    if tuned is not None:
        from dataclasses import replace

        from darkknowledge.diagnostics import DiagnoseOptions, TunedChoice

        by_path = {str(Path(path).resolve()): o.name for (path, _, _), o in zip(models, outputs)}
        options = replace(options or DiagnoseOptions(), tuned=TunedChoice.from_file(tuned, by_path))
    return diagnose(t_out, s_out, out_dir=out_dir, options=options, data=data, card_pairs=pairs)


def diagnose_modules(
    teachers: Mapping[str, nn.Module],
    dataset: ArrayDataset,
    *,
    students: Mapping[str, nn.Module] | None = None,
    out_dir: str | Path | None = None,
    options=None,
    device: str = "cpu",
    batch_size: int = 256,
):
    """Diagnose any ``nn.Module`` teachers (and students) that map ``dataset``'s
    normalised images to logits of its classes (a pretrained model from another library
    through :class:`~darkknowledge.engine.adapter.TeacherAdapter`): each runs once over
    the un-augmented ``dataset``; the output width is checked on every batch. Features
    (and the feature geometry) only for models with ``forward_features``/``classifier``."""
    outputs = {}
    for role, group in (("teacher", teachers), ("student", students or {})):
        outputs[role] = [
            collect_outputs(
                model,
                evaluation_batches(dataset, batch_size, device, channels_last=False),
                device,
                name=name,
                num_params=count_parameters(model),
                num_classes=dataset.spec.num_classes,
            )
            for name, model in group.items()
        ]
    data = {
        "dataset": dataset.spec.name,
        "num_samples": len(dataset),
        "num_classes": dataset.spec.num_classes,
        "image_shape": [dataset.spec.in_channels, *dataset.spec.image_size],
    }
    t_out = sorted(outputs["teacher"], key=lambda o: o.num_params or 0)
    return diagnose(t_out, outputs["student"], out_dir=out_dir, options=options, data=data)


def student_origin(ckpt: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(method name, teacher.checkpoint, teacher.cache) from a checkpoint's embedded config."""
    cfg = yaml.safe_load(ckpt.get("config") or "{}") or {}
    method = (cfg.get("method") or {}).get("name")
    teacher = cfg.get("teacher") or {}
    return method, teacher.get("checkpoint"), teacher.get("cache")


def _trained_without_teacher(method: str | None) -> bool:
    if method is not None and method in METHODS:
        return not METHODS.get(method).needs_teacher
    return method == "ce"


def _recorded_digest(path: str, memo: dict[str, str | None]) -> str | None:
    """Weight digest of the teacher checkpoint a student recorded (None: gone or unreadable)."""
    key = str(Path(path).resolve())
    if key not in memo:
        memo[key] = None
        if Path(key).is_file():
            try:
                memo[key] = state_digest(load_checkpoint(key)["model"])
            except UserError:
                pass
    return memo[key]


def _cache_digest(cache: str) -> str | None:
    """The teacher weight digest a teacher-output cache was built from (None: no cache there)."""
    meta = Path(cache) / "meta.json"
    try:
        return json.loads(meta.read_text())["key"]["teacher_digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def taught_by(
    student_ckpt: dict[str, Any],
    teacher_path: str | Path,
    teacher_digest: str,
    memo: dict[str, str | None] | None = None,
) -> bool:
    """Whether the student checkpoint was distilled from this teacher, or trained without
    a teacher (then every teacher is a fair comparison). The same teacher: the recorded
    ``teacher.checkpoint`` resolves to ``teacher_path``, or its weights (or those the
    recorded ``teacher.cache`` was built from) have ``teacher_digest`` (a copied or moved
    teacher). ``memo`` keeps digests of recorded checkpoints between calls."""
    method, recorded, cache = student_origin(student_ckpt)
    if _trained_without_teacher(method):
        return True
    if recorded and Path(recorded).resolve() == Path(teacher_path).resolve():
        return True
    if recorded and _recorded_digest(recorded, {} if memo is None else memo) == teacher_digest:
        return True
    return cache is not None and _cache_digest(cache) == teacher_digest


def _cache_name(path: Path) -> str:
    """A cache's name in the report: its directory, or the stage directory a sweep keeps it in."""
    path = path.resolve()
    name = path.parent.name if path.name == "cache" else path.name
    return name.rsplit("-", 1)[0] if name.startswith("cache-") else name


def diagnose_lm_caches(
    paths: list[str],
    *,
    out_dir: str | Path | None = "runs/diagnose",
    options=None,
    max_rows: int | None = None,
    names: list[str] | None = None,
    chunk_rows: int = 512,
):
    """Diagnose language-model teachers from their top-k caches (:mod:`darkknowledge.engine.lm_cache`)
    of one corpus and tokenizer, smallest teacher first: the first ``max_rows`` predicted tokens
    (default :data:`TOKEN_ROWS`). Every statistic comes from the rows the caches rebuild (top-k,
    the tail spread uniformly: what a student distilling from them sees); the statistics the caches
    recorded from the full distributions at T = 1 (target probability, entropy, non-target variance,
    tau*) are reported beside them, in the result's ``data["full_distribution_at_T1"]``."""
    import numpy as np
    import torch

    from darkknowledge.diagnostics import diagnose_stream
    from darkknowledge.diagnostics.result import OutputsBatch
    from darkknowledge.engine.lm_cache import LMTeacherCache, expand_topk_rows

    if not paths:
        raise UserError("give at least one --cache DIR")
    if out_dir is not None:
        check_report_dir(out_dir)
    caches = [LMTeacherCache.open(p) for p in paths]
    labels = names or [_cache_name(Path(p)) for p in paths]
    if len(labels) != len(caches) or len(set(labels)) != len(labels):
        raise UserError(f"diagnose: the caches need distinct names, got {labels}; pass names=")
    first = caches[0]
    for path, cache in zip(paths[1:], caches[1:]):
        same = (cache.vocab_size, cache.window_length, cache.num_windows) == (
            first.vocab_size,
            first.window_length,
            first.num_windows,
        )
        if not same or cache.meta["key"]["corpus"] != first.meta["key"]["corpus"]:
            raise UserError(
                f"cache {path} is not over the same token windows as {paths[0]} (corpus, vocabulary, windows); "
                "diagnose caches of one corpus and tokenizer together"
            )
    windows = torch.arange(first.num_windows)
    flat_targets = first.window_arrays(windows, "targets").reshape(-1).long()
    for path, cache in zip(paths[1:], caches[1:]):
        if not torch.equal(cache.window_arrays(windows, "targets").reshape(-1).long(), flat_targets):
            raise UserError(f"cache {path} predicts other tokens than {paths[0]}; diagnose caches of one corpus")
    needed, rows = first.first_predicted(max_rows or TOKEN_ROWS)
    if rows.numel() == 0:
        raise UserError(f"cache {paths[0]} has no predicted tokens to diagnose")

    def topk(cache: LMTeacherCache) -> list[torch.Tensor]:
        arrays = [cache.window_arrays(needed, name) for name in ("ids", "values", "lse")]
        return [a.reshape(-1, *a.shape[2:]) for a in arrays]

    columns = {label: topk(cache) for label, cache in zip(labels, caches)}

    def batches():
        for start in range(0, rows.numel(), chunk_rows):
            index = rows[start : start + chunk_rows]
            logits = {
                label: expand_topk_rows(ids[index], values[index], lse[index], cache.vocab_size)
                for (label, (ids, values, lse)), cache in zip(columns.items(), caches)
            }
            yield OutputsBatch(targets=flat_targets[index], logits=logits)

    exact: dict[str, dict[str, float]] = {}
    for label, cache in zip(labels, caches):
        if not cache.meta.get("statistics"):
            continue
        stats = {name: cache.statistic(name)[rows].double() for name in cache.meta["statistics"]}
        exact[label] = {
            "target_prob": float(stats["target_logprob"].exp().mean()),
            "entropy": float(stats["entropy"].mean()),
            "nt_var": float(stats["nontarget_variance"].mean()),
            "tau_star_median": float(np.nanmedian(stats["tau_star"].numpy())),
        }
    data = {
        "source": "language-model teacher caches",
        "caches": [str(Path(p)) for p in paths],
        "k": [c.k for c in caches],
        "rows": "top-k logits with the tail spread uniformly (what a student distils from)",
        "full_distribution_at_T1": exact,
    }
    return diagnose_stream(batches(), teachers=labels, out_dir=out_dir, options=options, data=data)
