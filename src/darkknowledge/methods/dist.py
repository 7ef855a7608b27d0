"""DIST: "Knowledge Distillation from A Stronger Teacher" (Huang, You, Wang, Qian, Xu;
NeurIPS 2022; authors' code: github.com/hunto/DIST_KD, which pulls in
github.com/hunto/image_classification_sota ``lib/models/losses/dist_kd.py``).

Relation matching with Pearson correlation rho (cosine of mean-centred vectors) on the
temperature-softened probabilities Y_s = softmax(v / tau), Y_t = softmax(z / tau),
both B x C:

    inter = 1 - mean_i rho(Y_s[i, :], Y_t[i, :])      (per sample, across classes)
    intra = 1 - mean_c rho(Y_s[:, c], Y_t[:, c])      (per class, across the batch)
    L = ce_weight * CE + kd_weight * tau^2 * (inter_weight * inter + intra_weight * intra)

Defaults (authors' CIFAR-100 config ``dist_cifar.yaml``, ``kd: dist_t4``): tau = 4,
inter_weight (beta) = intra_weight (gamma) = 1, ce_weight 1, kd_weight 2, eps 1e-8
(ImageNet uses tau = 1). The intra term depends on the batch composition; with a
batch of one it is constant (1). Over language-model tokens the batch is one sequence
(``token_batch``; :mod:`darkknowledge.methods.tokens`).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import as_float, check_logits, pearson_correlation, weighted_cross_entropy


class DISTParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy term.")
    kd_weight: float = Field(2.0, ge=0, description="Weight of the tau^2-scaled DIST relation loss.")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature tau of teacher and student.")
    inter_weight: float = Field(1.0, ge=0, description="Weight of the inter-class (per-sample) term (beta).")
    intra_weight: float = Field(1.0, ge=0, description="Weight of the intra-class (per-class) term (gamma).")
    eps: float = Field(1e-8, gt=0, description="Guard of the cosine in the Pearson correlation.")


@param_defaults(DISTParams)
def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    inter_weight: float,
    intra_weight: float,
    eps: float,
) -> dict[str, Tensor]:
    """DIST as named, weighted terms ``{"ce", "inter", "intra"}`` (defaults: :class:`DISTParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    v = as_float(student_logits)
    y_s = F.softmax(v / temperature, dim=-1)
    y_t = F.softmax(as_float(teacher_logits) / temperature, dim=-1)
    inter = 1.0 - pearson_correlation(y_s, y_t, eps=eps, dim=1).mean()
    intra = 1.0 - pearson_correlation(y_s, y_t, eps=eps, dim=0).mean()
    scale = kd_weight * temperature**2
    return {
        "ce": weighted_cross_entropy(v, targets, ce_weight),
        "inter": scale * inter_weight * inter,
        "intra": scale * intra_weight * intra,
    }


@register_method
class DIST(DistillMethod):
    name = "dist"
    summary = (
        "DIST: Pearson-correlation matching of probabilities across classes and across the batch (Huang et al. 2022)."
    )
    Params = DISTParams
    loss_fn = staticmethod(dist_loss)
    token_batch = "sequence"  # the intra term correlates the rows of a batch
