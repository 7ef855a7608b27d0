"""WTTM: weighted Transformed Teacher Matching (Zheng & Yang, ICLR 2024; authors' code:
github.com/zkxufo/TTM, ``distiller_zoo/wttm.py``).

TTM with a per-sample weight equal to the power sum of the transform,
U_i = sum_c p_t,c^gamma (p_t the *untempered* teacher softmax, gamma = 1/T), which is
larger for less confident teacher outputs (1 <= U <= C^(1 - gamma)):

    L = ce_weight * CE + kd_weight * mean_i [ U_i * KL(softmax(z_i / T) || softmax(v_i)) ]

U is computed in log space, log U = logsumexp_c(gamma * log p_t,c), and detached (it
weights samples; in the authors' code the teacher carries no gradient anyway).

Defaults: gamma = 0.3 (T = 1/0.3), beta (``kd_weight``) = 3: the WRN-40-2 ->
ShuffleNetV1 pair of the paper's Table 9. The homogeneous-pair WTTM betas of Table 8
could not be read reliably (likely gamma = 0.1 with beta ~ 2-4); see docs/methods.md.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import as_float
from darkknowledge.methods.ttm import TTM_DEFAULT_TEMPERATURE, ttm_terms


class WTTMParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    kd_weight: float = Field(3.0, ge=0, description="Weight beta of the U-weighted KL term (no T^2 factor).")
    temperature: float = Field(
        TTM_DEFAULT_TEMPERATURE, gt=0, description="Teacher temperature T = 1/gamma (gamma: power-transform exponent)."
    )


def wttm_weights(teacher_logits: Tensor, temperature: float) -> Tensor:
    """U_i = sum_c softmax(z_i)_c^(1/T), per row, computed as exp(logsumexp(log p / T))."""
    log_pt = F.log_softmax(as_float(teacher_logits), dim=-1)
    return (log_pt / temperature).logsumexp(-1).exp()


@param_defaults(WTTMParams)
def wttm_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
) -> dict[str, Tensor]:
    """WTTM as named, weighted terms ``{"ce", "kd"}`` (defaults: :class:`WTTMParams`)."""
    weights = wttm_weights(teacher_logits, temperature).detach()
    return ttm_terms(
        student_logits,
        teacher_logits,
        targets,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        temperature=temperature,
        sample_weights=weights,
    )


@register_method
class WTTM(DistillMethod):
    name = "wttm"
    summary = "Weighted TTM: TTM's KL weighted per sample by the teacher power sum sum_c p_t^gamma (Zheng & Yang 2024)."
    Params = WTTMParams
    loss_fn = staticmethod(wttm_loss)
