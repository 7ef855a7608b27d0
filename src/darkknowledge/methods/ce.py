"""Plain supervised training: cross-entropy only, no teacher.

Used to train teachers and the student-alone baseline through the same trainer.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import as_float


class CEParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the CE target (0 = none).")


@param_defaults(CEParams)
def ce_loss(student_logits: Tensor, targets: Tensor, *, ce_weight: float, label_smoothing: float) -> dict[str, Tensor]:
    """``{"ce": ce_weight * CE(student_logits, targets)}``."""
    return {"ce": ce_weight * F.cross_entropy(as_float(student_logits), targets, label_smoothing=label_smoothing)}


@register_method
class CE(DistillMethod):
    name = "ce"
    summary = "Cross-entropy only (teacher training, student-alone baseline)."
    Params = CEParams
    needs_teacher = False
    loss_fn = staticmethod(ce_loss)
