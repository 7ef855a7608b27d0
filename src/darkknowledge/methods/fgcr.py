"""FGCR: fusing global class relations into the teacher's soft labels.

**This is OUR RECONSTRUCTION, not the paper's definition.** FGCR is named in Li, Fan,
Tao, Gan, Zhan, "Exploring Dark Knowledge under Various Teacher Capacities and
Addressing Capacity Mismatch" (arXiv 2405.13078 v1) as one of the ways to make a large
teacher's non-target probabilities more distinct, but its definition could not be read
(no full text, no code). What follows is our configurable reconstruction (docs/methods.md),
motivated by the paper's observation that teachers of different capacities agree on
*relative* class affinities.

1. Global class-relation matrix M (C x C), built once from the teacher on the training
   set in :meth:`FGCR.setup`: row M[c] is the mean, over training samples of true class
   c, of the teacher's temperature-softened non-target distribution (softmax at
   ``relation_temperature`` with the target removed and the rest renormalised, so each
   row sums to 1 and M[c, c] = 0). A class with no samples gets a uniform row.
2. Per instance, the base target is the KD softmax q = softmax(z / T). FGCR keeps the
   target mass and redistributes part of the non-target mass along M[y]:

       q~_y = q_y,   q~_c = (1 - eta) q_c + eta (1 - q_y) M[y, c]   (c != y)

   (sums to 1; eta = ``fusion_weight``; eta = 0 is plain KD). Computed in log space.
3. Student loss as KD: ce_weight * CE + kd_weight * T^2 * KL(q~ || softmax(v / T)).

Defaults: T = 4, ce_weight 0.1, kd_weight 0.9 (KD's CIFAR-100 values), relation
temperature 4, eta = 0.5 (unverified guesses). The paper's alternative source of
relations, cosine similarity of classifier weights, is not implemented (the setup
context gives teacher logits, not the teacher's weights). M is a buffer (``relation``,
with ``relation_counts``), so it is saved in the method's ``state_dict``; tests and
custom loops can pass any row-stochastic M to :func:`fgcr_loss` directly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.errors import UserError
from darkknowledge.methods.base import (
    DistillMethod,
    MethodParams,
    SetupContext,
    StepContext,
    param_defaults,
    register_method,
)
from darkknowledge.methods.functional import (
    as_float,
    check_logits,
    kl_from_log_probs,
    masked_log_softmax,
    target_mask,
    weighted_cross_entropy,
)


class FGCRParams(MethodParams):
    ce_weight: float = Field(0.1, ge=0, description="Weight of the cross-entropy term.")
    kd_weight: float = Field(0.9, ge=0, description="Weight of the T^2-scaled KL term to the fused target.")
    temperature: float = Field(
        4.0, gt=0, description="Softmax temperature T of the per-instance target and the student."
    )
    fusion_weight: float = Field(
        0.5, ge=0, le=1, description="eta: share of the non-target mass redistributed along the class relations."
    )
    relation_temperature: float = Field(
        4.0, gt=0, description="Temperature of the teacher softmax used to build the class-relation matrix."
    )


def uniform_relation(num_classes: int, device: torch.device | str | None = None) -> Tensor:
    """The relation matrix with no information: 1/(C-1) off the diagonal, 0 on it."""
    m = torch.full((num_classes, num_classes), 1.0 / max(num_classes - 1, 1), device=device)
    return m.fill_diagonal_(0.0)


@torch.no_grad()
def accumulate_class_relations(
    sums: Tensor, counts: Tensor, teacher_logits: Tensor, targets: Tensor, *, temperature: float
) -> None:
    """Add one batch to per-class sums of the renormalised non-target teacher distribution."""
    z = as_float(teacher_logits)
    keep = ~target_mask(targets, z.shape[-1])
    nontarget = masked_log_softmax(z / temperature, keep).exp() * keep
    targets = targets.to(sums.device)
    sums.index_add_(0, targets, nontarget.to(sums))
    counts.index_add_(0, targets, torch.ones_like(targets, dtype=counts.dtype))


def finalize_class_relations(sums: Tensor, counts: Tensor) -> Tensor:
    """Per-class means; classes without samples get the uniform row."""
    uniform = uniform_relation(sums.shape[0], device=sums.device).to(sums.dtype)
    seen = (counts > 0).unsqueeze(-1)
    return torch.where(seen, sums / counts.clamp(min=1).unsqueeze(-1), uniform)


def class_relation_matrix(teacher_logits: Tensor, targets: Tensor, num_classes: int, *, temperature: float) -> Tensor:
    """M from a single tensor of teacher logits (e.g. the whole training set), float32."""
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=teacher_logits.device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=teacher_logits.device)
    accumulate_class_relations(sums, counts, teacher_logits, targets, temperature=temperature)
    return finalize_class_relations(sums, counts).float()


@param_defaults(FGCRParams, subset=True)
def fgcr_teacher_log_probs(
    teacher_logits: Tensor, targets: Tensor, relation: Tensor, *, temperature: float, fusion_weight: float
) -> Tensor:
    """log q~: target mass of softmax(z/T) kept, non-target mass fused with M[y] (log space)."""
    z = as_float(teacher_logits)
    num_classes = z.shape[-1]
    if relation.shape != (num_classes, num_classes):
        raise ValueError(f"relation matrix {tuple(relation.shape)} does not match {num_classes} classes")
    mask = target_mask(targets, num_classes)
    log_q = F.log_softmax(z / temperature, dim=-1)
    log_rest = log_q.masked_fill(mask, float("-inf")).logsumexp(-1, keepdim=True)  # log(1 - q_y)
    tiny = torch.finfo(torch.float32).tiny
    log_rel = torch.log(relation.to(log_q).clamp(min=tiny))[targets.long()]  # rows M[y_i]
    keep = math.log1p(-fusion_weight) if fusion_weight < 1 else float("-inf")
    mix = math.log(fusion_weight) if fusion_weight > 0 else float("-inf")
    fused = torch.logaddexp(log_q + keep, log_rest + log_rel + mix)
    return torch.where(mask, log_q, fused)


@param_defaults(FGCRParams, exclude=("relation_temperature",))
def fgcr_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    relation: Tensor,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    fusion_weight: float,
) -> dict[str, Tensor]:
    """FGCR (our reconstruction) as named, weighted terms ``{"ce", "kd"}``; ``relation``
    is a row-stochastic (C, C) matrix with zero diagonal."""
    check_logits(student_logits, teacher_logits, targets)
    v = as_float(student_logits)
    log_target = fgcr_teacher_log_probs(
        teacher_logits, targets, relation, temperature=temperature, fusion_weight=fusion_weight
    )
    kl = kl_from_log_probs(log_target, F.log_softmax(v / temperature, dim=-1)).mean()
    return {"ce": weighted_cross_entropy(v, targets, ce_weight), "kd": kd_weight * temperature**2 * kl}


@register_method
class FGCR(DistillMethod):
    name = "fgcr"
    summary = "KD with global class relations fused into non-target soft labels (our reconstruction of FGCR)."
    Params = FGCRParams
    params: FGCRParams
    relation: Tensor | None
    relation_counts: Tensor | None
    loss_fn = staticmethod(fgcr_loss)

    def __init__(self, params: FGCRParams | None = None, num_classes: int | None = None):
        super().__init__(params, num_classes)
        self._ready = False
        if num_classes is not None:
            self.register_buffer("relation", uniform_relation(num_classes))
            self.register_buffer("relation_counts", torch.zeros(num_classes))
        else:
            self.register_buffer("relation", None)
            self.register_buffer("relation_counts", None)
        self.register_load_state_dict_post_hook(FGCR._after_load)

    @staticmethod
    def _after_load(module: FGCR, incompatible_keys: object) -> None:
        if module.relation_counts is not None:
            module._ready = bool(module.relation_counts.sum() > 0)

    @torch.no_grad()
    def setup(self, ctx: SetupContext) -> None:
        """Build M from the teacher over one pass of the (un-augmented) training set."""
        if ctx.teacher_logits_fn is None or ctx.train_batches is None:
            raise UserError("fgcr needs the teacher and the training data to build its class-relation matrix")
        num_classes = ctx.num_classes
        sums: Tensor | None = None
        counts: Tensor | None = None
        for batch in ctx.train_batches():
            logits = ctx.teacher_logits_fn(batch)
            if sums is None or counts is None:
                dtype = torch.float32 if logits.device.type == "mps" else torch.float64
                sums = torch.zeros(num_classes, num_classes, dtype=dtype, device=logits.device)
                counts = torch.zeros(num_classes, dtype=dtype, device=logits.device)
            accumulate_class_relations(
                sums, counts, logits, batch.targets.to(logits.device), temperature=self.params.relation_temperature
            )
        if sums is None or counts is None:
            raise UserError("fgcr: the training set is empty; cannot build the class-relation matrix")
        relation = finalize_class_relations(sums, counts).float()
        if self.relation is None or self.relation_counts is None or self.relation.shape != relation.shape:
            device = ctx.device if self.relation is None else self.relation.device
            self.relation = relation.to(device)
            self.relation_counts = counts.float().to(device)
        else:
            self.relation.copy_(relation)
            self.relation_counts.copy_(counts)
        self._ready = True

    def loss_kwargs(self, ctx: StepContext) -> dict[str, Any]:
        if not self._ready or self.relation is None:
            raise UserError(
                "fgcr: the class-relation matrix is not built; run setup(ctx) first (the trainer does) "
                "or load a state_dict that contains it"
            )
        kwargs = self.params.model_dump(exclude={"relation_temperature"})
        return {**kwargs, "relation": self.relation}
