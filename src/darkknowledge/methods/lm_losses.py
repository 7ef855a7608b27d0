"""The divergences used to distil language models, as methods.

With p = softmax(z / T) the teacher and q = softmax(v / T) the student, per row (token):

* ``reverse_kl``: KL(q || p), mode-seeking (MiniLLM, Gu et al. ICLR 2024);
* ``jsd``: generalised Jensen-Shannon divergence with m = beta * p + (1 - beta) * q,
  JSD(beta) = beta * KL(p || m) + (1 - beta) * KL(q || m) (GKD, Agarwal et al. ICLR 2024);
* ``skew_kl``: KL(p || alpha * p + (1 - alpha) * q) (DistiLLM, Ko et al. ICML 2024);
* ``skew_reverse_kl``: KL(q || alpha * q + (1 - alpha) * p) (DistiLLM);
* ``tv``: total variation 1/2 * sum_c |p_c - q_c|.

Each method's loss is ``ce_weight * CE + kd_weight * T^2 * mean_rows(divergence)``; the
defaults (T = 1, pure divergence: ce_weight 0) are those of the cited LM recipes. Every
mixture is a ``logsumexp`` of log-probabilities (never the log of a sum of probabilities),
inputs are upcast from half/bf16 to float32, and terms whose weight probability is 0 add
exactly 0, so extreme logits stay finite. These losses see rows of any shape ``(N, V)``;
over ``[batch, tokens, vocab]`` they run through :mod:`darkknowledge.methods.tokens`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.autograd.function import once_differentiable

from darkknowledge.methods.base import DistillMethod, MethodParams, param_defaults, register_method
from darkknowledge.methods.functional import as_float, check_logits, kl_from_log_probs, kl_terms, weighted_cross_entropy
from darkknowledge.methods.topk import TopKRows, topk_tempered_reverse_kl


class LMDivergenceParams(MethodParams):
    ce_weight: float = Field(0.0, ge=0, description="Weight of the cross-entropy term on the next token.")
    kd_weight: float = Field(1.0, ge=0, description="Weight of the T^2-scaled divergence term.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature T of teacher and student.")


class JSDParams(LMDivergenceParams):
    beta: float = Field(0.5, gt=0, lt=1, description="Mixture weight of the teacher in m = beta * p + (1 - beta) * q.")


class SkewParams(LMDivergenceParams):
    alpha: float = Field(
        0.1, gt=0, lt=1, description="Skew: weight of the first argument's own distribution in the mixture."
    )


def log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a * a + (1 - weight_a) * b) from log a and log b (0 < weight_a < 1)."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(log q, log p) at temperature T."""
    log_q = F.log_softmax(as_float(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(as_float(teacher_logits) / temperature, dim=-1)
    return log_q, log_p


def reverse_kl_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    """Per-row KL(q || p)."""
    return kl_from_log_probs(log_q, log_p)


class _RowJSD(torch.autograd.Function):
    """JSD(beta) per row from log p and log q with a hand-written backward. As functions of
    the log-probabilities, d/dlog p = beta * p * (log p - log m) and d/dlog q = (1 - beta) * q *
    (log q - log m): the very terms the forward sums. So the forward keeps the terms of the
    inputs that need a gradient and the backward only scales them (autograd through
    ``logaddexp`` and two KLs keeps more full-vocabulary tensors and recomputes exponentials)."""

    @staticmethod
    def forward(ctx: Any, log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
        log_m = log_mixture(log_p, log_q, beta)
        terms_p = kl_terms(log_p, log_m, beta)
        terms_q = kl_terms(log_q, log_m, 1.0 - beta)
        rows = (terms_p + terms_q).sum(-1)
        ctx.save_for_backward(
            terms_p if ctx.needs_input_grad[0] else None, terms_q if ctx.needs_input_grad[1] else None
        )
        return rows

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        terms_p, terms_q = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        return (None if terms_p is None else terms_p * g), (None if terms_q is None else terms_q * g), None


def jsd_rows(log_q: Tensor, log_p: Tensor, beta: float) -> Tensor:
    """Per-row beta * KL(p || m) + (1 - beta) * KL(q || m), m = beta * p + (1 - beta) * q."""
    log_p, log_q = torch.broadcast_tensors(log_p, log_q)
    return _RowJSD.apply(log_p, log_q, beta)


def skew_kl_rows(log_q: Tensor, log_p: Tensor, alpha: float) -> Tensor:
    """Per-row KL(p || alpha * p + (1 - alpha) * q)."""
    return kl_from_log_probs(log_p, log_mixture(log_p, log_q, alpha))


def skew_reverse_kl_rows(log_q: Tensor, log_p: Tensor, alpha: float) -> Tensor:
    """Per-row KL(q || alpha * q + (1 - alpha) * p)."""
    return kl_from_log_probs(log_q, log_mixture(log_q, log_p, alpha))


def total_variation_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    """Per-row 1/2 * sum_c |p_c - q_c| (in [0, 1])."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def _terms(
    student_logits: Tensor,
    targets: Tensor,
    divergence: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
) -> dict[str, Tensor]:
    return {
        "ce": weighted_cross_entropy(student_logits, targets, ce_weight),
        "kd": kd_weight * temperature**2 * divergence.mean(),
    }


@param_defaults(LMDivergenceParams)
def reverse_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
) -> dict[str, Tensor]:
    """Reverse KL as named, weighted terms ``{"ce", "kd"}`` (defaults: :class:`LMDivergenceParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    div = reverse_kl_rows(log_q, log_p)
    return _terms(student_logits, targets, div, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)


@param_defaults(LMDivergenceParams)
def reverse_kl_topk_loss(
    student_logits: Tensor,
    teacher: TopKRows,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
) -> dict[str, Tensor]:
    """:func:`reverse_kl_loss` against a top-k teacher with a uniform tail, without its full rows."""
    div = topk_tempered_reverse_kl(student_logits, teacher, temperature)
    return _terms(student_logits, targets, div, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)


@param_defaults(JSDParams)
def jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    beta: float,
) -> dict[str, Tensor]:
    """Generalised JSD(beta) as named, weighted terms ``{"ce", "kd"}`` (defaults: :class:`JSDParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    div = jsd_rows(log_q, log_p, beta)
    return _terms(student_logits, targets, div, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)


@param_defaults(SkewParams)
def skew_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    alpha: float,
) -> dict[str, Tensor]:
    """Skew KL(alpha) as named, weighted terms ``{"ce", "kd"}`` (defaults: :class:`SkewParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    div = skew_kl_rows(log_q, log_p, alpha)
    return _terms(student_logits, targets, div, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)


@param_defaults(SkewParams)
def skew_reverse_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    alpha: float,
) -> dict[str, Tensor]:
    """Skew reverse KL(alpha) as named, weighted terms ``{"ce", "kd"}`` (defaults: :class:`SkewParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    div = skew_reverse_kl_rows(log_q, log_p, alpha)
    return _terms(student_logits, targets, div, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)


@param_defaults(LMDivergenceParams)
def total_variation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
) -> dict[str, Tensor]:
    """Total variation as named, weighted terms ``{"ce", "kd"}`` (defaults: :class:`LMDivergenceParams`)."""
    check_logits(student_logits, teacher_logits, targets)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    div = total_variation_rows(log_q, log_p)
    return _terms(student_logits, targets, div, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)


@register_method
class ReverseKL(DistillMethod):
    name = "reverse_kl"
    summary = "Reverse KL(student || teacher), mode-seeking (MiniLLM, Gu et al. 2024)."
    Params = LMDivergenceParams
    loss_fn = staticmethod(reverse_kl_loss)
    topk_loss_fn = staticmethod(reverse_kl_topk_loss)


@register_method
class JSD(DistillMethod):
    name = "jsd"
    summary = "Generalised Jensen-Shannon divergence JSD(beta) between teacher and student (GKD, Agarwal et al. 2024)."
    Params = JSDParams
    loss_fn = staticmethod(jsd_loss)


@register_method
class SkewKL(DistillMethod):
    name = "skew_kl"
    summary = "Skew KL(teacher || alpha*teacher + (1-alpha)*student) (DistiLLM, Ko et al. 2024)."
    Params = SkewParams
    loss_fn = staticmethod(skew_kl_loss)


@register_method
class SkewReverseKL(DistillMethod):
    name = "skew_reverse_kl"
    summary = "Skew reverse KL(student || alpha*student + (1-alpha)*teacher) (DistiLLM, Ko et al. 2024)."
    Params = SkewParams
    loss_fn = staticmethod(skew_reverse_kl_loss)


@register_method
class TotalVariation(DistillMethod):
    name = "tv"
    summary = "Total variation distance 1/2 * sum |teacher - student| between the softmaxes."
    Params = LMDivergenceParams
    loss_fn = staticmethod(total_variation_loss)
