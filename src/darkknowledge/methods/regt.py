"""RegT: a regularised teacher (our reconstruction; arXiv 2405.13078 names the idea, the
definition could not be read and no code exists).

Trains a model (a teacher; no teacher signal needed) with cross-entropy plus pluggable
regularisers that keep its non-target probabilities distinct, each switched on by a
positive weight:

* non-target spread (default on): with p_hat = the non-target distribution at temperature
  T (softmax(z/T) without the label, renormalised; n = C - 1 entries),

      spread = Var(p_hat) / max Var = (n * sum_c p_hat_c^2 - 1) / (n - 1)  in [0, 1]

  (0: uniform non-target probabilities, 1: all mass on one wrong class); the loss adds
  ``-variance_weight * mean spread``. sum p_hat^2 = exp(logsumexp(2 log p_hat)) is taken
  in log space; for C = 2 (one non-target class) the term is exactly 0;
* confidence penalty (Pereyra et al., ICLR 2017 workshop): ``-confidence_weight * H(p)``
  with H the entropy of the untempered prediction;
* label smoothing of the CE target: offered only as a contrast, it is known to erase the
  relative non-target information this method wants to keep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import as_float, masked_log_softmax, target_mask


class RegTParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term on ground-truth labels.")
    variance_weight: float = Field(
        0.5,
        ge=0,
        description="Weight of the reward for spread (normalised variance, in [0, 1]) of the "
        "renormalised non-target probabilities (0 = off).",
    )
    variance_temperature: float = Field(
        1.0,
        gt=0,
        description="Softmax temperature at which the non-target distribution is taken for the spread reward.",
    )
    confidence_weight: float = Field(
        0.0,
        ge=0,
        description="Weight beta of the confidence penalty -beta * entropy(softmax(z)) (Pereyra et al. 2017; 0 = off).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Label smoothing of the CE target: a contrast only, it erases relative "
        "non-target information (0 = off).",
    )


def nontarget_spread(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-row normalised variance of the renormalised non-target distribution at
    ``temperature``, in [0, 1] (0 for C = 2). Differentiable, log space, float32."""
    z = as_float(logits) / temperature
    n = z.shape[-1] - 1
    if n < 2:
        return z.sum(-1) * 0.0  # one non-target class: no spread; keeps the graph, zero gradient
    keep = ~target_mask(targets, z.shape[-1])
    log_hat = masked_log_softmax(z, keep)
    log_sq = (2.0 * log_hat).masked_fill(~keep, float("-inf")).logsumexp(-1)  # log sum p_hat^2
    return (n * log_sq.exp() - 1.0) / (n - 1)


def prediction_entropy(logits: Tensor) -> Tensor:
    """Per-row entropy of softmax(logits) (finite for extreme logits: 0 * log 0 terms are 0)."""
    log_p = F.log_softmax(as_float(logits), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


@param_defaults(RegTParams)
def regt_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    variance_weight: float,
    variance_temperature: float,
    confidence_weight: float,
    label_smoothing: float,
) -> dict[str, Tensor]:
    """``{"ce", "spread", "confidence"}`` (weighted; the two regularisers are <= 0 rewards,
    present only when their weight is positive). Defaults: :class:`RegTParams`."""
    if logits.dim() != 2 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"logits must be (batch, classes) with one target per row, got {tuple(logits.shape)}")
    terms = {"ce": ce_weight * F.cross_entropy(as_float(logits), targets, label_smoothing=label_smoothing)}
    if variance_weight > 0:
        terms["spread"] = -variance_weight * nontarget_spread(logits, targets, variance_temperature).mean()
    if confidence_weight > 0:
        terms["confidence"] = -confidence_weight * prediction_entropy(logits).mean()
    return terms


@register_method
class RegT(DistillMethod):
    name = "regt"
    summary = (
        "Regularised teacher (reconstruction): CE + reward for spread of the non-target probabilities "
        "and/or a confidence penalty; trains without a teacher."
    )
    Params = RegTParams
    needs_teacher = False
    loss_fn = staticmethod(regt_loss)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, ctx) -> dict[str, Tensor]:
        terms = super().forward(student_logits, teacher_logits, targets, ctx)
        with torch.no_grad():  # the spread at T = 1, whatever the weights (a diagnostic)
            self.record("nontarget_spread", nontarget_spread(student_logits.detach(), targets))
        return terms
