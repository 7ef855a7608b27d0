"""LS-KD: Logit Standardization in Knowledge Distillation (Sun, Ren, Li, Wang, Cao;
CVPR 2024; authors' code: github.com/sunshangquan/logit-standardization-KD).

Not a separate loss: Hinton KD on z-scored logits, Z(z) = (z - mean z) / (std z + 1e-7)
(unbiased std, as in the authors' code), with CE on the raw student logits. This
module registers the convenience method ``lskd`` = ``kd`` with
``logit_standardization=True`` and the authors' flags ``--logit-stand --base-temp 2
--kd-weight 9``: T = 2, kd_weight = 9, ce_weight = 0.1. The same flag exists on
``kd``, ``dkd`` and ``isats``.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.kd import kd_loss


class LSKDParams(MethodParams):
    ce_weight: float = Field(0.1, ge=0, description="Weight of the cross-entropy term (on raw student logits).")
    kd_weight: float = Field(9.0, ge=0, description="Weight of the T^2-scaled KL term on z-scored logits.")
    temperature: float = Field(2.0, gt=0, description="Base temperature applied to the z-scored logits.")


@param_defaults(LSKDParams)
def lskd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
) -> dict[str, Tensor]:
    """KD on z-scored logits: ``kd_loss(..., logit_standardization=True)`` with LS-KD defaults."""
    return kd_loss(
        student_logits,
        teacher_logits,
        targets,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        temperature=temperature,
        logit_standardization=True,
    )


@register_method
class LSKD(DistillMethod):
    name = "lskd"
    summary = "KD on z-scored logits (logit standardization, Sun et al. 2024): T=2, kd_weight 9, ce_weight 0.1."
    Params = LSKDParams
    loss_fn = staticmethod(lskd_loss)
