"""SCKD, student customised KD (Zhu & Wang, ICCV 2021): a per-iteration gate on the KD term.

KD and CE are treated as two tasks sharing the student's parameters theta. Each step,

    gate = 1  if  cos(grad_theta KL, grad_theta CE) > threshold  else 0
    L    = ce_weight * CE + gate * kd_weight * T^2 * KL(p_t^T || p_s^T)

(threshold phi = 0, the paper's best). The cosine is taken over the flattened gradients of
the *unweighted* CE and KL (positive weights do not change it), computed with
``torch.autograd.grad(..., retain_graph=True)``; the trainer's backward pass is unchanged
and simply sees a KD term that is exactly 0 when the gate is closed. A zero gradient gives
cosine 0. ``gate_scope`` picks theta: every trainable parameter of the student (``model``,
as in the paper; two extra backward passes per step), the final ``nn.Linear`` only
(``last_layer``: the model's ``classifier``, else its last ``nn.Linear``; cheap), or the
student logits (``logits``; nearly free). The official code was not found; the gate follows
the paper's description.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from darkknowledge.errors import UserError
from darkknowledge.methods.base import (
    DistillMethod,
    MethodParams,
    SetupContext,
    param_defaults,
    register_method,
    require_teacher_logits,
)
from darkknowledge.methods.functional import as_float, check_logits, tempered_kl

GateScope = Literal["model", "last_layer", "logits"]


class SCKDParams(MethodParams):
    ce_weight: float = Field(0.1, ge=0, description="Weight of the cross-entropy term on ground-truth labels.")
    kd_weight: float = Field(
        0.9, ge=0, description="Weight of the T^2-scaled KL distillation term (when the gate is open)."
    )
    temperature: float = Field(4.0, gt=0, description="Softmax temperature T applied to teacher and student logits.")
    threshold: float = Field(
        0.0, ge=-1, le=1, description="Gate threshold phi: the KD term is applied when cos(grad KL, grad CE) > phi."
    )
    gate_scope: GateScope = Field(
        "model",
        description="Gradients of the gate: 'model' (all trainable student parameters), 'last_layer' "
        "(the final nn.Linear, cheaper) or 'logits' (the student logits, cheapest).",
    )


def gradient_cosine(loss_a: Tensor, loss_b: Tensor, inputs: Sequence[Tensor], eps: float = 1e-12) -> Tensor:
    """cos of the flattened gradients of two scalar losses w.r.t. ``inputs`` (float32
    scalar; 0 when either gradient is 0). Keeps the graph for a later backward pass."""
    inputs = list(inputs)
    grads_a = torch.autograd.grad(loss_a, inputs, retain_graph=True, allow_unused=True)
    grads_b = torch.autograd.grad(loss_b, inputs, retain_graph=True, allow_unused=True)
    dot = norm_a = norm_b = torch.zeros((), dtype=torch.float32, device=loss_a.device)
    for ga, gb in zip(grads_a, grads_b):
        if ga is None or gb is None:  # unused by one loss: adds to one norm only
            if ga is not None:
                norm_a = norm_a + ga.float().square().sum()
            if gb is not None:
                norm_b = norm_b + gb.float().square().sum()
            continue
        ga, gb = ga.float(), gb.float()
        dot = dot + (ga * gb).sum()
        norm_a = norm_a + ga.square().sum()
        norm_b = norm_b + gb.square().sum()
    return dot / (norm_a.sqrt() * norm_b.sqrt()).clamp_min(eps)


@param_defaults(SCKDParams, exclude=("gate_scope",))
def sckd_loss_and_cosine(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    threshold: float,
    gate_inputs: Sequence[Tensor] | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """``({"ce", "kd"}, cosine)``: the gradient cosine is taken w.r.t. ``gate_inputs``
    (default: the student logits, which must be part of a graph)."""
    check_logits(student_logits, teacher_logits, targets)
    if not student_logits.requires_grad:
        raise ValueError("sckd needs student logits that are part of the autograd graph (the gate uses gradients)")
    ce = F.cross_entropy(as_float(student_logits), targets)
    kl = tempered_kl(student_logits, teacher_logits, temperature).mean()
    cosine = gradient_cosine(kl, ce, [student_logits] if gate_inputs is None else gate_inputs)
    gate = (cosine > threshold).to(kl.dtype)
    return {"ce": ce_weight * ce, "kd": gate * (kd_weight * temperature**2 * kl)}, cosine.detach()


@param_defaults(SCKDParams, exclude=("gate_scope",))
def sckd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    threshold: float,
    gate_inputs: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """SCKD as named, weighted terms ``{"ce", "kd"}`` (``kd`` is exactly 0 when the gate is
    closed); see :func:`sckd_loss_and_cosine`. Defaults: :class:`SCKDParams`."""
    return sckd_loss_and_cosine(
        student_logits,
        teacher_logits,
        targets,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        temperature=temperature,
        threshold=threshold,
        gate_inputs=gate_inputs,
    )[0]


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's ``classifier`` if it is an ``nn.Linear``, else its last ``nn.Linear``."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(
            "method sckd: gate_scope=last_layer needs a model with an nn.Linear layer; "
            "use method.gate_scope=model or logits"
        )
    return linears[-1]


@register_method
class SCKD(DistillMethod):
    name = "sckd"
    summary = "Student-customised KD (Zhu & Wang 2021): KD term only when cos(grad KL, grad CE) > threshold."
    Params = SCKDParams
    params: SCKDParams
    loss_fn = staticmethod(sckd_loss)  # the module adds the gate's inputs and records the gate
    token_batch = "batch"  # the gate compares gradients of the whole batch: never chunked over tokens

    def __init__(self, params=None, num_classes=None):
        super().__init__(params, num_classes)
        self._gate_params: list[nn.Parameter] | None = None
        self._warned = False

    def setup(self, ctx: SetupContext) -> None:
        scope = self.params.gate_scope
        student = ctx.student
        if scope == "logits" or student is None:
            self._gate_params = None
        elif scope == "last_layer":
            self._gate_params = [p for p in last_linear(student).parameters() if p.requires_grad]
        else:
            self._gate_params = [p for p in student.parameters() if p.requires_grad]

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, ctx) -> dict[str, Tensor]:
        p = self.params
        if self._gate_params is None and p.gate_scope != "logits" and not self._warned:
            self._warned = True
            warnings.warn(
                f"method sckd: no student model was given (setup), so gate_scope={p.gate_scope} "
                "falls back to the logits",
                stacklevel=2,
            )
        terms, cosine = sckd_loss_and_cosine(
            student_logits,
            require_teacher_logits(teacher_logits, self.name),
            targets,
            ce_weight=p.ce_weight,
            kd_weight=p.kd_weight,
            temperature=p.temperature,
            threshold=p.threshold,
            gate_inputs=self._gate_params,
        )
        self.record("gate_open", (cosine > p.threshold).float())
        self.record("grad_cosine", cosine)
        return terms
