"""Numerically careful building blocks shared by the loss functions.

Everything works in log space (``log_softmax``) and in float32 whatever the input
dtype (bf16 logits from autocast are upcast), so losses stay finite for extreme
logits and for C = 2.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def as_float(x: Tensor) -> Tensor:
    """Upcast half/bf16 logits to float32 (no copy for float32/float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row over classes (LS-KD, Sun et al. CVPR 2024).

    Uses the unbiased (N-1) standard deviation, as the authors' code does.
    """
    logits = as_float(logits)
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def kl_terms(log_p: Tensor, log_q: Tensor, weight: float = 1.0) -> Tensor:
    """``weight * p * (log p - log q)`` elementwise, exactly 0 where p = 0 (0 * log 0 := 0)."""
    p = log_p.exp()
    terms = (log_p - log_q).mul_(p)
    return (terms if weight == 1.0 else terms.mul_(weight)).masked_fill_(p == 0, 0.0)


class _RowKL(torch.autograd.Function):
    """sum_c p_c (log p_c - log q_c) per row with a hand-written backward: only the two
    log-probability inputs are kept for it (usually already alive, saved by their
    log_softmax), so the product, the mask and the difference never outlive the forward."""

    @staticmethod
    def forward(ctx: Any, log_p: Tensor, log_q: Tensor) -> Tensor:
        ctx.save_for_backward(log_p, log_q)
        return kl_terms(log_p, log_q).sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        log_p, log_q = ctx.saved_tensors
        p = log_p.exp()
        g = grad.unsqueeze(-1)
        grad_p = grad_q = None
        if ctx.needs_input_grad[0]:  # d/dlog p = p (log p - log q + 1), 0 where p = 0
            grad_p = (log_p - log_q).add_(1.0).mul_(p).masked_fill_(p == 0, 0.0).mul_(g)
        if ctx.needs_input_grad[1]:
            grad_q = p.mul_(g).neg_()
        return grad_p, grad_q


def kl_from_log_probs(log_p_teacher: Tensor, log_p_student: Tensor) -> Tensor:
    """Per-row KL(p_t || p_s) from log-probabilities; zero-probability teacher
    entries contribute exactly 0 (no 0*log 0 NaNs). Differentiable in both arguments
    (first order)."""
    log_p_teacher, log_p_student = torch.broadcast_tensors(log_p_teacher, log_p_student)
    return _RowKL.apply(log_p_teacher, log_p_student)


def weighted_cross_entropy(logits: Tensor, targets: Tensor, weight: float, *, label_smoothing: float = 0.0) -> Tensor:
    """``weight * CE(logits, targets)`` in float32; exactly 0 and not computed when ``weight`` is 0
    (the language-model recipes: one full-vocabulary log-softmax less per token)."""
    if weight == 0:  # the dtype as_float would give
        return torch.zeros((), dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device)
    return weight * F.cross_entropy(as_float(logits), targets, label_smoothing=label_smoothing)


def soft_cross_entropy(p_teacher: Tensor, log_p_student: Tensor) -> Tensor:
    """Per-row cross-entropy -sum_c p_t,c log p_s,c."""
    return -(p_teacher * log_p_student).sum(-1)


def tempered_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Per-row KL(softmax(z_t/T) || softmax(z_s/T)) (no T^2 factor)."""
    log_ps = F.log_softmax(as_float(student_logits) / temperature, dim=-1)
    log_pt = F.log_softmax(as_float(teacher_logits) / temperature, dim=-1)
    return kl_from_log_probs(log_pt, log_ps)


def check_logits(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor) -> None:
    """Shape checks shared by every loss (cheap; no host sync)."""
    if student_logits.dim() != 2:
        raise ValueError(f"student logits must be (batch, classes), got {tuple(student_logits.shape)}")
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} and student logits "
            f"{tuple(student_logits.shape)} differ in shape"
        )
    if targets.shape[0] != student_logits.shape[0]:
        raise ValueError(f"{targets.shape[0]} targets for {student_logits.shape[0]} rows of logits")


# ---------------------------------------------------------------------------------------
# Helpers for the method zoo (ATS/ISATS, DKD, DIST, RCKD, FGCR, TTM).
# ---------------------------------------------------------------------------------------


def target_mask(targets: Tensor, num_classes: int) -> Tensor:
    """Boolean (B, C) mask, True at each row's ground-truth class."""
    return F.one_hot(targets.long(), num_classes).bool()


def _per_row(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A scalar stays a scalar; a (B,) tensor becomes (B, 1) so it broadcasts over classes."""
    if isinstance(value, Tensor) and value.dim() == 1:
        return value.to(like.dtype).unsqueeze(-1)
    return value


def asymmetric_log_softmax(
    logits: Tensor,
    targets: Tensor,
    target_temperature: float | Tensor,
    nontarget_temperature: float | Tensor,
) -> Tensor:
    """ATS softmax in log space (Li et al., NeurIPS 2022).

    Row i's target logit ``z[i, y_i]`` is divided by ``target_temperature`` and every
    other logit by ``nontarget_temperature``; then one ``log_softmax`` over all classes.
    Temperatures are scalars or per-row ``(B,)`` tensors.
    """
    z = as_float(logits)
    mask = target_mask(targets, z.shape[-1])
    t1 = _per_row(target_temperature, z)
    t2 = _per_row(nontarget_temperature, z)
    scaled = torch.where(mask, z / t1, z / t2)
    return F.log_softmax(scaled, dim=-1)


def masked_log_softmax(logits: Tensor, keep: Tensor) -> Tensor:
    """``log_softmax`` over the entries where ``keep`` is True, per row.

    Excluded entries are filled with 0 (a finite placeholder, *not* a log-probability),
    so downstream arithmetic never meets ``-inf - -inf``; callers must ignore them
    (e.g. with :func:`masked_kl`). Rows need at least one kept entry.
    """
    z = as_float(logits)
    log_p = F.log_softmax(z.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.where(keep, log_p, torch.zeros_like(log_p))


def masked_kl(log_p_teacher: Tensor, log_p_student: Tensor, keep: Tensor) -> Tensor:
    """Per-row ``sum_{c: keep} p_t,c (log p_t,c - log p_s,c)``; excluded entries add 0."""
    terms = log_p_teacher.exp() * (log_p_teacher - log_p_student)
    return torch.where(keep, terms, torch.zeros_like(terms)).sum(-1)


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8, dim: int = -1) -> Tensor:
    """Pearson correlation along ``dim``: the cosine of the mean-centred vectors.

    A constant vector (zero variance) gives 0 rather than NaN (``F.cosine_similarity``'s
    ``eps`` guard).
    """
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return F.cosine_similarity(a, b, dim=dim, eps=eps)
