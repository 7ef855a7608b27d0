"""ESKD, early-stopped knowledge distillation (Cho & Hariharan, "On the Efficacy of
Knowledge Distillation", ICCV 2019), variant (b): Hinton KD until ``stop_epoch``, then
cross-entropy only.

    epoch <  stop_epoch:  L = ce_weight * CE + kd_weight * T^2 * KL(p_t^T || p_s^T)   (= kd_loss)
    epoch >= stop_epoch:  L = ce_weight_after_stop * CE,   kd term exactly 0

Epochs are 0-indexed, so ``stop_epoch = E`` distils during the first E epochs. Variant
(a), an early-stopped *teacher*, is a teacher checkpoint chosen by epoch, not a loss.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, StepContext, param_defaults, register_method
from darkknowledge.methods.functional import as_float, check_logits
from darkknowledge.methods.kd import KDParams, kd_loss


class ESKDParams(KDParams):
    stop_epoch: int = Field(
        60,
        ge=0,
        description="Distil during the first stop_epoch epochs (0-indexed epochs < stop_epoch), CE only afterwards.",
    )
    ce_weight_after_stop: float = Field(
        1.0, ge=0, description="Weight of the cross-entropy term once distillation has stopped (1 = plain CE training)."
    )


@param_defaults(ESKDParams)
def eskd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    logit_standardization: bool,
    stop_epoch: int,
    ce_weight_after_stop: float,
    epoch: int = 0,
) -> dict[str, Tensor]:
    """``{"ce", "kd"}``: :func:`kd_loss` while ``epoch < stop_epoch``; afterwards
    ``ce_weight_after_stop * CE`` and a constant 0 for ``kd`` (the teacher logits are not
    used, no gradient flows through them). Defaults: :class:`ESKDParams`."""
    if epoch < stop_epoch:
        return kd_loss(
            student_logits,
            teacher_logits,
            targets,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            temperature=temperature,
            logit_standardization=logit_standardization,
        )
    check_logits(student_logits, teacher_logits, targets)
    ce = F.cross_entropy(as_float(student_logits), targets)
    return {"ce": ce_weight_after_stop * ce, "kd": ce.new_zeros(())}


@register_method
class ESKD(DistillMethod):
    name = "eskd"
    summary = "Early-stopped KD (Cho & Hariharan 2019, variant b): KD until stop_epoch, CE only afterwards."
    Params = ESKDParams
    params: ESKDParams
    loss_fn = staticmethod(eskd_loss)

    def loss_kwargs(self, ctx: StepContext) -> dict[str, Any]:
        return {**self.params.model_dump(), "epoch": ctx.epoch}

    def check_schedule(self, num_epochs: int) -> list[str]:
        stop = self.params.stop_epoch
        if stop == 0:
            return ["method eskd: stop_epoch=0 never distils (plain CE training); set method.stop_epoch >= 1"]
        if stop < num_epochs:
            return []
        return [
            f"method eskd: stop_epoch={stop} is not before the end of the run's {num_epochs} epochs, so "
            f"distillation never stops (plain KD); set method.stop_epoch below {num_epochs}"
        ]
