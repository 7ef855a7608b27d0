"""Library API of the diagnostics (mirrors ``darkknowledge diagnose``).

* :func:`diagnose`             in-memory :class:`TeacherOutputs` (tensors, arrays or
                               memory-mapped arrays), processed in chunks;
* :func:`diagnose_stream`      an iterator of :class:`OutputsBatch` (one pass; nothing
                               but the tau* values, 4 bytes/sample/model, and, if
                               features are streamed, their normalised copies is kept);
* :func:`diagnose_from_logits_file`  a ``.npy``/``.npz`` of logits + targets, memory-mapped;
* :func:`collect_outputs`      run a model over batches once and keep logits/features.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from darkknowledge.diagnostics._common import jsonable, to_tensor
from darkknowledge.diagnostics.card import TeacherCard, make_card
from darkknowledge.diagnostics.decompose import Decomposition, DecompositionAccumulator
from darkknowledge.diagnostics.geometry import FeatureGeometryAccumulator, GeometryResult, feature_geometry
from darkknowledge.diagnostics.isats_search import GRID_SIZE, REFINE_SIZE
from darkknowledge.diagnostics.ranks import RankConsistency, RankConsistencyAccumulator
from darkknowledge.diagnostics.stats import DEFAULT_TEMPERATURES, TeacherStats, TeacherStatsAccumulator
from darkknowledge.errors import UserError

__all__ = [
    "TeacherOutputs",
    "OutputsBatch",
    "DiagnoseOptions",
    "DiagnosticsResult",
    "diagnose",
    "diagnose_stream",
    "diagnose_from_logits_file",
    "load_logits_file",
    "collect_outputs",
    "tau_bound_warnings",
]

#: share of samples with tau* on one end of the search range above which the result warns
TAU_BOUND_WARNING_FRACTION = 0.10


@dataclass
class TeacherOutputs:
    """One model's outputs on a dataset (teachers and students alike).

    ``logits`` (N, C) and ``features`` (N, D) may be tensors or numpy arrays (also
    ``np.memmap``); ``targets`` (N,) integer labels, identical for every model of a run.
    """

    name: str
    num_params: int | None
    logits: Any
    targets: Any
    features: Any | None = None

    def __post_init__(self) -> None:
        if not hasattr(self.logits, "shape"):
            self.logits = np.asarray(self.logits)
        if not hasattr(self.targets, "shape"):
            self.targets = np.asarray(self.targets, dtype=np.int64)
        shape = tuple(self.logits.shape)
        if len(shape) != 2:
            raise UserError(f"{self.name}: logits must be (samples, classes), got shape {shape}")
        if tuple(self.targets.shape) != (shape[0],):
            raise UserError(f"{self.name}: {tuple(self.targets.shape)} targets for {shape[0]} rows of logits")
        if self.features is not None and (len(self.features.shape) != 2 or self.features.shape[0] != shape[0]):
            raise UserError(f"{self.name}: features {tuple(self.features.shape)} do not match {shape[0]} rows of logits")

    @property
    def num_samples(self) -> int:
        return int(self.logits.shape[0])


# a student's outputs have the same form
ModelOutputs = TeacherOutputs


@dataclass
class OutputsBatch:
    """One chunk of a stream: targets plus every model's logits (and optionally
    features) for the same rows, keyed by model name."""

    targets: Any
    logits: Mapping[str, Any]
    features: Mapping[str, Any] | None = None


@dataclass
class DiagnoseOptions:
    """Everything configurable (defaults in parentheses are used by the CLI too)."""

    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    ece_bins: int = 15
    tau_star: bool = True
    tau_min: float = 0.5
    tau_max: float = 20.0
    grid_size: int = GRID_SIZE
    refine_size: int = REFINE_SIZE
    tau_hist_bins: int = 30
    ks: tuple[int, ...] = (1, 5, 10)
    kendall: bool = True
    kendall_stride: int = 1
    decomposition_temperature: float = 4.0
    decomposition_student_temperature: float | None = None
    aid_batch_size: int = 128
    card_temperature: float = 4.0
    chunk_size: int = 2048
    plots: bool = True


@dataclass
class DiagnosticsResult:
    teachers: list[TeacherStats]
    students: list[TeacherStats] = field(default_factory=list)
    ranks: RankConsistency | None = None
    geometry: dict[str, GeometryResult] = field(default_factory=dict)
    decompositions: list[Decomposition] = field(default_factory=list)
    cards: list[TeacherCard] = field(default_factory=list)
    options: DiagnoseOptions = field(default_factory=DiagnoseOptions)
    files: dict[str, str] = field(default_factory=dict)
    #: what the outputs were computed on: dataset, split, num_samples, data settings
    data: dict[str, Any] = field(default_factory=dict)
    #: one-line warnings about the results (also in diagnostics.json and report.html)
    warnings: list[str] = field(default_factory=list)

    def model(self, name: str) -> TeacherStats:
        for s in [*self.teachers, *self.students]:
            if s.name == name:
                return s
        raise KeyError(name)

    def rank_fidelity(self, student: str, teacher: str) -> float:
        """Mean Spearman rho between the student's and the teacher's non-target rankings."""
        if self.ranks is None:
            raise ValueError("rank consistency was not computed (fewer than two models)")
        return self.ranks.value("spearman", student, teacher)

    def decomposition(self, teacher: str, student: str) -> Decomposition:
        for d in self.decompositions:
            if d.teacher == teacher and d.student == student:
                return d
        raise KeyError((teacher, student))

    def reference_for(self, teacher: str) -> TeacherStats | None:
        """The next-smaller teacher (by ``num_params``; without them, the previous one in
        the given order, which is then assumed to be increasing capacity)."""
        names = [s.name for s in self.teachers]
        i = names.index(teacher)
        if all(s.num_params for s in self.teachers):
            p = self.teachers[i].num_params
            smaller = [s for s in self.teachers if s.num_params < p]  # type: ignore[operator]
            return max(smaller, key=lambda s: s.num_params) if smaller else None  # type: ignore[arg-type, return-value]
        return self.teachers[i - 1] if i > 0 else None

    def card(self, teacher: str, student: str | None = None, reference: str | None = None) -> TeacherCard:
        """Report card for ``teacher`` (optionally with a student and an explicit reference)."""
        ref = self.model(reference) if reference is not None else self.reference_for(teacher)
        dec = None
        if student is not None:
            try:
                dec = self.decomposition(teacher, student)
            except KeyError:
                dec = None
        return make_card(
            self.model(teacher),
            reference=ref,
            ranks=self.ranks,
            student=self.model(student) if student is not None else None,
            decomposition=dec,
            temperature=self.options.card_temperature,
        )

    def to_dict(self) -> dict[str, Any]:
        opts = dict(self.options.__dict__)
        return jsonable(
            {
                "data": self.data,
                "warnings": self.warnings,
                "options": opts,
                "teachers": [s.to_dict() for s in self.teachers],
                "students": [s.to_dict() for s in self.students],
                "rank_consistency": self.ranks.to_dict() if self.ranks is not None else None,
                "geometry": {k: g.to_dict() for k, g in self.geometry.items()},
                "decompositions": [d.to_dict() for d in self.decompositions],
                "cards": [c.to_dict() for c in self.cards],
                "files": self.files,
            }
        )


def tau_bound_warnings(stats: Sequence[TeacherStats], fraction: float = TAU_BOUND_WARNING_FRACTION) -> list[str]:
    """A warning per model and search bound holding more than ``fraction`` of its tau*:
    those samples' optimum lies on or beyond the bound, so the tau* summary is clipped."""
    out = []
    for s in stats:
        t = s.tau_star or {}
        for share_key, bound_key, side in (("frac_at_min", "tau_min", "lower"), ("frac_at_max", "tau_max", "upper")):
            share = t.get(share_key)
            if share is not None and math.isfinite(share) and share > fraction:
                out.append(
                    f"{s.name}: {share:.0%} of the per-sample tau* sit on the {side} search bound "
                    f"{t[bound_key]:g}, so their optimum is at or beyond it and the tau* statistics are clipped "
                    f"there; widen the range (DiagnoseOptions.tau_min / tau_max) to see it"
                )
    return out


def _make_cards(result: DiagnosticsResult, teachers: Sequence[str], students: Sequence[str],
                pairs: Iterable[tuple[str, str]] | None) -> list[TeacherCard]:
    """A card per (teacher, student) pair (every pair when ``pairs`` is None); a teacher
    that is in no pair gets a card of its own."""
    allowed = {(t, s) for t in teachers for s in students} if pairs is None else set(pairs)
    unknown = [pair for pair in allowed if pair[0] not in teachers or pair[1] not in students]
    if unknown:
        raise UserError(f"card pair(s) {sorted(unknown)} name models that are not (teacher, student) of this run")
    cards = []
    for t in teachers:
        paired = [s for s in students if (t, s) in allowed]
        cards += [result.card(t, s) for s in paired] or [result.card(t)]
    return cards


# -- core: one streaming pass ------------------------------------------------------------------
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
) -> DiagnosticsResult:
    """One pass over ``batches``; ``teachers``/``students`` map model names (keys of
    ``OutputsBatch.logits``) to parameter counts (or list names only). Features present
    in the batches are used for the angle statistics (kept normalised in memory, see
    :mod:`~darkknowledge.diagnostics.geometry`); ``geometry`` adds precomputed ones.
    ``data`` records what the outputs were computed on (dataset, split, data settings;
    ``num_samples`` is filled in). ``card_pairs``: the (teacher, student) pairs that get a
    report card (default: every pair)."""
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
        )
        for nm in all_names
    }
    ranks = (
        RankConsistencyAccumulator(all_names, ks=opts.ks, kendall=opts.kendall, kendall_stride=opts.kendall_stride)
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
    result.cards = _make_cards(result, list(t_params), list(s_params), card_pairs)
    if out_dir is not None:
        from darkknowledge.diagnostics.report import write_report

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
) -> DiagnosticsResult:
    """Diagnose in-memory (or memory-mapped) outputs. ``teachers`` should be ordered by
    capacity when ``num_params`` is unknown. Writes the report to ``out_dir`` if given.
    ``data`` and ``card_pairs``: see :func:`diagnose_stream`."""
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

    geo = {m.name: feature_geometry(m.features, y, chunk_size=opts.chunk_size) for m in models if m.features is not None}
    return diagnose_stream(
        batches(),
        teachers={m.name: m.num_params for m in teachers},
        students={m.name: m.num_params for m in students},
        out_dir=out_dir,
        options=opts,
        geometry=geo,
        data=data,
        card_pairs=card_pairs,
    )


# -- files -------------------------------------------------------------------------------------
def _npz_member_memmap(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member of an ``.npz`` (None if compressed)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        data_start = info.header_offset + 30 + name_len + extra_len
        fh.seek(data_start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None
        offset = fh.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                arr = _npz_member_memmap(path, zf, info)
                if arr is None:  # compressed member: read it (into memory)
                    with zf.open(info) as fh:
                        arr = np.lib.format.read_array(fh, allow_pickle=False)
                out[key] = arr
    except (zipfile.BadZipFile, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npz archive ({exc}); save it with numpy.savez") from exc
    return out


def load_logits_file(
    path: str | os.PathLike[str],
    *,
    targets: Any = None,
    names: Sequence[str] | None = None,
    num_params: Mapping[str, int] | None = None,
) -> list[TeacherOutputs]:
    """Read model outputs from ``.npy`` / ``.npz`` (memory-mapped where possible).

    * ``.npy``: one (N, C) logits array; ``targets`` (array or path to a ``.npy``) is
      required; the model is named ``names[0]`` or the file stem.
    * ``.npz``: ``targets`` (or ``labels``) (N,) plus either ``logits`` (one model, named
      after the file or ``names[0]``) or ``logits_<name>`` for several models, and
      optionally ``features_<name>`` (N, D) and ``num_params_<name>`` scalars.
      ``names`` selects and orders the models (default: archive order).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"logits file {p} does not exist")
    params = dict(num_params or {})
    if p.suffix == ".npy":
        try:
            logits = np.load(p, mmap_mode="r")
        except ValueError as exc:
            raise UserError(f"{p}: not a readable .npy file ({exc})") from exc
        if targets is None:
            raise UserError(f"{p} holds logits only; also give the targets (an array or a .npy path)")
        y = np.load(targets) if isinstance(targets, (str, os.PathLike)) else np.asarray(targets)
        name = names[0] if names else p.stem
        return [TeacherOutputs(name, params.get(name), logits, np.asarray(y).astype(np.int64))]
    if p.suffix != ".npz":
        raise UserError(f"{p}: unsupported file type {p.suffix!r}; use .npy or .npz")
    arrays = _load_npz(p)
    if targets is not None:
        y = np.load(targets) if isinstance(targets, (str, os.PathLike)) else np.asarray(targets)
    elif "targets" in arrays:
        y = arrays["targets"]
    elif "labels" in arrays:
        y = arrays["labels"]
    else:
        raise UserError(f"{p} has no 'targets' (or 'labels') array; add one or pass targets=")
    y = np.asarray(y).astype(np.int64)
    logit_keys = {k[len("logits_") :]: k for k in arrays if k.startswith("logits_")}
    if "logits" in arrays:
        logit_keys = {(names[0] if names else p.stem): "logits", **logit_keys}
    if not logit_keys:
        raise UserError(f"{p} has no 'logits' or 'logits_<name>' arrays (found {sorted(arrays)})")
    order = list(names) if names else list(logit_keys)
    unknown = [nm for nm in order if nm not in logit_keys]
    if unknown:
        raise UserError(f"{p} has no logits for {unknown}; available: {sorted(logit_keys)}")
    out = []
    for nm in order:
        np_key = f"num_params_{nm}"
        n_params = params.get(nm)
        if n_params is None and np_key in arrays:
            n_params = int(np.asarray(arrays[np_key]).reshape(-1)[0])
        out.append(TeacherOutputs(nm, n_params, arrays[logit_keys[nm]], y, arrays.get(f"features_{nm}")))
    return out


def diagnose_from_logits_file(
    path: str | os.PathLike[str],
    *,
    targets: Any = None,
    teachers: Sequence[str] | None = None,
    students: Sequence[str] = (),
    num_params: Mapping[str, int] | None = None,
    temperatures: Sequence[float] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    options: DiagnoseOptions | None = None,
) -> DiagnosticsResult:
    """:func:`diagnose` on the models of a ``.npy``/``.npz`` file (see
    :func:`load_logits_file`). ``teachers``/``students`` pick models by name (default:
    every model not listed as a student is a teacher, in archive order)."""
    students = list(students)
    names = None if teachers is None else [*teachers, *students]
    models = load_logits_file(path, targets=targets, names=names, num_params=num_params)
    by_name = {m.name: m for m in models}
    missing = [s for s in students if s not in by_name]
    if missing:
        raise UserError(f"{path} has no logits for student(s) {missing}; available: {sorted(by_name)}")
    t_models = [m for m in models if m.name not in students]
    s_models = [by_name[s] for s in students]
    return diagnose(t_models, s_models, temperatures, out_dir, options=options, data={"logits_file": str(path)})


# -- models ------------------------------------------------------------------------------------
def collect_outputs(
    model: torch.nn.Module,
    batches: Iterable[Any],
    device: torch.device | str = "cpu",
    *,
    name: str | None = None,
    num_params: int | None = None,
    keep_features: bool = True,
    features_dtype: torch.dtype = torch.float32,
) -> TeacherOutputs:
    """Run ``model`` over ``batches`` once (eval mode, ``torch.inference_mode``) and keep
    its logits (float32, CPU), the targets and, if ``keep_features``, the penultimate
    features. Contract: ``model.forward_features(x) -> (B, D)`` and
    ``model.classifier(features) -> (B, C)``; each batch has ``.images`` (float,
    normalised) and ``.targets``. ``num_params`` defaults to the model's parameter count."""
    if not hasattr(model, "forward_features") or not hasattr(model, "classifier"):
        raise UserError(
            f"model {type(model).__name__} lacks forward_features()/classifier; diagnostics need a "
            "darkknowledge model (features -> classifier split)"
        )
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    logits_out, feats_out, targets_out = [], [], []
    try:
        with torch.inference_mode():
            for batch in batches:
                x = batch.images.to(dev, non_blocking=True)
                f = model.forward_features(x)
                z = model.classifier(f)
                logits_out.append(z.float().cpu())
                if keep_features:
                    feats_out.append(f.reshape(f.shape[0], -1).to(features_dtype).cpu())
                targets_out.append(torch.as_tensor(batch.targets).long().cpu())
    finally:
        model.train(was_training)
    if not logits_out:
        raise UserError("no batches to evaluate the model on")
    if num_params is None:
        num_params = sum(p.numel() for p in model.parameters())
    return TeacherOutputs(
        name=name or type(model).__name__,
        num_params=num_params,
        logits=torch.cat(logits_out),
        targets=torch.cat(targets_out),
        features=torch.cat(feats_out) if keep_features else None,
    )
