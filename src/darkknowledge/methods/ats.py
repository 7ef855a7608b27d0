"""ATS: Asymmetric Temperature Scaling (Li, Fan, Song, Li, Li, Shao, Zhan; NeurIPS 2022,
"Asymmetric Temperature Scaling Makes Larger Networks Teach Well Again",
arXiv 2210.04427; authors' code: github.com/lxcnju/ATS-LargeKD, ``distill.py``).

Teacher soft label with the ground-truth logit at temperature tau1 and every other
logit at tau2 (one softmax over all classes):

    q_c = exp(z_c / tau(c)) / sum_k exp(z_k / tau(k)),   tau(y) = tau1,  tau(c != y) = tau2

Student loss (authors' code; lambda -> our ``kd_weight``, 1 - lambda -> ``ce_weight``):

    L = ce_weight * CE(v, y) + kd_weight * tau_s^2 * ( -sum_c q_c log softmax(v / tau_s)_c )

The distillation term is the *soft cross-entropy*, as in the authors' code: it equals
KL(q || p_s) plus the teacher entropy H(q), a constant for the student, so the
gradients are those of KL but the logged ``kd`` value does not go to 0 when the student
matches q.

Defaults: tau1 = 4, tau2 = 2, tau_s = 1, ce/kd weights 0.5/0.5 (the authors' lambda =
0.5 and the MindSpore demo's ATS setting tau1 = 4, tau2 = 2).

The target class is the **ground-truth label** (not the teacher's argmax), and logits
are used raw. ATS is **not shift-invariant**: adding a constant to all teacher logits
changes q because target and non-target logits are divided by different temperatures.
``center_logits=True`` subtracts each row's mean teacher logit first (not in the paper).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import (
    as_float,
    asymmetric_log_softmax,
    check_logits,
    soft_cross_entropy,
    weighted_cross_entropy,
)


class ATSParams(MethodParams):
    ce_weight: float = Field(0.5, ge=0, description="Weight of the cross-entropy term (1 - lambda in the ATS code).")
    kd_weight: float = Field(
        0.5, ge=0, description="Weight of the tau_s^2-scaled soft cross-entropy term (lambda in the ATS code)."
    )
    target_temperature: float = Field(
        4.0, gt=0, description="Teacher temperature tau1 on the ground-truth logit (ATS uses tau1 > tau2)."
    )
    nontarget_temperature: float = Field(2.0, gt=0, description="Teacher temperature tau2 on every non-target logit.")
    student_temperature: float = Field(1.0, gt=0, description="Student softmax temperature tau_s (ATS: 1).")
    center_logits: bool = Field(
        False,
        description="Subtract each row's mean teacher logit before ATS (not in the paper; ATS is not shift-invariant).",
    )


@param_defaults(ATSParams, subset=True)
def ats_teacher_log_probs(
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    target_temperature: float | Tensor,
    nontarget_temperature: float | Tensor,
    center_logits: bool,
) -> Tensor:
    """log q of the ATS soft label; temperatures may be scalars or per-row ``(B,)`` tensors."""
    z = as_float(teacher_logits)
    if center_logits:
        z = z - z.mean(dim=-1, keepdim=True)
    return asymmetric_log_softmax(z, targets, target_temperature, nontarget_temperature)


def soft_label_terms(
    student_logits: Tensor,
    teacher_log_probs: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    student_temperature: float,
    kd_student_logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """``{"ce", "kd"}`` of the ATS student loss given the teacher's soft label (log q).

    CE uses ``student_logits``; the soft term uses ``kd_student_logits`` when given
    (e.g. the z-scored logits under logit standardisation), else ``student_logits``.
    """
    v = as_float(student_logits)
    v_kd = v if kd_student_logits is None else as_float(kd_student_logits)
    log_ps = F.log_softmax(v_kd / student_temperature, dim=-1)
    soft_ce = soft_cross_entropy(teacher_log_probs.exp(), log_ps).mean()
    return {"ce": weighted_cross_entropy(v, targets, ce_weight), "kd": kd_weight * student_temperature**2 * soft_ce}


@param_defaults(ATSParams)
def ats_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    target_temperature: float | Tensor,
    nontarget_temperature: float | Tensor,
    student_temperature: float,
    center_logits: bool,
) -> dict[str, Tensor]:
    """ATS as named, weighted terms ``{"ce", "kd"}`` (see the module docstring; defaults: :class:`ATSParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    log_q = ats_teacher_log_probs(
        teacher_logits,
        targets,
        target_temperature=target_temperature,
        nontarget_temperature=nontarget_temperature,
        center_logits=center_logits,
    )
    return soft_label_terms(
        student_logits,
        log_q,
        targets,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        student_temperature=student_temperature,
    )


@register_method
class ATS(DistillMethod):
    name = "ats"
    summary = "Asymmetric temperature scaling: teacher target logit at tau1, the others at tau2 (Li et al. 2022)."
    Params = ATSParams
    loss_fn = staticmethod(ats_loss)
