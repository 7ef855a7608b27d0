"""Plain supervised training: cross-entropy only, no teacher.

Used to train teachers and the student-alone baseline through the same trainer.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, StepContext, register_method
from darkknowledge.methods.functional import as_float


class CEParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the CE target (0 = none).")


def ce_loss(student_logits: Tensor, targets: Tensor, *, ce_weight: float = 1.0, label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """``{"ce": ce_weight * CE(student_logits, targets)}``."""
    return {"ce": ce_weight * F.cross_entropy(as_float(student_logits), targets, label_smoothing=label_smoothing)}


@register_method
class CE(DistillMethod):
    name = "ce"
    summary = "Cross-entropy only (teacher training, student-alone baseline)."
    Params = CEParams
    needs_teacher = False

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        p = self.params
        return ce_loss(student_logits, targets, ce_weight=p.ce_weight, label_smoothing=p.label_smoothing)
