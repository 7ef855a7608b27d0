"""Teacher rows known by their top-k logits, and KL against them without the full vocabulary
(forward KL for KD, reverse KL for ``reverse_kl``).

A top-k teacher cache keeps, per token, the k largest logits, their ids and the log-partition
``lse`` of the full vocabulary (V tokens). Under its ``"uniform"`` missing-mass policy the tail
mass ``m = 1 - sum of the top-k probabilities`` is spread evenly over the other V - k tokens: the
teacher is the top-k logits plus one tail logit ``log(m / (V - k)) + lse`` repeated V - k times.

:func:`topk_tempered_kl` computes ``KL(softmax(z_t / T) || softmax(z_s / T))`` for such a teacher
exactly, without building the teacher's ``(N, V)`` rows: the tail's part needs only the sum of the
student's log-probabilities over all tokens less the top-k's; the gradient is ``(q - p_t) / T``,
the student's softmax minus the tail probability, corrected at the k ids. Fewer passes over
``(N, V)`` than expanding the rows and running the dense KL (timings: docs/methods.md, "Language
models").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from darkknowledge.methods.functional import as_float


def uniform_tail_logit(values: Tensor, lse: Tensor, vocab_size: int) -> Tensor:
    """``(N,)`` logit of each of the V - k tail tokens under the uniform policy: the tail mass
    ``1 - sum of the top-k probabilities`` (at least 1e-12) split evenly among them."""
    tail_mass = (-torch.expm1((values - lse[:, None]).logsumexp(-1))).clamp_min(1e-12)
    return torch.log(tail_mass / max(vocab_size - values.shape[-1], 1)) + lse


@dataclass(frozen=True)
class TopKRows:
    """``(N, k)`` top-k ``ids`` (distinct per row) and logit ``values``, ``(N,)`` full-vocabulary
    log-partition ``lse``, of a teacher over ``vocab_size`` tokens with a uniform tail."""

    ids: Tensor
    values: Tensor
    lse: Tensor
    vocab_size: int

    def log_probs(self, temperature: float) -> tuple[Tensor, Tensor]:
        """The teacher at ``temperature``: log-probabilities ``(N, k)`` of the top-k ids and
        ``(N,)`` of each tail token."""
        values, lse = as_float(self.values), as_float(self.lse).to(as_float(self.values).dtype)
        tail = self.vocab_size - values.shape[-1]
        top = values / temperature
        if tail == 0:
            log_z = top.logsumexp(-1)
            return top - log_z[:, None], torch.full_like(log_z, -math.inf)
        tail_logit = uniform_tail_logit(values, lse, self.vocab_size) / temperature
        log_z = torch.logaddexp(top.logsumexp(-1), tail_logit + math.log(tail))
        return top - log_z[:, None], tail_logit - log_z


def _student_log_probs(student: Tensor, temperature: float) -> Tensor:
    """log softmax(z_s / T) in float32 (no division at T = 1)."""
    z = as_float(student)
    return F.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)


class _TopKTemperedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student: Tensor, rows: TopKRows, temperature: float) -> Tensor:
        log_q = _student_log_probs(student, temperature)
        ids = rows.ids.long()
        log_q_top = log_q.gather(1, ids)
        log_p_top, log_p_tail = rows.log_probs(temperature)
        p_top, p_tail = log_p_top.exp(), log_p_tail.exp()
        kl = (p_top * (log_p_top - log_q_top)).sum(-1)
        tail = rows.vocab_size - ids.shape[-1]
        if tail:  # the tail tokens: each p_tail, sum of their log q = all minus the top-k's
            kl = kl + tail * p_tail * log_p_tail - p_tail * (log_q.sum(-1) - log_q_top.sum(-1))
        ctx.save_for_backward(log_q, ids, p_top, p_tail)
        ctx.temperature, ctx.dtype = temperature, student.dtype
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        log_q, ids, p_top, p_tail = ctx.saved_tensors
        scale = (grad / ctx.temperature)[:, None]
        dz = log_q.exp().sub_(p_tail[:, None])  # q - p, with p the tail's everywhere ...
        dz.scatter_add_(1, ids, -(p_top - p_tail[:, None]))  # ... and the top-k's at their ids
        return dz.mul_(scale).to(ctx.dtype), None, None


class _TopKTemperedReverseKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student: Tensor, rows: TopKRows, temperature: float) -> Tensor:
        log_q = _student_log_probs(student, temperature)
        q = log_q.exp()
        ids = rows.ids.long()
        q_top = q.gather(1, ids)
        log_p_top, log_p_tail = rows.log_probs(temperature)
        tail = rows.vocab_size - ids.shape[-1]
        # sum_i q_i (log q_i - log p_i): log p is the top-k's at their ids, the tail's elsewhere
        rkl = (q * log_q).sum(-1) - (q_top * log_p_top).sum(-1)
        base = torch.zeros_like(log_p_tail)
        if tail:
            rkl = rkl - log_p_tail * (1 - q_top.sum(-1))
            base = log_p_tail
        ctx.save_for_backward(q, log_q, ids, log_p_top, base, rkl)
        ctx.temperature, ctx.dtype = temperature, student.dtype
        return rkl

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        q, log_q, ids, log_p_top, base, rkl = ctx.saved_tensors
        # d/ds_j = q_j * (log q_j - log p_j - RKL)
        dz = log_q - (base + rkl)[:, None]
        dz.scatter_add_(1, ids, -(log_p_top - base[:, None]))
        return dz.mul_(q).mul_((grad / ctx.temperature)[:, None]).to(ctx.dtype), None, None


def topk_tempered_reverse_kl(student_logits: Tensor, teacher: TopKRows, temperature: float) -> Tensor:
    """Per-row ``KL(softmax(z_s / T) || softmax(z_t / T))`` against a top-k teacher with a uniform
    tail (no T^2 factor); equal to the reverse KL of the expanded teacher rows."""
    _check_rows(student_logits, teacher)
    result: Tensor = _TopKTemperedReverseKL.apply(student_logits, teacher, float(temperature))
    return result


def _check_rows(student_logits: Tensor, teacher: TopKRows) -> None:
    if student_logits.shape[-1] != teacher.vocab_size or student_logits.shape[0] != teacher.ids.shape[0]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} do not match top-k teacher rows "
            f"({teacher.ids.shape[0]}, {teacher.vocab_size})"
        )


def topk_tempered_kl(student_logits: Tensor, teacher: TopKRows, temperature: float) -> Tensor:
    """Per-row ``KL(softmax(z_t / T) || softmax(z_s / T))`` (no T^2 factor) of ``(N, V)`` student
    logits against a top-k teacher with a uniform tail; equal to
    :func:`~darkknowledge.methods.functional.tempered_kl` of the expanded teacher rows."""
    _check_rows(student_logits, teacher)
    result: Tensor = _TopKTemperedKL.apply(student_logits, teacher, float(temperature))
    return result
