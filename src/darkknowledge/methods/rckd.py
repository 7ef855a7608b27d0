"""RCKD: "Rethinking the Dark Knowledge and KL Divergence Loss in Knowledge Distillation
Under Capacity Mismatching" (Wang, Niu, Yao, You, Fei; AAAI 2026; authors' code:
github.com/saberdante/RCKD, ``mdistiller/distillers/RCKD.py``).

Relative confidence matrix of a sample: R_jk = l_j - l_k with l = log softmax(z / T).
r = the strict upper triangle of R flattened (C(C-1)/2 entries), and

    L_RCKD = T^2 * (1 - mean_i cos(r_s,i, r_t,i)),   L = ce_weight * CE + kd_weight * L_RCKD

Since l_j - l_k = (z_j - z_k) / T and sum_{j<k} (a_j - a_k)(b_j - b_k) =
C * sum_j (a_j - mean a)(b_j - mean b), the cosine equals the **Pearson correlation of
the raw logits** (T cancels inside it; it only scales the weight: 5 * 16 = 80 with the
defaults). We compute it that way, in O(C) per sample instead of O(C^2); rows of
constant logits (zero variance) give a correlation of 0 via the cosine's eps guard.

Defaults (authors' ``configs/cifar100/RCKD/res32x4_res8x4.yaml``): T = 4,
ce_weight = 1, kd_weight = 5.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import as_float, check_logits, pearson_correlation, weighted_cross_entropy


class RCKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    kd_weight: float = Field(5.0, ge=0, description="Weight of the T^2-scaled relative-confidence cosine loss.")
    temperature: float = Field(
        4.0, gt=0, description="Temperature T; cancels inside the cosine, so it only scales the loss by T^2."
    )
    eps: float = Field(1e-8, gt=0, description="Guard of the cosine for zero-variance logit rows.")


@param_defaults(RCKDParams)
def rckd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    eps: float,
) -> dict[str, Tensor]:
    """RCKD as named, weighted terms ``{"ce", "kd"}`` (O(C) Pearson form; defaults: :class:`RCKDParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    v = as_float(student_logits)
    corr = pearson_correlation(v, as_float(teacher_logits), eps=eps, dim=-1)
    return {"ce": weighted_cross_entropy(v, targets, ce_weight), "kd": kd_weight * temperature**2 * (1.0 - corr.mean())}


@register_method
class RCKD(DistillMethod):
    name = "rckd"
    summary = "Relative-confidence KD: cosine of pairwise log-prob differences = Pearson of logits (Wang et al. 2026)."
    Params = RCKDParams
    loss_fn = staticmethod(rckd_loss)
