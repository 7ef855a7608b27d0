"""TTM: Transformed Teacher Matching (Zheng & Yang, "Knowledge Distillation Based on
Transformed Teacher Matching", ICLR 2024; authors' code: github.com/zkxufo/TTM,
``distiller_zoo/ttm.py``).

The teacher's probabilities are power-transformed, p_t^(gamma) = p_t^gamma / sum_c
p_t,c^gamma with gamma = 1 / T, which is exactly softmax(z / T); the student is **not**
tempered and there is **no T^2** factor:

    L = ce_weight * CE + kd_weight * KL(softmax(z / T) || softmax(v))

(the paper shows this is KD plus a Renyi-entropy regulariser of order 1/T on the
student). We expose T = 1 / gamma as ``temperature``. Defaults: the resnet56 ->
resnet20 pair of the paper's Table 8, gamma = 0.3 (T = 1/0.3 = 3.33), beta
(``kd_weight``) = 7; per-pair values are listed in docs/methods.md. The loss is zero
when softmax(v) equals the *tempered* teacher softmax, i.e. v = z / T + const.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import as_float, check_logits, kl_from_log_probs, weighted_cross_entropy

TTM_DEFAULT_TEMPERATURE = 1.0 / 0.3


class TTMParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    kd_weight: float = Field(7.0, ge=0, description="Weight beta of the KL term (no T^2 factor).")
    temperature: float = Field(
        TTM_DEFAULT_TEMPERATURE, gt=0, description="Teacher temperature T = 1/gamma (gamma: power-transform exponent)."
    )


def ttm_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-row KL(softmax(z/T) || softmax(v)): tempered teacher, untempered student."""
    log_q = F.log_softmax(as_float(student_logits), dim=-1)
    log_pt_gamma = F.log_softmax(as_float(teacher_logits) / temperature, dim=-1)
    return kl_from_log_probs(log_pt_gamma, log_q)


def ttm_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    sample_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """``{"ce", "kd"}`` of TTM, the KL optionally weighted per sample (WTTM)."""
    check_logits(student_logits, teacher_logits, targets)
    kl = ttm_kl(student_logits, teacher_logits, temperature)
    if sample_weights is not None:
        kl = sample_weights * kl
    return {"ce": weighted_cross_entropy(student_logits, targets, ce_weight), "kd": kd_weight * kl.mean()}


@param_defaults(TTMParams)
def ttm_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
) -> dict[str, Tensor]:
    """TTM as named, weighted terms ``{"ce", "kd"}`` (defaults: :class:`TTMParams`)."""
    return ttm_terms(
        student_logits, teacher_logits, targets, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature
    )


@register_method
class TTM(DistillMethod):
    name = "ttm"
    summary = "Transformed teacher matching: KL(softmax(z_t/T) || softmax(z_s)), untempered student, no T^2 (Zheng & Yang 2024)."
    Params = TTMParams
    loss_fn = staticmethod(ttm_loss)
