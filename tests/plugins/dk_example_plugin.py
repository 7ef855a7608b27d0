"""An example darkknowledge plugin: one distillation method and one model."""

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from darkknowledge.methods import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.models import ClassifierModel, register_model


class LogitMSEParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    kd_weight: float = Field(0.5, ge=0, description="Weight of the mean squared logit difference.")


@param_defaults(LogitMSEParams)  # the defaults are written once, in the Params model
def logit_mse_loss(student_logits, teacher_logits, targets, *, ce_weight, kd_weight):
    """CE + mean squared difference of student and teacher logits, as weighted terms."""
    ce = F.cross_entropy(student_logits.float(), targets)
    mse = (student_logits.float() - teacher_logits.float()).pow(2).mean()
    return {"ce": ce_weight * ce, "kd": kd_weight * mse}


@register_method
class LogitMSE(DistillMethod):
    name = "logit_mse"
    summary = "CE + mean squared difference of student and teacher logits (example plugin)."
    Params = LogitMSEParams
    loss_fn = staticmethod(logit_mse_loss)  # the module calls the function with its Params


class PooledMLP(ClassifierModel):
    """Average-pool to 4 x 4, then a one-hidden-layer MLP."""

    def __init__(self, num_classes: int, in_channels: int, hidden: int = 32):
        super().__init__(num_classes, in_channels)
        self.features = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * in_channels, hidden), nn.ReLU()
        )
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x):
        return self.features(x)


@register_model("pooled_mlp")
def pooled_mlp(num_classes: int, in_channels: int) -> PooledMLP:
    return PooledMLP(num_classes, in_channels)
