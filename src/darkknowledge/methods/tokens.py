"""Any logit method over language-model tokens: masked, averaged over valid tokens, chunked.

A method's loss function sees ``(N, V)`` rows and returns terms that are means over its
rows. Over ``[B, T, V]`` student/teacher logits and ``[B, T]`` targets (``ignore_index``
marks padding), :func:`token_terms` keeps the valid tokens only and calls the method's own
forward on groups of them; each group's terms are weighted by its share of valid tokens,
so every term is the mean of the method's per-row loss over the valid tokens. No formula
is repeated here.

What a group is (a method's ``token_batch``): rows are independent for most methods
(``"token"``, the default), so a group is any chunk of at most ``chunk_tokens`` valid
tokens. A method whose loss couples the rows of its batch declares what its batch is over
tokens: ``"sequence"`` (DIST's intra-class correlation, ISATS's batch-median temperature:
the valid tokens of one sequence form a batch and a group), or ``"batch"`` (SCKD's gate
on the gradients of the whole batch: all valid tokens, one group, computed with plain
autograd and never chunked). docs/methods.md, "Language models".

Chunked (``chunk_tokens`` set), the groups run inside one autograd Function that, in the
forward, computes each group's terms and the gradient of their sum with respect to that
group's logits and keeps only the gradient (written into one ``[B*T, V]`` buffer). At
most one group's full-vocabulary probabilities exist at a time, in the forward and the
backward. If the terms reach the backward with unequal weights (not their plain sum), the
groups are recomputed one at a time with those weights. Learnable method parameters
(e.g. CTKD's temperature) get their gradients the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from darkknowledge.methods.base import DistillMethod, StepContext

IGNORE_INDEX = -100
CHUNK_TOKENS = 128  # default group size; its peak memory: docs/methods.md, "Language models"


class TokenTeacher(Protocol):
    """A teacher signal over tokens that yields full-vocabulary logit rows on demand."""

    vocab_size: int

    def rows(self, index: Tensor) -> Tensor:
        """``(len(index), vocab_size)`` logits of the flattened tokens ``index``."""
        ...

    # optional: ``statistics(index) -> TeacherStatistics | None``, the full distribution's
    # statistics of those tokens where the signal recorded them (a top-k cache); and
    # ``topk_rows(index) -> TopKRows | None``, the same rows as top-k logits, which methods with
    # a ``topk_loss_fn`` (KD, reverse KL) use instead of the full rows


class DenseTeacher:
    """Teacher logits held as a ``[B, T, V]`` tensor (live teacher)."""

    def __init__(self, logits: Tensor):
        if logits.dim() != 3:
            raise ValueError(f"teacher logits must be (batch, tokens, vocab), got {tuple(logits.shape)}")
        self.shape = tuple(logits.shape)
        self.vocab_size = logits.shape[-1]
        self._flat = logits.detach().reshape(-1, self.vocab_size)

    def rows(self, index: Tensor) -> Tensor:
        return self._flat.index_select(0, index)


TOKEN_BATCHES = ("token", "sequence", "batch")


def token_batch(method: DistillMethod) -> str:
    """What the method's batch is over tokens: one of :data:`TOKEN_BATCHES`."""
    scope = getattr(method, "token_batch", "token")
    if scope not in TOKEN_BATCHES:
        raise ValueError(f"method {method.name}: token_batch must be one of {TOKEN_BATCHES}, got {scope!r}")
    return str(scope)


def token_groups(
    targets: Tensor, scope: str, chunk_tokens: int | None, ignore_index: int = IGNORE_INDEX
) -> list[tuple[Tensor, float]]:
    """``(flat row indices, share of the valid tokens)`` per group (see the module docstring).

    With no valid token at all, one group of the first row with share 0 (terms and
    gradients are exact zeros, the term names stay those of the method).
    """
    if targets.dim() != 2:
        raise ValueError(f"token targets must be (batch, tokens), got {tuple(targets.shape)}")
    valid = targets != ignore_index
    total = int(valid.sum())
    if total == 0:
        return [(torch.zeros(1, dtype=torch.long, device=targets.device), 0.0)]
    seq_len = targets.shape[1]
    if scope == "sequence":
        groups = []
        for b, row in enumerate(valid):
            idx = row.nonzero().squeeze(1) + b * seq_len
            if idx.numel():
                groups.append((idx, idx.numel() / total))
        return groups
    idx = valid.reshape(-1).nonzero().squeeze(1)
    size = total if chunk_tokens is None or scope == "batch" else chunk_tokens
    return [(part, part.numel() / total) for part in idx.split(size)]


class _GroupRunner:
    """Evaluates a method over token groups, optionally with gradients."""

    def __init__(
        self,
        method: DistillMethod,
        teacher: TokenTeacher | None,
        targets: Tensor,
        groups: list[tuple[Tensor, float]],
        ctx: StepContext,
    ):
        self.method, self.teacher, self.ctx = method, teacher, ctx
        self.targets = targets.reshape(-1).clamp(min=0)  # ignored rows only reach a share-0 group
        self.groups = groups
        self.names: list[str] = []
        # the statistics the signal recorded from the full distribution (a top-k cache), if any
        self.statistics = getattr(teacher, "statistics", None)
        # top-k rows only for a method that can use them (else each group would select them for nothing)
        self.topk_rows = getattr(teacher, "topk_rows", None) if method.topk_loss_fn is not None else None

    def call(self, student_rows: Tensor, index: Tensor) -> dict[str, Tensor]:
        ctx = self.ctx
        if self.statistics is not None and (found := self.statistics(index)) is not None:
            ctx = dataclasses.replace(ctx, teacher_statistics=found)
        targets = self.targets.index_select(0, index)
        if self.topk_rows is not None and (rows := self.topk_rows(index)) is not None:
            terms = self.method.forward_topk(student_rows, rows, targets, ctx)
            if terms is not None:
                return terms
        teacher_rows = None if self.teacher is None else self.teacher.rows(index)
        return self.method(student_rows, teacher_rows, targets, ctx)

    def stack(self, terms: dict[str, Tensor]) -> Tensor:
        if not self.names:
            self.names = list(terms)
        elif list(terms) != self.names:
            raise ValueError(f"method {self.method.name} returned terms {list(terms)}, expected {self.names}")
        return torch.stack([terms[n].reshape(()) for n in self.names])

    def run(
        self, student: Tensor, params: Sequence[Tensor], weights: Tensor | None, need_grad: bool
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        """Summed weighted terms ``(K,)``, d(sum of terms [x weights])/d student, and the same for ``params``."""
        grad = torch.zeros_like(student) if need_grad else None
        param_grads: list[Tensor | None] = [None] * len(params)
        values: Tensor | None = None
        for index, share in self.groups:
            rows = student.index_select(0, index).detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                part = self.stack(self.call(rows, index)) * share
                total = part.sum() if weights is None else (part * weights).sum()
            values = part.detach() if values is None else values + part.detach()
            if not need_grad:
                continue
            wanted = [rows, *params]
            grads = (
                torch.autograd.grad(total, wanted, allow_unused=True) if total.requires_grad else [None] * len(wanted)
            )
            assert grad is not None
            if grads[0] is not None:
                grad.index_copy_(0, index, grads[0].to(grad.dtype))
            for i, g in enumerate(grads[1:]):
                previous = param_grads[i]
                if g is not None:
                    param_grads[i] = g if previous is None else previous + g
        assert values is not None
        return values, grad, param_grads


class _ChunkedTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, runner: _GroupRunner, student: Tensor, *params: Tensor) -> Tensor:
        values, grad, param_grads = runner.run(student, params, None, need_grad=True)
        ctx.runner, ctx.grad, ctx.param_grads = runner, grad, param_grads
        ctx.save_for_backward(student, *params)
        return values

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor) -> tuple[Any, ...]:
        student, *params = ctx.saved_tensors
        grad, param_grads = ctx.grad, ctx.param_grads
        ctx.grad = ctx.param_grads = None  # the stored gradient is used at most once
        uniform = bool((grad_values == grad_values[0]).all())
        if grad is not None and uniform:
            scale = grad_values[0]
            grad = grad.mul_(scale.to(grad.dtype))
            param_grads = [None if g is None else g * scale for g in param_grads]
        else:  # weighted terms or a second backward: recompute group by group
            runner: _GroupRunner = ctx.runner
            saved = {k: list(v) for k, v in runner.method._stats.items()}
            _, grad, param_grads = runner.run(student, params, grad_values.float(), need_grad=True)
            runner.method._stats = saved  # statistics were recorded by the forward already
        return (None, grad, *param_grads)


def token_terms(
    method: DistillMethod,
    student_logits: Tensor,
    teacher: Tensor | TokenTeacher | None,
    targets: Tensor,
    ctx: StepContext | None = None,
    *,
    chunk_tokens: int | None = CHUNK_TOKENS,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Tensor]:
    """``method``'s weighted terms over ``[B, T, V]`` logits, averaged over the valid tokens.

    ``teacher``: ``[B, T, V]`` logits, any :class:`TokenTeacher` (e.g. a top-k cache) or
    None for methods without a teacher. ``chunk_tokens=None`` computes the groups with
    plain autograd (every group's intermediates kept for the backward: the reference).
    """
    if student_logits.dim() != 3:
        raise ValueError(f"student logits must be (batch, tokens, vocab), got {tuple(student_logits.shape)}")
    if targets.shape != student_logits.shape[:2]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match logits {tuple(student_logits.shape)}")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive or None, got {chunk_tokens}")
    source: TokenTeacher | None = DenseTeacher(teacher) if isinstance(teacher, Tensor) else teacher
    vocab = student_logits.shape[-1]
    if source is not None and source.vocab_size != vocab:
        raise ValueError(f"teacher vocabulary {source.vocab_size} differs from the student's {vocab}")
    if getattr(source, "shape", student_logits.shape) != tuple(student_logits.shape):
        raise ValueError(f"teacher logits {getattr(source, 'shape', None)} differ from {tuple(student_logits.shape)}")
    step = ctx if ctx is not None else StepContext()
    scope = token_batch(method)
    groups = token_groups(targets, scope, chunk_tokens, ignore_index)
    runner = _GroupRunner(method, source, targets, groups, step)
    flat = student_logits.reshape(-1, vocab)
    if chunk_tokens is None or scope == "batch":
        out: dict[str, Tensor] = {}
        for index, share in groups:
            for name, value in runner.call(flat.index_select(0, index), index).items():
                out[name] = out[name] + share * value if name in out else share * value
        return out
    params = [p for p in method.parameters() if p.requires_grad]
    need_grad = torch.is_grad_enabled() and (flat.requires_grad or bool(params))
    if need_grad:
        values = _ChunkedTerms.apply(runner, flat, *params)
    else:
        values = runner.run(flat, params, None, need_grad=False)[0]
    return {name: values[i] for i, name in enumerate(runner.names)}


class TokenMethod(nn.Module):
    """A method applied over tokens: ``TokenMethod(method)(student, teacher, targets, ctx)``
    with ``[B, T, V]`` logits and ``[B, T]`` targets returns :func:`token_terms`."""

    def __init__(
        self, method: DistillMethod, chunk_tokens: int | None = CHUNK_TOKENS, ignore_index: int = IGNORE_INDEX
    ):
        super().__init__()
        self.method, self.chunk_tokens, self.ignore_index = method, chunk_tokens, ignore_index

    @property
    def needs_teacher(self) -> bool:
        return self.method.needs_teacher

    def setup(self, ctx: Any) -> None:
        self.method.setup(ctx)

    def epoch_stats(self) -> dict[str, float]:
        return self.method.epoch_stats()

    def check_schedule(self, epochs: int) -> list[str]:
        return self.method.check_schedule(epochs)

    def forward(
        self,
        student_logits: Tensor,
        teacher: Tensor | TokenTeacher | None,
        targets: Tensor,
        ctx: StepContext | None = None,
    ) -> dict[str, Tensor]:
        return token_terms(
            self.method,
            student_logits,
            teacher,
            targets,
            ctx,
            chunk_tokens=self.chunk_tokens,
            ignore_index=self.ignore_index,
        )
