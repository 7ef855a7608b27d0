"""Teacher report card: a plain-language summary of a teacher's dark knowledge and what
the toolkit's measurements say about distilling from it.

The statistics follow published claims:

* Li et al. (2405.13078): as teachers grow, the variance of the non-target
  probabilities first rises then falls; teachers of different sizes agree on the
  ranking of the non-target classes.
* ATS / ISATS: a lower temperature on the non-target classes (and a higher one on the
  target) restores their spread; ISATS picks it per sample (tau*).
* RCKD / DIST: matching relations/rankings rather than values transfers what teachers
  of all sizes share.
* DKD: plain KD scales the non-target term by (1 - p_t); a confident teacher makes that
  factor small.

The card gives no capacity-mismatch verdict: a rule over these measurements was tested
against the measured ladders and the card states only what a rule has been shown to predict
(docs/diagnostics.md, "Does the card predict?"). It reports the measurements and recommends
what ``darkknowledge tune`` found for this teacher and student, when given, else to run it.
Every card carries :data:`DISCLAIMER`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from darkknowledge.diagnostics._common import jsonable
from darkknowledge.diagnostics.decompose import Decomposition
from darkknowledge.diagnostics.ranks import RankConsistency
from darkknowledge.diagnostics.stats import TeacherStats

__all__ = ["DISCLAIMER", "RULES_VERSION", "TeacherCard", "TunedChoice", "make_card"]

#: changes whenever what a card says changes (a sweep then re-writes its diagnostics)
RULES_VERSION = 2

DISCLAIMER = (
    "MEASUREMENTS, NOT A PREDICTION: the card reports this teacher's dark knowledge; whether a larger teacher "
    "will teach this student worse is not predicted from it (docs/diagnostics.md, 'Does the card predict?'). "
    "Choose teacher, method and temperature on a validation split with `darkknowledge tune`."
)


@dataclass(frozen=True)
class TunedChoice:
    """What ``darkknowledge tune`` chose for a student (on its validation split)."""

    teacher: str
    student: str
    method: str
    params: dict[str, Any]
    val: float  # the selection metric on the validation split, as tune reports it (top-1 in %, NLL in nats)
    source: str  # the tune result file
    metric: str = "top1"

    def validation(self) -> str:
        if self.metric == "top1":
            return f"validation top-1 {self.val:.1f} %"
        return f"validation {self.metric} {self.val:.4g}"

    @classmethod
    def from_file(cls, path: str, names: dict[str, str] | None = None) -> TunedChoice:
        """The choice in a ``tune.json``; ``names`` maps checkpoint paths (resolved) to the diagnosed
        names, so the card of the teacher tune chose carries it."""
        from pathlib import Path

        from darkknowledge.errors import UserError

        try:
            result = json.loads(Path(path).read_text())
            chosen = result["chosen"]
            checkpoint = str(Path(result["teacher_checkpoint"]).resolve())
            return cls(
                teacher=(names or {}).get(checkpoint, chosen["teacher"]),
                student=str(result["student"]),
                method=str(chosen["method"]),
                params=dict(chosen["params"]),
                val=float(result["val"]),
                source=str(path),
                metric=str(result["selection"]["metric"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--tuned {path}: not a tune result written by `darkknowledge tune` ({exc})") from None


#: thresholds of the heuristic (documented in docs/diagnostics.md)
CONFIDENT_TARGET_PROB = 0.9  # mean p_y at T = 1 above which a teacher counts as over-confident
AGREEMENT_SPEARMAN = 0.6  # mean Spearman rho above which two rankings "agree"
LOW_FIDELITY_SPEARMAN = 0.5  # student-teacher Spearman below which the student "does not follow"
SMALL_COUPLING = 0.3  # mean (1 - p_t^T) below which KD's non-target term is strongly damped


@dataclass
class TeacherCard:
    teacher: str
    student: str | None
    reference: str | None
    temperature: float
    mismatch: bool | None  # None: no verdict
    verdict: str
    evidence: list[str]
    method: str | None  # None: no recommended method (run tune)
    method_params: dict[str, Any]
    recommendation: str
    alternatives: list[str] = field(default_factory=list)
    disclaimer: str = DISCLAIMER

    @property
    def title(self) -> str:
        pair = f"{self.teacher} -> {self.student}" if self.student else self.teacher
        return f"Teacher report card: {pair}"

    def to_text(self) -> str:
        lines = [self.title, "=" * len(self.title), "", f"Verdict: {self.verdict}", "", "Evidence:"]
        lines += [f"  - {e}" for e in self.evidence] or ["  (none)"]
        lines += ["", f"Recommendation: {self.recommendation}"]
        if self.alternatives:
            lines += ["Alternatives:"] + [f"  - {a}" for a in self.alternatives]
        lines += ["", self.disclaimer, ""]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["title"] = self.title
        return jsonable(d)


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e4:
        return f"{x:.2e}"
    return f"{x:.3g}"


def _params(s: TeacherStats) -> str:
    if s.num_params is None:
        return ""
    p = s.num_params
    return f" ({p / 1e6:.2f}M params)" if p >= 1e5 else f" ({p:,} params)"


def _rank(ranks: RankConsistency | None, metric: str, a: str, b: str) -> float:
    if ranks is None or a not in ranks.names or b not in ranks.names or metric not in ranks.matrices:
        return float("nan")
    return ranks.value(metric, a, b)


def make_card(
    teacher: TeacherStats,
    *,
    reference: TeacherStats | None = None,
    ranks: RankConsistency | None = None,
    student: TeacherStats | None = None,
    decomposition: Decomposition | None = None,
    temperature: float = 4.0,
    tuned: TunedChoice | None = None,
) -> TeacherCard:
    """Build the card for ``teacher`` (optionally distilled into ``student``), comparing
    with a smaller ``reference`` teacher when given. ``temperature``: the KD temperature
    the comparison is made at (the nearest one in the teacher's statistics is used)."""
    t_row = teacher.row(temperature)
    temp = float(t_row["temperature"])
    v_t = float(t_row["nt_var"])
    row1 = teacher.row(1.0)  # the listed temperature nearest to 1
    py1, t1 = float(row1["target_prob"]), float(row1["temperature"])
    py_t = float(t_row["target_prob"])
    tau = teacher.tau_star or {}
    tau_med = float(tau.get("median", float("nan")))
    evidence: list[str] = []
    alternatives: list[str] = []

    evidence.append(
        f"{teacher.name}{_params(teacher)}: top-1 {100 * teacher.top1:.1f} %, mean target probability "
        f"{_fmt(py1)} at T={_fmt(t1)} and {_fmt(py_t)} at T={_fmt(temp)}."
    )
    evidence.append(
        f"Non-target probabilities at T={_fmt(temp)}: variance {_fmt(v_t)} (std {_fmt(float(t_row['nt_std']))}); "
        f"renormalised over the wrong classes: std {_fmt(float(t_row['nt_std_renorm']))}, "
        f"normalised entropy {_fmt(float(t_row['nt_entropy_renorm_norm']))}."
    )
    if math.isfinite(tau_med):
        evidence.append(
            f"Per-sample variance-maximising temperature tau*: median {_fmt(tau_med)} "
            f"(5-95 %: {_fmt(float(tau.get('q05', float('nan'))))}-{_fmt(float(tau.get('q95', float('nan'))))}), "
            f"searched in [{_fmt(float(tau.get('tau_min', float('nan'))))}, {_fmt(float(tau.get('tau_max', float('nan'))))}]"
            + (
                f"; over the samples it classifies correctly: median {_fmt(float(tau['median_correct']))} "
                f"(the misclassified {_fmt(100 * float(tau['frac_misclassified']))} % sit on the lower bound by construction)."
                if math.isfinite(float(tau.get("median_correct", float("nan"))))
                else "."
            )
        )

    mismatch: bool | None = None  # no rule has been shown to predict it (docs/diagnostics.md)
    ratio = float("nan")
    if reference is not None:
        r_row = reference.row(temp)
        v_r = float(r_row["nt_var"])
        ratio = v_t / v_r if v_r > 0 else float("inf")
        evidence.append(
            f"Smaller teacher {reference.name}{_params(reference)} at T={_fmt(float(r_row['temperature']))}: "
            f"non-target variance {_fmt(v_r)}, target probability {_fmt(float(r_row['target_prob']))}, "
            f"top-1 {100 * reference.top1:.1f} %; {teacher.name}'s variance is {_fmt(ratio)}x that."
        )
    overconfident = py1 >= CONFIDENT_TARGET_PROB

    rho_ref = _rank(ranks, "spearman", teacher.name, reference.name) if reference is not None else float("nan")
    agree = math.isfinite(rho_ref) and rho_ref >= AGREEMENT_SPEARMAN
    if reference is not None and math.isfinite(rho_ref):
        top5 = _rank(ranks, "top5", teacher.name, reference.name)
        kend = _rank(ranks, "kendall", teacher.name, reference.name)
        evidence.append(
            f"Rank consistency of the non-target classes with {reference.name}: Spearman {_fmt(rho_ref)}, "
            f"Kendall tau-b {_fmt(kend)}, top-5 overlap {_fmt(top5)} "
            f"({'they agree' if agree else 'weak agreement'})."
        )

    fidelity = float("nan")
    if student is not None:
        fidelity = _rank(ranks, "spearman", student.name, teacher.name)
        evidence.append(
            f"Student {student.name}{_params(student)}: top-1 {100 * student.top1:.1f} %, rank fidelity to "
            f"{teacher.name} (mean Spearman of non-target rankings) {_fmt(fidelity)}."
        )
    coupling = float("nan")
    if decomposition is not None:
        d, a = decomposition.dkd, decomposition.ats
        coupling = float(d.get("weight", float("nan")))
        evidence.append(
            f"KD at T={_fmt(decomposition.temperature)}: KL {_fmt(d.get('kd', float('nan')))} = TCKD "
            f"{_fmt(d.get('tckd', float('nan')))} + (1-p_t) NCKD {_fmt(d.get('weighted_nckd', float('nan')))}; "
            f"mean coupling weight 1-p_t = {_fmt(coupling)}. ATS terms of the soft CE: correct guidance "
            f"{_fmt(a.get('correct_guidance', float('nan')))}, smoothing {_fmt(a.get('smoothing', float('nan')))}, "
            f"discriminability {_fmt(a.get('discriminability', float('nan')))}."
        )

    # ---- no verdict; the recommendation is tune's choice, when one is given -------------------
    verdict = "No verdict on capacity mismatch: see the measurements above"
    verdict += (
        f" (variance {_fmt(ratio)}x the smaller {reference.name}'s at T={_fmt(temp)})."
        if reference is not None
        else "."
    )
    method: str | None = None
    params: dict[str, Any] = {}
    if tuned is not None and tuned.teacher == teacher.name:
        method, params = tuned.method, dict(tuned.params)
        recommendation = (
            f"{tuned.method} {json.dumps(tuned.params, sort_keys=True)} from {tuned.teacher}: chosen by "
            f"`darkknowledge tune` for {tuned.student} ({tuned.validation()}; {tuned.source})."
        )
    else:
        recommendation = (
            "Run `darkknowledge tune` with this teacher (and the smaller ones) as candidates: it chooses teacher, "
            "method and temperature on the validation split within a budget."
        )
    if math.isfinite(tau_med):
        alternatives.append(
            f"ISATS (per-sample temperature tau*(x); median {_fmt(tau_med)} here) as a candidate of the search."
        )
    if agree:
        alternatives.append(
            f"RCKD or DIST as candidates: the teachers agree on the non-target ranking (Spearman {_fmt(rho_ref)}), "
            "which losses that match rankings or relations rather than values transfer."
        )
    if math.isfinite(fidelity) and fidelity < LOW_FIDELITY_SPEARMAN:
        alternatives.append(
            f"Rank-based losses (RCKD, DIST) as candidates: the student's rank fidelity to this teacher is low "
            f"({_fmt(fidelity)})."
        )
    if math.isfinite(coupling) and coupling < SMALL_COUPLING:
        alternatives.append(
            f"DKD as a candidate: the mean coupling weight 1-p_t is {_fmt(coupling)}, so plain KD damps the "
            "non-target term; DKD weights it separately (beta)."
        )
    if overconfident:
        alternatives.append(
            f"Higher temperatures in the search: the teacher is very confident (mean target probability {_fmt(py1)} "
            f"at T={_fmt(t1)})."
        )
    return TeacherCard(
        teacher=teacher.name,
        student=student.name if student is not None else None,
        reference=reference.name if reference is not None else None,
        temperature=temp,
        mismatch=mismatch,
        verdict=verdict,
        evidence=evidence,
        method=method,
        method_params=params,
        recommendation=recommendation,
        alternatives=alternatives,
    )
