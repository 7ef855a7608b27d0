"""CTKD: Curriculum Temperature for Knowledge Distillation (Li, Li, Yang, Cheng, Zhang,
Xu, Yang; AAAI 2023; authors' code: github.com/zhengli97/CTKD, ``models/temp_global.py``,
``helper/loops.py``).

A learnable global temperature is trained *adversarially*: a scalar theta passes a
gradient-reversal layer (identity forward, gradient times lambda <= 0 backward), and

    T = t_start + t_range * sigmoid(theta)            (T in (1, 21) with the defaults)
    L = ce_weight * CE + kd_weight * T^2 * KL(softmax(z/T) || softmax(v/T))

so the student minimises the KD loss while theta (an ``nn.Parameter`` of this module,
optimised by the trainer with the student) maximises it. lambda follows the cosine
curriculum over ``curriculum_epochs`` N (0-indexed epoch e, from the ``StepContext``):

    lambda(e) = -[1 - (cos(e * pi / N) + 1) / 2]   for e <= N,   -1 afterwards

i.e. 0 -> -1 (authors' ``decay_max 0``, ``decay_min -1``, ``decay_loops 10``).
Defaults (authors' CIFAR-100 scripts): theta_0 = 1 (T ~ 15.6 at start), t_start = 1,
t_range = 20, N = 10, ce_weight 0.1, kd_weight 0.9. The temperature is recorded each
step as ``ctkd_temperature``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from darkknowledge.methods.base import DistillMethod, MethodParams, StepContext, param_defaults, register_method
from darkknowledge.methods.kd import kd_loss


class CTKDParams(MethodParams):
    ce_weight: float = Field(0.1, ge=0, description="Weight of the cross-entropy term.")
    kd_weight: float = Field(0.9, ge=0, description="Weight of the T^2-scaled KL term at the learned temperature.")
    t_start: float = Field(1.0, gt=0, description="Lowest temperature: T = t_start + t_range * sigmoid(theta).")
    t_range: float = Field(20.0, gt=0, description="Temperature range: T = t_start + t_range * sigmoid(theta).")
    init_theta: float = Field(1.0, description="Initial value of the learnable temperature parameter theta.")
    curriculum_epochs: float = Field(
        10.0, gt=0, description="Epochs of the cosine ramp of the gradient-reversal weight from 0 to -1."
    )


class _GradientReversal(torch.autograd.Function):
    """Identity forward; the backward gradient is multiplied by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def grad_reverse(x: Tensor, scale: float) -> Tensor:
    """Gradient-reversal layer: ``x`` forward, ``scale * grad`` backward (scale <= 0 reverses)."""
    return _GradientReversal.apply(x, scale)


@param_defaults(CTKDParams, subset=True)
def ctkd_lambda(epoch: float, *, curriculum_epochs: float) -> float:
    """Gradient-reversal weight at (0-indexed) ``epoch``: -[1 - (cos(e pi / N) + 1) / 2], -1 after N."""
    if epoch >= curriculum_epochs:
        return -1.0
    return -(1.0 - (math.cos(epoch * math.pi / curriculum_epochs) + 1.0) / 2.0)


@param_defaults(CTKDParams, subset=True)
def ctkd_temperature(theta: Tensor, scale: float, *, t_start: float, t_range: float) -> Tensor:
    """T = t_start + t_range * sigmoid(GRL(theta, scale)) (a differentiable 0-d tensor)."""
    return t_start + t_range * torch.sigmoid(grad_reverse(theta, scale))


@param_defaults(CTKDParams, exclude=("t_start", "t_range", "init_theta", "curriculum_epochs"))
def ctkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float | Tensor,
    ce_weight: float,
    kd_weight: float,
) -> dict[str, Tensor]:
    """KD at a (possibly learnable, tensor) temperature: ``{"ce", "kd"}``; gradients
    flow into ``temperature`` when it requires them."""
    return kd_loss(
        student_logits,
        teacher_logits,
        targets,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        temperature=temperature,
        logit_standardization=False,
    )


@register_method
class CTKD(DistillMethod):
    name = "ctkd"
    summary = (
        "Curriculum temperature KD: adversarially learned global T behind a gradient-reversal layer (Li et al. 2023)."
    )
    Params = CTKDParams
    params: CTKDParams
    loss_fn = staticmethod(ctkd_loss)

    def __init__(self, params: CTKDParams | None = None, num_classes: int | None = None):
        super().__init__(params, num_classes)
        self.theta = nn.Parameter(torch.tensor(float(self.params.init_theta)))

    def check_schedule(self, num_epochs: int) -> list[str]:
        curriculum = self.params.curriculum_epochs
        if curriculum <= num_epochs:
            return []
        reached = ctkd_lambda(num_epochs - 1, curriculum_epochs=curriculum)  # lambda in the last (0-indexed) epoch
        return [
            f"method ctkd: curriculum_epochs={curriculum:g} exceeds the run's {num_epochs} epochs, so the "
            f"gradient-reversal weight ends at {reached:.2f} instead of -1; "
            f"set method.curriculum_epochs to at most {num_epochs}"
        ]

    def loss_kwargs(self, ctx: StepContext) -> dict[str, Any]:
        p = self.params
        scale = ctkd_lambda(ctx.epoch, curriculum_epochs=p.curriculum_epochs)
        temperature = ctkd_temperature(self.theta, scale, t_start=p.t_start, t_range=p.t_range)
        self.record("ctkd_temperature", temperature)
        return {"temperature": temperature, "ce_weight": p.ce_weight, "kd_weight": p.kd_weight}
