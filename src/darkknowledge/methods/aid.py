"""AID teacher adaptation (Qian, Le & Harandi, "A Good Teacher Adapts Their Knowledge for
Distillation", ICCV 2025): our reconstruction (no public code; the paper's equations and
hyperparameters could not be read).

The model being trained is the **teacher** (start it from its checkpoint with
``model.init=teacher.pt``); the "teacher signal" given to the method is the frozen,
pre-trained **student** (``teacher.checkpoint=student.pt``). With v the logits of the
teacher being adapted, s the student's logits, y the label and T the temperature:

    L = ce_weight * CE(v, y) + kd_weight * T^2 * D(s || v)

where ``part`` chooses D:

* ``nontarget`` (default): KL between the renormalised non-target distributions
  softmax(./T) without the label (DKD's NCKD with the roles swapped); 0 for C = 2;
* ``intra_class``: the within-class part of the batch KD (the chain rule
  KD = KL(pi_s || pi_v) + sum_c pi_s(c) KL(Q_s(.|c) || Q_v(.|c)) with P the (B, C)
  tempered softmax, pi(c) = mean_i P_ic and Q(i|c) = P_ic / sum_j P_jc, the relative
  difficulty of the batch's samples for class c); depends on the batch composition;
* ``full``: plain KD, KL(softmax(s/T) || softmax(v/T)) (the paper reportedly fine-tunes
  with the standard KD loss only).

The teacher's own CE keeps its accuracy; the module records the per-sample KL between
student and teacher at T = 1 (``kl_to_signal``), so the adaptation can be followed per epoch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import (
    DistillMethod,
    MethodParams,
    param_defaults,
    register_method,
    require_teacher_logits,
)
from darkknowledge.methods.functional import (
    as_float,
    check_logits,
    masked_kl,
    masked_log_softmax,
    target_mask,
    tempered_kl,
    weighted_cross_entropy,
)

AIDPart = Literal["nontarget", "intra_class", "full"]


class AIDParams(MethodParams):
    ce_weight: float = Field(
        1.0, ge=0, description="Weight of the adapted teacher's own cross-entropy (keeps its accuracy)."
    )
    kd_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the T^2-scaled term pulling the teacher towards the student (moderate by default).",
    )
    temperature: float = Field(
        4.0, gt=0, description="Softmax temperature T of teacher and student in the pulling term."
    )
    part: AIDPart = Field(
        "nontarget",
        description="What is matched: 'nontarget' (renormalised non-target distribution), "
        "'intra_class' (within-class distribution over the batch) or 'full' (plain KD).",
    )


def nontarget_kl(model_logits: Tensor, signal_logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Per-row KL(p_hat_signal || p_hat_model) of the renormalised non-target distributions at T."""
    keep = ~target_mask(targets, model_logits.shape[-1])
    log_model = masked_log_softmax(as_float(model_logits) / temperature, keep)
    log_signal = masked_log_softmax(as_float(signal_logits) / temperature, keep)
    return masked_kl(log_signal, log_model, keep)


def intra_class_kl(model_logits: Tensor, signal_logits: Tensor, temperature: float) -> Tensor:
    """sum_c pi_signal(c) * KL(Q_signal(.|c) || Q_model(.|c)) over the batch (a scalar)."""
    log_p_model = F.log_softmax(as_float(model_logits) / temperature, dim=-1)
    log_p_signal = F.log_softmax(as_float(signal_logits) / temperature, dim=-1)
    log_q_model = log_p_model - log_p_model.logsumexp(0, keepdim=True)  # Q(i|c), columns sum to 1
    log_q_signal = log_p_signal - log_p_signal.logsumexp(0, keepdim=True)
    pi_signal = log_p_signal.exp().mean(0)  # class marginal (C,)
    q_signal = log_q_signal.exp()
    per_class = torch.where(q_signal > 0, q_signal * (log_q_signal - log_q_model), torch.zeros_like(q_signal)).sum(0)
    return (pi_signal * per_class).sum()


@param_defaults(AIDParams)
def aid_loss(
    model_logits: Tensor,
    signal_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    part: AIDPart,
) -> dict[str, Tensor]:
    """``{"ce", "kd"}`` for adapting a teacher (``model_logits``) towards a frozen student
    (``signal_logits``). Defaults: :class:`AIDParams`."""
    check_logits(model_logits, signal_logits, targets)
    if part == "nontarget":
        distance = nontarget_kl(model_logits, signal_logits, targets, temperature).mean()
    elif part == "intra_class":
        distance = intra_class_kl(model_logits, signal_logits, temperature)
    elif part == "full":
        distance = tempered_kl(model_logits, signal_logits, temperature).mean()
    else:
        raise ValueError(f"unknown part {part!r}: use 'nontarget', 'intra_class' or 'full'")
    return {"ce": weighted_cross_entropy(model_logits, targets, ce_weight), "kd": kd_weight * temperature**2 * distance}


@register_method
class AID(DistillMethod):
    name = "aid"
    summary = (
        "AID teacher adaptation (reconstruction): fine-tune the teacher (model.init) towards a pre-trained "
        "student given as teacher.checkpoint, keeping its CE."
    )
    Params = AIDParams
    loss_fn = staticmethod(aid_loss)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, ctx) -> dict[str, Tensor]:
        terms = super().forward(student_logits, teacher_logits, targets, ctx)
        with torch.no_grad():  # KL(student || teacher being adapted) at T = 1, per sample
            self.record(
                "kl_to_signal",
                tempered_kl(student_logits.detach(), require_teacher_logits(teacher_logits, self.name), 1.0),
            )
        return terms
