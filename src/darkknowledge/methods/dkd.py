"""DKD: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang; CVPR 2022;
authors' code: github.com/megvii-research/mdistiller, ``mdistiller/distillers/DKD.py``).

With p = softmax(z / T) and y the ground-truth class:

* binary split b = [p_y, 1 - p_y];  TCKD = KL(b_t || b_s)
* non-target distribution p_hat_c = p_c / (1 - p_y), c != y;  NCKD = KL(p_hat_t || p_hat_s)
* identity: KD = TCKD + (1 - p_t,y) * NCKD  (DKD drops the coupling factor)

    L = ce_weight * CE + w(t) * T^2 * (tckd_weight * TCKD + nckd_weight * NCKD)

with the warm-up w(t) = min(t / warmup_epochs, 1), t = epoch + step / steps_per_epoch
(0-indexed, a per-step ramp; mdistiller uses min(epoch / 20, 1) per epoch with
1-indexed epochs, i.e. w = 1/20 in the first epoch). Defaults (mdistiller CIFAR-100):
T = 4, ce_weight = 1, tckd_weight (alpha) = 1, nckd_weight (beta) = 8, 20 warm-up
epochs; beta is 2 for resnet56->resnet20 and resnet110->resnet32, 6 for
WRN-40-2->WRN-16-2/WRN-40-1 and VGG13->VGG8/MobileNetV2 (docs/methods.md).

Everything is computed in log space: the non-target log-probabilities are a
``log_softmax`` over the non-target logits only (target masked out), and the binary
log-probabilities are [log p_y, logsumexp_{c != y} log p_c]: never the log of a
subtracted probability. For C = 2 there is one non-target class, so NCKD is exactly 0.

``logit_standardization`` z-scores both logit vectors first (LS-KD); the authors of
LS-KD then use T = 2 and multiply tckd/nckd weights by 9. Those are *not* applied
automatically: set them explicitly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, StepContext, param_defaults, register_method
from darkknowledge.methods.functional import (
    as_float,
    check_logits,
    kl_from_log_probs,
    masked_kl,
    masked_log_softmax,
    standardize_logits,
    target_mask,
    weighted_cross_entropy,
)


class DKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    tckd_weight: float = Field(1.0, ge=0, description="Weight of the target-class term TCKD (alpha in the paper).")
    nckd_weight: float = Field(
        8.0, ge=0, description="Weight of the non-target term NCKD (beta in the paper; 8, 6 or 2 by pair)."
    )
    temperature: float = Field(4.0, gt=0, description="Softmax temperature T of teacher and student.")
    warmup_epochs: float = Field(
        20.0, ge=0, description="Linear warm-up of the distillation terms over this many epochs (0 = none)."
    )
    logit_standardization: bool = Field(
        False, description="Z-score teacher and student logits before the temperature softmax (LS-KD)."
    )


def _binary_and_nontarget(logits: Tensor, mask: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(log b (B, 2), log p_hat (B, C; target entry a finite placeholder), log p (B, C))."""
    z = as_float(logits) / temperature
    log_p = F.log_softmax(z, dim=-1)
    log_target = log_p.masked_fill(~mask, float("-inf")).amax(-1)  # = log p_y (one kept entry)
    log_rest = log_p.masked_fill(mask, float("-inf")).logsumexp(-1)
    log_b = torch.stack([log_target, log_rest], dim=-1)
    log_hat = masked_log_softmax(z, ~mask)
    return log_b, log_hat, log_p


@param_defaults(DKDParams, subset=True)
def dkd_components(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float,
) -> dict[str, Tensor]:
    """Per-sample ``{"tckd", "nckd", "teacher_target_prob"}`` (each ``(B,)``, no T^2).

    ``teacher_target_prob`` is p_t,y at temperature T, so that per sample
    KL(p_t || p_s) = tckd + (1 - teacher_target_prob) * nckd.
    """
    check_logits(student_logits, teacher_logits, targets)
    mask = target_mask(targets, student_logits.shape[-1])
    log_b_s, log_hat_s, _ = _binary_and_nontarget(student_logits, mask, temperature)
    log_b_t, log_hat_t, _ = _binary_and_nontarget(teacher_logits, mask, temperature)
    tckd = kl_from_log_probs(log_b_t, log_b_s)
    nckd = masked_kl(log_hat_t, log_hat_s, ~mask)
    return {"tckd": tckd, "nckd": nckd, "teacher_target_prob": log_b_t[:, 0].exp()}


def dkd_warmup(epoch: int, step_in_epoch: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """min(progress / warmup_epochs, 1), progress = epoch + step_in_epoch / steps_per_epoch."""
    if warmup_epochs <= 0:
        return 1.0
    progress = epoch + step_in_epoch / max(steps_per_epoch, 1)
    return min(progress / warmup_epochs, 1.0)


@param_defaults(DKDParams, exclude=("warmup_epochs",))
def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    tckd_weight: float,
    nckd_weight: float,
    temperature: float,
    logit_standardization: bool,
    warmup_factor: float = 1.0,
) -> dict[str, Tensor]:
    """DKD as named, weighted terms ``{"ce", "tckd", "nckd"}``; ``warmup_factor`` (in
    [0, 1]) scales the two distillation terms (see :func:`dkd_warmup`)."""
    check_logits(student_logits, teacher_logits, targets)
    ce = weighted_cross_entropy(student_logits, targets, ce_weight)  # on the logits as they are
    if logit_standardization:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    parts = dkd_components(student_logits, teacher_logits, targets, temperature=temperature)
    scale = warmup_factor * temperature**2
    return {
        "ce": ce,
        "tckd": scale * tckd_weight * parts["tckd"].mean(),
        "nckd": scale * nckd_weight * parts["nckd"].mean(),
    }


@register_method
class DKD(DistillMethod):
    name = "dkd"
    summary = "Decoupled KD: target (TCKD) and non-target (NCKD) terms weighted separately (Zhao et al. 2022)."
    Params = DKDParams
    params: DKDParams
    loss_fn = staticmethod(dkd_loss)

    def check_schedule(self, num_epochs: int) -> list[str]:
        warmup = self.params.warmup_epochs
        if warmup <= num_epochs:
            return []
        reached = num_epochs / warmup  # the ramp's value when training ends
        return [
            f"method dkd: warmup_epochs={warmup:g} exceeds the run's {num_epochs} epochs, so the "
            f"distillation terms never reach full weight (at most {reached:.0%}); "
            f"set method.warmup_epochs to at most {num_epochs}"
        ]

    def loss_kwargs(self, ctx: StepContext) -> dict[str, Any]:
        kwargs = self.params.model_dump()
        warmup_epochs = kwargs.pop("warmup_epochs")
        kwargs["warmup_factor"] = dkd_warmup(ctx.epoch, ctx.step_in_epoch, ctx.steps_per_epoch, warmup_epochs)
        return kwargs
