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

The verdict is calibrated on capacity sweeps (:data:`CALIBRATION`, docs/diagnostics.md
"Calibration"): a lower non-target variance than the smaller teacher's went with a worse
KD student in too few measured pairs to call it a mismatch, so the card reports it as a
signal to check, predicts no mismatch, and recommends KD. Every card carries
:data:`DISCLAIMER`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from darkknowledge.diagnostics._common import jsonable
from darkknowledge.diagnostics.decompose import Decomposition
from darkknowledge.diagnostics.ranks import RankConsistency
from darkknowledge.diagnostics.stats import TeacherStats

__all__ = ["CALIBRATION", "DISCLAIMER", "TeacherCard", "make_card"]

#: What the capacity sweeps measured (docs/diagnostics.md, "Calibration"): adjacent teacher
#: pairs of the measured ladders, those where the larger teacher's non-target variance at
#: T = 4 was lower, and those where KD from the larger teacher was measurably worse
#: (paired by seed, more than one standard error), overall and among the lower-variance ones.
CALIBRATION = {"pairs": 10, "lower_variance": 8, "kd_worse": 3, "lower_variance_and_kd_worse": 2}

DISCLAIMER = (
    "CALIBRATED ON FEW LADDERS: the verdict follows what this toolkit's capacity sweeps measured "
    "(docs/diagnostics.md, 'Calibration'), a handful of small CPU-scale ladders; confirm it for your "
    "teacher and student with a capacity sweep (several teachers x this student, several seeds)."
)

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
    mismatch: bool | None  # None: not enough evidence to say
    verdict: str
    evidence: list[str]
    method: str
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
            f"searched in [{_fmt(float(tau.get('tau_min', float('nan'))))}, {_fmt(float(tau.get('tau_max', float('nan'))))}]."
        )

    mismatch: bool | None = None
    lower_var = False
    ratio = float("nan")
    if reference is not None:
        r_row = reference.row(temp)
        v_r = float(r_row["nt_var"])
        ratio = v_t / v_r if v_r > 0 else float("inf")
        lower_var = v_t < v_r
        evidence.append(
            f"Smaller teacher {reference.name}{_params(reference)} at T={_fmt(float(r_row['temperature']))}: "
            f"non-target variance {_fmt(v_r)}, target probability {_fmt(float(r_row['target_prob']))}, "
            f"top-1 {100 * reference.top1:.1f} %; {teacher.name}'s variance is {_fmt(ratio)}x that."
        )
        mismatch = False  # calibrated (CALIBRATION): the variance comparison did not predict KD drops
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

    # ---- verdict and recommendation (calibrated: CALIBRATION, docs/diagnostics.md) -----------
    c = CALIBRATION
    measured = (
        f"in this toolkit's measured ladders KD from the larger teacher of a pair was worse in "
        f"{c['kd_worse']} of {c['pairs']} adjacent pairs"
    )
    if reference is not None and lower_var:
        verdict = (
            f"No capacity mismatch predicted, one warning sign: at T={_fmt(temp)} the wrong-class probabilities of "
            f"{teacher.name} are less spread out than those of the smaller {reference.name} ({_fmt(ratio)}x its "
            f"variance), the sign the capacity-mismatch papers describe; but a lower variance went with a worse KD "
            f"student in only {c['lower_variance_and_kd_worse']} of the {c['lower_variance']} measured pairs that "
            f"showed it, and {measured}. Prefer the more accurate teacher and confirm with a sweep."
        )
    elif reference is not None:
        verdict = (
            f"No capacity mismatch predicted: {teacher.name}'s wrong-class probabilities are at least as spread out "
            f"as the smaller {reference.name}'s at T={_fmt(temp)}, and {measured}."
        )
    elif overconfident:
        verdict = (
            f"No verdict: {teacher.name} is very confident (mean target probability {_fmt(py1)} at T={_fmt(t1)}), "
            f"which leaves little spread among its wrong classes at low temperature; no smaller teacher was given "
            f"to compare with ({measured})."
        )
    else:
        verdict = (
            f"No verdict: {teacher.name} is not over-confident (mean target probability {_fmt(py1)} at T={_fmt(t1)}); "
            f"give a smaller teacher for a comparison ({measured})."
        )

    method = "kd"
    params: dict[str, Any] = {"temperature": temp}
    recommendation = (
        f"Standard KD at T={_fmt(temp)}: no capacity-mismatch method beat it by more than the seed noise in the "
        f"measured capacity sweeps (the methods that did are the alternatives below)."
    )
    alternatives.append(
        "DIST or TTM/WTTM: 2.6 / 2.0 / 1.9 points above KD from the largest teacher of the capacity protocol "
        "(paired by seed, all 3 seeds; docs/results.md), the only methods that beat KD there by more than the noise."
    )
    if math.isfinite(tau_med):
        alternatives.append(
            f"ISATS (per-sample temperature tau*(x), median {_fmt(tau_med)} here, student at T=4): level with KD "
            f"from the measured protocol's largest teacher (8 seeds), 2 below it with converged teachers (docs/results.md); "
            f"the asymmetric setting (target at 2 tau*, student at T=1) lost 4 points."
        )
    if agree:
        alternatives.append(
            f"RCKD (T=4): the teachers agree on the non-target ranking (Spearman {_fmt(rho_ref)}), so a loss that "
            f"matches relative confidences keeps the knowledge shared across capacities without copying the "
            f"large teacher's over-confidence."
        )
    if math.isfinite(fidelity) and fidelity < LOW_FIDELITY_SPEARMAN:
        alternatives.append(
            f"Rank-based losses (RCKD, DIST): the student's rank fidelity to this teacher is low ({_fmt(fidelity)})."
        )
    if math.isfinite(coupling) and coupling < SMALL_COUPLING:
        alternatives.append(
            f"DKD: the mean coupling weight 1-p_t is {_fmt(coupling)}, so plain KD damps the non-target term; "
            f"DKD weights it separately (beta)."
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
