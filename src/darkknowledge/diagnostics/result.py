"""What the diagnostics take and give: model outputs, options and the result
(:class:`TeacherOutputs`, :class:`OutputsBatch`, :class:`DiagnoseOptions`,
:class:`DiagnosticsResult`) and the tau*-bound warnings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from darkknowledge.diagnostics._common import jsonable
from darkknowledge.diagnostics.card import TeacherCard, TunedChoice, make_card
from darkknowledge.diagnostics.decompose import Decomposition
from darkknowledge.diagnostics.geometry import GeometryResult
from darkknowledge.diagnostics.isats_search import GRID_SIZE, REFINE_SIZE
from darkknowledge.diagnostics.ranks import RankConsistency
from darkknowledge.diagnostics.stats import DEFAULT_TEMPERATURES, TeacherStats
from darkknowledge.errors import UserError

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
            raise UserError(
                f"{self.name}: features {tuple(self.features.shape)} do not match {shape[0]} rows of logits"
            )

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
    tuned: TunedChoice | None = None  # what `darkknowledge tune` chose: the card recommends it


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
            tuned=self.options.tuned,
        )

    def to_dict(self) -> dict[str, Any]:
        opts = dict(self.options.__dict__)
        opts["tuned"] = self.options.tuned.__dict__ if self.options.tuned is not None else None
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
            if share is None or not math.isfinite(share) or share <= fraction:
                continue
            right = t.get("frac_at_min_correct") if side == "lower" else None
            if right is not None and math.isfinite(right) and right <= fraction:
                # the misclassified samples: their optimum is the lower bound whatever the range
                out.append(
                    f"{s.name}: {share:.0%} of the per-sample tau* sit on the lower search bound {t[bound_key]:g}: "
                    f"the samples it misclassifies ({t['frac_misclassified']:.0%}), whose variance-maximising "
                    f"temperature is the bound whatever the range, and {right:.0%} of those it gets right; "
                    f"the median tau* of the correct ones is {t['median_correct']:.3g} "
                    "(ISATS gives misclassified samples misclassified_temperature instead)"
                )
            else:
                out.append(
                    f"{s.name}: {share:.0%} of the per-sample tau* sit on the {side} search bound "
                    f"{t[bound_key]:g}, so their optimum is at or beyond it and the tau* statistics are clipped "
                    f"there; widen the range (DiagnoseOptions.tau_min / tau_max) to see it"
                )
    return out


def make_cards(
    result: DiagnosticsResult, teachers: Sequence[str], students: Sequence[str], pairs: Iterable[tuple[str, str]] | None
) -> list[TeacherCard]:
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
