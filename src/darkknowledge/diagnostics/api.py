"""The diagnostics' core: one streaming pass over model outputs (mirrors
``darkknowledge diagnose``).

* :func:`diagnose_stream`  an iterator of :class:`OutputsBatch` (one pass; nothing but
  the tau* values, 4 bytes/sample/model, and, if features are streamed, their
  normalised copies is kept);
* :func:`diagnose`         in-memory :class:`TeacherOutputs` (tensors, arrays or
  memory-mapped arrays), processed in chunks.

Files: :mod:`darkknowledge.diagnostics.logits_file`; running models:
:mod:`darkknowledge.diagnostics.collect`; types: :mod:`darkknowledge.diagnostics.result`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from darkknowledge.diagnostics._common import to_tensor
from darkknowledge.diagnostics.decompose import DecompositionAccumulator
from darkknowledge.diagnostics.geometry import FeatureGeometryAccumulator, GeometryResult, feature_geometry
from darkknowledge.diagnostics.ranks import RankConsistencyAccumulator
from darkknowledge.diagnostics.report import write_report
from darkknowledge.diagnostics.result import (
    DiagnoseOptions,
    DiagnosticsResult,
    OutputsBatch,
    TeacherOutputs,
    make_cards,
    tau_bound_warnings,
)
from darkknowledge.diagnostics.stats import TeacherStatsAccumulator
from darkknowledge.errors import UserError


def _names_params(models: Mapping[str, int | None] | Sequence[str] | None) -> dict[str, int | None]:
    if models is None:
        return {}
    if isinstance(models, Mapping):
        return {str(k): (int(v) if v is not None else None) for k, v in models.items()}
    return {str(k): None for k in models}


def _resolve_options(temperatures: Sequence[float] | None, options: DiagnoseOptions | None) -> DiagnoseOptions:
    opts = options if options is not None else DiagnoseOptions()
    if temperatures is not None:
        opts = replace(opts, temperatures=tuple(float(t) for t in temperatures))
    if not opts.temperatures:
        raise UserError("give at least one temperature")
    if any(t <= 0 for t in opts.temperatures):
        raise UserError(f"temperatures must be positive, got {list(opts.temperatures)}")
    if not 0 < opts.tau_min < opts.tau_max:
        raise UserError(f"need 0 < tau_min < tau_max, got {opts.tau_min} and {opts.tau_max}")
    if opts.chunk_size < 1:
        raise UserError("chunk_size must be at least 1")
    return opts


def diagnose_stream(
    batches: Iterable[OutputsBatch],
    *,
    teachers: Mapping[str, int | None] | Sequence[str],
    students: Mapping[str, int | None] | Sequence[str] | None = None,
    temperatures: Sequence[float] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    options: DiagnoseOptions | None = None,
    geometry: dict[str, GeometryResult] | None = None,
    data: Mapping[str, Any] | None = None,
    card_pairs: Iterable[tuple[str, str]] | None = None,
    threads: int | None = None,
) -> DiagnosticsResult:
    """One pass over ``batches``; ``teachers``/``students`` map model names (keys of
    ``OutputsBatch.logits``) to parameter counts (or list names only). Features present
    in the batches are used for the angle statistics (kept normalised in memory, see
    :mod:`~darkknowledge.diagnostics.geometry`); ``geometry`` adds precomputed ones.
    ``data`` records what the outputs were computed on (dataset, split, data settings;
    ``num_samples`` is filled in). ``card_pairs``: the (teacher, student) pairs that get a
    report card (default: every pair). ``threads``: worker threads for blocks of rows
    (default ``torch.get_num_threads()``; :mod:`~darkknowledge.diagnostics.parallel`)."""
    opts = _resolve_options(temperatures, options)
    t_params = _names_params(teachers)
    s_params = _names_params(students)
    if not t_params:
        raise UserError("give at least one teacher")
    clash = set(t_params) & set(s_params)
    if clash:
        raise UserError(f"model name(s) {sorted(clash)} used for both a teacher and a student; names must be unique")
    all_names = [*t_params, *s_params]
    params = {**t_params, **s_params}
    stats = {
        nm: TeacherStatsAccumulator(
            opts.temperatures,
            name=nm,
            num_params=params[nm],
            ece_bins=opts.ece_bins,
            tau_star=opts.tau_star,
            tau_min=opts.tau_min,
            tau_max=opts.tau_max,
            grid_size=opts.grid_size,
            refine_size=opts.refine_size,
            tau_hist_bins=opts.tau_hist_bins,
            threads=threads,
        )
        for nm in all_names
    }
    ranks = (
        RankConsistencyAccumulator(
            all_names, ks=opts.ks, kendall=opts.kendall, kendall_stride=opts.kendall_stride, threads=threads
        )
        if len(all_names) >= 2
        else None
    )
    decomp = {
        (t, s): DecompositionAccumulator(
            t,
            s,
            temperature=opts.decomposition_temperature,
            student_temperature=opts.decomposition_student_temperature,
            aid_batch_size=opts.aid_batch_size,
        )
        for s in s_params
        for t in t_params
    }
    geo_acc: dict[str, FeatureGeometryAccumulator] = {}
    seen = 0
    for batch in batches:
        y_all = to_tensor(batch.targets).long().reshape(-1)
        missing = [nm for nm in all_names if nm not in batch.logits]
        if missing:
            raise UserError(f"batch has no logits for model(s) {missing}; every batch needs all models")
        for start in range(0, y_all.shape[0], opts.chunk_size):
            sl = slice(start, start + opts.chunk_size)
            y = y_all[sl]
            z = {nm: to_tensor(batch.logits[nm][sl]) for nm in all_names}
            for nm in all_names:
                if z[nm].shape[0] != y.shape[0]:
                    raise UserError(f"{nm}: {z[nm].shape[0]} rows of logits for {y.shape[0]} targets in a batch")
                stats[nm].update(z[nm], y)
            if ranks is not None:
                ranks.update([z[nm] for nm in all_names], y)
            for (t, s), acc in decomp.items():
                acc.update(z[s], z[t], y)
            if batch.features:
                for nm, f in batch.features.items():
                    if f is None:
                        continue
                    if nm not in geo_acc:
                        geo_acc[nm] = FeatureGeometryAccumulator(keep_features=True)
                    geo_acc[nm].update(f[sl], y)
            seen += y.shape[0]
    if seen == 0:
        raise UserError("no samples: the batch stream was empty")
    geo = {nm: acc.result() for nm, acc in geo_acc.items()}
    if geometry:
        geo.update(geometry)
    result = DiagnosticsResult(
        teachers=[stats[nm].result() for nm in t_params],
        students=[stats[nm].result() for nm in s_params],
        ranks=ranks.result() if ranks is not None else None,
        geometry=geo,
        decompositions=[acc.result() for acc in decomp.values()],
        options=opts,
        data={**(data or {}), "num_samples": seen},
    )
    result.warnings = tau_bound_warnings([*result.teachers, *result.students])
    result.cards = make_cards(result, list(t_params), list(s_params), card_pairs)
    if out_dir is not None:
        result.files = write_report(result, out_dir, plots=opts.plots)
    return result


def _same_targets(models: Sequence[TeacherOutputs]) -> Tensor:
    ref = models[0]
    y0 = to_tensor(ref.targets).long().reshape(-1)
    for m in models[1:]:
        if m.targets is ref.targets:
            continue
        y = to_tensor(m.targets).long().reshape(-1)
        if y.shape != y0.shape or not torch.equal(y, y0):
            raise UserError(
                f"{m.name} and {ref.name} have different targets; all models must be evaluated on the same "
                "samples in the same order (disable shuffling)"
            )
    return y0


def diagnose(
    teachers: Sequence[TeacherOutputs],
    students: Sequence[TeacherOutputs] | None = None,
    temperatures: Sequence[float] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    options: DiagnoseOptions | None = None,
    data: Mapping[str, Any] | None = None,
    card_pairs: Iterable[tuple[str, str]] | None = None,
    threads: int | None = None,
) -> DiagnosticsResult:
    """Diagnose in-memory (or memory-mapped) outputs. ``teachers`` should be ordered by
    capacity when ``num_params`` is unknown. Writes the report to ``out_dir`` if given.
    ``data``, ``card_pairs`` and ``threads``: see :func:`diagnose_stream`."""
    teachers = list(teachers)
    students = list(students or [])
    if not teachers:
        raise UserError("give at least one teacher")
    models = [*teachers, *students]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"model names must be unique, got {names}")
    shapes = {m.name: tuple(m.logits.shape) for m in models}
    if len(set(shapes.values())) != 1:
        raise UserError(f"all models need logits of the same shape (samples, classes); got {shapes}")
    y = _same_targets(models)
    opts = _resolve_options(temperatures, options)
    n = y.shape[0]

    def batches() -> Iterator[OutputsBatch]:
        for start in range(0, n, opts.chunk_size):
            sl = slice(start, start + opts.chunk_size)
            yield OutputsBatch(targets=y[sl], logits={m.name: m.logits[sl] for m in models})

    geo = {
        m.name: feature_geometry(m.features, y, chunk_size=opts.chunk_size) for m in models if m.features is not None
    }
    return diagnose_stream(
        batches(),
        teachers={m.name: m.num_params for m in teachers},
        students={m.name: m.num_params for m in students},
        out_dir=out_dir,
        options=opts,
        geometry=geo,
        data=data,
        card_pairs=card_pairs,
        threads=threads,
    )
