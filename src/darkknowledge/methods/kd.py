"""Hinton KD (Hinton, Vinyals & Dean 2015).

    L = ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))

KL summed over classes, averaged over the batch. CIFAR-100 defaults (CRD/mdistiller):
T = 4, ce_weight = 0.1, kd_weight = 0.9. With ``logit_standardization`` both logit
vectors are z-scored first (LS-KD, Sun et al. CVPR 2024; use T = 2, kd_weight = 9).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import (
    check_logits,
    standardize_logits,
    tempered_kl,
    weighted_cross_entropy,
)
from darkknowledge.methods.topk import TopKRows, topk_tempered_kl


class KDParams(MethodParams):
    ce_weight: float = Field(0.1, ge=0, description="Weight of the cross-entropy term on ground-truth labels.")
    kd_weight: float = Field(0.9, ge=0, description="Weight of the T^2-scaled KL distillation term.")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature T applied to teacher and student logits.")
    logit_standardization: bool = Field(
        False, description="Z-score teacher and student logits before the temperature softmax (LS-KD)."
    )


@param_defaults(KDParams)
def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float | Tensor,
    logit_standardization: bool,
) -> dict[str, Tensor]:
    """Hinton KD as named, weighted terms ``{"ce", "kd"}`` (defaults: :class:`KDParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    ce = weighted_cross_entropy(student_logits, targets, ce_weight)  # on the logits as they are
    if logit_standardization:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    kl = tempered_kl(student_logits, teacher_logits, temperature).mean()
    return {"ce": ce, "kd": kd_weight * temperature**2 * kl}


@param_defaults(KDParams)
def kd_topk_loss(
    student_logits: Tensor,
    teacher: TopKRows,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float | Tensor,
    logit_standardization: bool,
) -> dict[str, Tensor] | None:
    """:func:`kd_loss` against a top-k teacher with a uniform tail, without its full rows (None
    with ``logit_standardization``, which needs them, or a learnable temperature)."""
    if logit_standardization or isinstance(temperature, Tensor):
        return None
    ce = weighted_cross_entropy(student_logits, targets, ce_weight)
    kl = topk_tempered_kl(student_logits, teacher, temperature).mean()
    return {"ce": ce, "kd": kd_weight * temperature**2 * kl}


@register_method
class KD(DistillMethod):
    name = "kd"
    summary = "Hinton KD: CE + T^2 * KL(teacher || student) at temperature T."
    Params = KDParams
    loss_fn = staticmethod(kd_loss)
    topk_loss_fn = staticmethod(kd_topk_loss)
