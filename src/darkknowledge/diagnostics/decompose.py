"""Teacher-student loss decompositions, per batch and accumulated (no T^2 factor).

Three exact identities, each term computed separately so that the sum can be checked
against the full loss:

**ATS** (Li et al., NeurIPS 2022; ``methods.md`` §2.4): with teacher soft label q (the
ATS softmax, target at ``target_temperature`` tau1, others at tau2 = ``temperature``),
student p = softmax(v / tau_s), n = C - 1 and e(q) = (1 - q_y) / n,

    -sum_c q_c log p_c =  -q_y log p_y                          (correct guidance)
                        + -e(q) sum_{c != y} log p_c             (smoothing)
                        + -sum_{c != y} (q_c - e(q)) log p_c     (class discriminability)

**DKD** (Zhao et al., CVPR 2022; §6.2): with p = softmax(z / T) for both models, b =
(p_t, 1 - p_t) and p̂ the renormalised non-target distribution,

    KL(p^T || p^S) = TCKD + (1 - p_t^T) * NCKD,   TCKD = KL(b^T || b^S), NCKD = KL(p̂^T || p̂^S).

**AID** (Qian, Le, Harandi, ICCV 2025; §5, the decomposition is a *reconstruction*):
for a batch of B samples, J(i, c) = P_ic / B, class marginal pi(c) = mean_i P_ic and
within-class distribution Q(i | c) = P_ic / sum_j P_jc. By the chain rule of KL

    mean_i KL(P_t,i || P_s,i) = KL(pi_t || pi_s) + sum_c pi_t(c) KL(Q_t(.|c) || Q_s(.|c))
                                (inter-class)      (intra-class)

The AID split depends on the batch: the accumulator cuts the stream into consecutive
batches of ``aid_batch_size`` rows (independent of how the stream is chunked) and
averages the per-batch terms weighted by batch size, so they still add up to the
dataset-mean KD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from darkknowledge.diagnostics._common import jsonable, to_tensor
from darkknowledge.nontarget import split_nontarget

__all__ = [
    "ats_decomposition",
    "dkd_decomposition",
    "aid_decomposition",
    "Decomposition",
    "DecompositionAccumulator",
]


def _kl_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Element-wise p (log p - log q), with 0 where p = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def _check(student: Tensor, teacher: Tensor, targets: Tensor | None = None) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} logits must both be (B, C)"
        )
    if targets is not None and targets.reshape(-1).shape[0] != student.shape[0]:
        raise ValueError(f"{targets.numel()} targets for {student.shape[0]} rows")


def ats_decomposition(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 4.0,
    *,
    student_temperature: float | None = None,
    target_temperature: float | None = None,
) -> dict[str, Tensor]:
    """Per-sample ATS terms ``correct_guidance``, ``smoothing``, ``discriminability`` and
    their sum ``soft_ce`` (all (B,), float64). ``student_temperature`` defaults to
    ``temperature``; ``target_temperature`` (tau1) to ``temperature`` (plain TS)."""
    v = to_tensor(student_logits).to(torch.float64)
    z = to_tensor(teacher_logits).to(torch.float64)
    y = to_tensor(targets).long().reshape(-1).to(z.device)
    _check(v, z, y)
    tau2 = float(temperature)
    tau1 = tau2 if target_temperature is None else float(target_temperature)
    tau_s = tau2 if student_temperature is None else float(student_temperature)
    scaled = z / tau2
    scaled = scaled.scatter(1, y.unsqueeze(1), z.gather(1, y.unsqueeze(1)) / tau1)
    log_q = F.log_softmax(scaled, dim=1)
    log_p = F.log_softmax(v / tau_s, dim=1)
    q = log_q.exp()
    q_nt, q_y = split_nontarget(q, y)
    lp_nt, lp_y = split_nontarget(log_p, y)
    e = q_nt.mean(1)  # = (1 - q_y) / (C - 1), without cancellation when q_y ~ 1
    correct = -q_y * lp_y
    smoothing = -e * lp_nt.sum(1)
    discrim = -((q_nt - e.unsqueeze(1)) * lp_nt).sum(1)
    total = -(q * log_p).sum(1)
    return {"correct_guidance": correct, "smoothing": smoothing, "discriminability": discrim, "soft_ce": total}


def _binary_logs(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log p_t, log (1 - p_t), log p̂ over non-target classes) from scaled logits."""
    x_nt, x_y = split_nontarget(x, y)
    lse_nt = torch.logsumexp(x_nt, dim=1)
    lse = torch.logaddexp(x_y, lse_nt)
    return x_y - lse, lse_nt - lse, x_nt - lse_nt.unsqueeze(1)


def dkd_decomposition(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float = 4.0
) -> dict[str, Tensor]:
    """Per-sample DKD terms (float64): ``tckd``, ``nckd``, the coupling ``weight`` =
    1 - p_t^T, ``weighted_nckd`` = weight * nckd, and ``kd`` = KL(p^T || p^S) =
    tckd + weighted_nckd."""
    v = to_tensor(student_logits).to(torch.float64)
    z = to_tensor(teacher_logits).to(torch.float64)
    y = to_tensor(targets).long().reshape(-1).to(z.device)
    _check(v, z, y)
    t = float(temperature)
    lt_y, lt_n, lt_hat = _binary_logs(z / t, y)
    ls_y, ls_n, ls_hat = _binary_logs(v / t, y)
    tckd = _kl_terms(lt_y, ls_y) + _kl_terms(lt_n, ls_n)
    nckd = _kl_terms(lt_hat, ls_hat).sum(1)
    weight = lt_n.exp()
    log_pt = F.log_softmax(z / t, dim=1)
    log_ps = F.log_softmax(v / t, dim=1)
    kd = _kl_terms(log_pt, log_ps).sum(1)
    return {"tckd": tckd, "nckd": nckd, "weight": weight, "weighted_nckd": weight * nckd, "kd": kd}


def aid_decomposition(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> dict[str, Tensor]:
    """AID inter-/intra-class split of one batch's mean KD (0-d float64 tensors
    ``inter``, ``intra`` and ``kd`` = batch-mean KL(p^T || p^S) = inter + intra)."""
    v = to_tensor(student_logits).to(torch.float64)
    z = to_tensor(teacher_logits).to(torch.float64)
    _check(v, z)
    t = float(temperature)
    b = z.shape[0]
    log_pt = F.log_softmax(z / t, dim=1)
    log_ps = F.log_softmax(v / t, dim=1)
    kd = _kl_terms(log_pt, log_ps).sum(1).mean()
    # class marginals pi(c) = mean_i P_ic and within-class Q(i|c) = P_ic / (B pi(c))
    log_pi_t = torch.logsumexp(log_pt, dim=0) - torch.log(torch.tensor(float(b), dtype=torch.float64))
    log_pi_s = torch.logsumexp(log_ps, dim=0) - torch.log(torch.tensor(float(b), dtype=torch.float64))
    inter = _kl_terms(log_pi_t, log_pi_s).sum()
    log_qt = log_pt - torch.logsumexp(log_pt, dim=0, keepdim=True)
    log_qs = log_ps - torch.logsumexp(log_ps, dim=0, keepdim=True)
    intra = (log_pi_t.exp() * _kl_terms(log_qt, log_qs).sum(0)).sum()
    return {"inter": inter, "intra": intra, "kd": kd}


@dataclass
class Decomposition:
    """Dataset means of the decomposition terms for one (teacher, student) pair."""

    teacher: str
    student: str
    temperature: float
    student_temperature: float
    num_samples: int
    ats: dict[str, float] = field(default_factory=dict)
    dkd: dict[str, float] = field(default_factory=dict)
    aid: dict[str, float] = field(default_factory=dict)
    aid_batch_size: int = 128

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


class DecompositionAccumulator:
    """Streaming means of the ATS, DKD and AID terms for one (teacher, student) pair."""

    def __init__(
        self,
        teacher: str = "teacher",
        student: str = "student",
        *,
        temperature: float = 4.0,
        student_temperature: float | None = None,
        aid_batch_size: int = 128,
    ):
        self.teacher, self.student = teacher, student
        self.temperature = float(temperature)
        self.student_temperature = self.temperature if student_temperature is None else float(student_temperature)
        self.aid_batch_size = int(aid_batch_size)
        if self.aid_batch_size < 1:
            raise ValueError("aid_batch_size must be >= 1")
        self.n = 0
        self._ats = {k: 0.0 for k in ("correct_guidance", "smoothing", "discriminability", "soft_ce")}
        self._dkd = {k: 0.0 for k in ("tckd", "nckd", "weight", "weighted_nckd", "kd")}
        self._aid = {k: 0.0 for k in ("inter", "intra", "kd")}
        self._aid_rows = 0
        self._carry: tuple[Tensor, Tensor] | None = None

    def _aid_batch(self, v: Tensor, z: Tensor, into: dict[str, float]) -> int:
        d = aid_decomposition(v, z, self.temperature)
        b = v.shape[0]
        for k, val in d.items():
            into[k] += float(val) * b
        return b

    @torch.no_grad()
    def update(self, student_logits: Any, teacher_logits: Any, targets: Any) -> None:
        v = to_tensor(student_logits).to(torch.float64)
        z = to_tensor(teacher_logits).to(torch.float64)
        y = to_tensor(targets).long().reshape(-1).to(z.device)
        _check(v, z, y)
        if v.shape[0] == 0:
            return
        self.n += v.shape[0]
        ats = ats_decomposition(v, z, y, self.temperature, student_temperature=self.student_temperature)
        for k, val in ats.items():
            self._ats[k] += float(val.sum())
        dkd = dkd_decomposition(v, z, y, self.temperature)
        for k, val in dkd.items():
            self._dkd[k] += float(val.sum())
        if self._carry is not None:
            v = torch.cat([self._carry[0], v])
            z = torch.cat([self._carry[1], z])
            self._carry = None
        bs = self.aid_batch_size
        full = (v.shape[0] // bs) * bs
        for start in range(0, full, bs):
            self._aid_rows += self._aid_batch(v[start : start + bs], z[start : start + bs], self._aid)
        if full < v.shape[0]:
            self._carry = (v[full:].clone(), z[full:].clone())

    def result(self) -> Decomposition:
        if self.n == 0:
            raise ValueError(f"{self.teacher}->{self.student}: no samples were given to the decomposition accumulator")
        aid = dict(self._aid)
        rows = self._aid_rows
        if self._carry is not None:  # the last, partial batch (not consumed: result() is repeatable)
            rows += self._aid_batch(self._carry[0], self._carry[1], aid)
        return Decomposition(
            teacher=self.teacher,
            student=self.student,
            temperature=self.temperature,
            student_temperature=self.student_temperature,
            num_samples=self.n,
            ats={k: s / self.n for k, s in self._ats.items()},
            dkd={k: s / self.n for k, s in self._dkd.items()},
            aid={k: s / rows for k, s in aid.items()},
            aid_batch_size=self.aid_batch_size,
        )
