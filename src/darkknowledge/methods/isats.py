"""ISATS: instance-specific asymmetric temperature scaling.

Source: Li, Fan, Tao, Gan, Zhan, "Exploring Dark Knowledge under Various Teacher
Capacities and Addressing Capacity Mismatch" (arXiv 2405.13078; v2 in Frontiers of
Computer Science, 2026). Only the abstract, a press release and third-party summaries
were readable and **no official code exists**: "for each example, ISATS applies
different distillation temperatures to the correct class versus all incorrect classes,
and chooses the incorrect-class temperature to maximize their output variance". The
search procedure below is **our reconstruction** (see docs/methods.md and
``/work/shared/reference/methods.md`` §3.3), with three selectable rules.

Objective per instance i (teacher logits z, label y): the population variance (ddof 0)
of the non-target entries of the *full* softmax (not renormalised, as in the ATS
authors' "derived variance"):

    V_i(tau1, tau2) = Var_{c != y}[ q_c(z; tau1, tau2) ]   (q: the ATS softmax)

With tau1 fixed, V_i usually *decreases* monotonically in tau2 (all mass collapses on
the top wrong class as tau2 -> 0), so an unconstrained search is degenerate. Rules:

* ``"A"`` (default): symmetric search tau* = argmax_tau V_i(tau, tau) (an interior
  optimum exists), then asymmetric application: non-target classes at tau*, the target
  at a higher temperature: ``target_rule="ratio"``: tau1 = target_ratio * tau*;
  ``target_rule="fixed"``: tau1 = max(target_temperature, tau*) (clamped so that the
  target is never colder than the non-targets).
* ``"B"``: ratio-tied search tau* = argmax_tau V_i(k tau, tau), k = ``target_ratio``;
  applied as tau1 = k tau*, tau2 = tau*.
* ``"C"``: bounded search with fixed tau1 = ``target_temperature``:
  tau* = argmax over tau2 in [tau_min, min(tau_max, tau1)] of V_i(tau1, tau2). Usually
  returns tau_min (the monotone case above), so tau_min acts as a hyperparameter.

Search (:func:`isats_search`; vectorised over the batch, under ``no_grad``, no Python
loop over samples; the diagnostics' ``optimal_nontarget_temperature`` is this function
with rule A). With the non-target logits shifted so their maximum is 0
(``s_c = z_c - max_{c != y} z_c``), ``u_c = exp(s_c / tau)`` in (0, 1] and the target's
shifted scaled logit ``t_y = y_offset + y_slope / tau`` (A: ``y_slope = z_y - max``;
B: ``z_y / target_ratio - max``; C: ``y_offset = z_y / target_temperature``,
``y_slope = -max`` and tau_max capped at target_temperature):

    log V = log Var_c[u_c] - 2 log Z,   log Z = logaddexp(t_y, log sum_c u_c)

Nothing under- or overflows for logit gaps of hundreds; Var_c[u] is two-pass (sum, then
centred sum of squares), so nearly equal u stay accurate. The (B, C) work is in the
logits' dtype (float32 for half/bf16), the per-row terms and the search state in float64,
which makes tau* independent of a row's position in the batch. Steps, on u = log tau:

1. a log-spaced grid of ``grid_size`` (12) points in [tau_min, tau_max], evaluated in
   blocks of <= 2^20 (rows x points x classes) elements (one pass for a training batch;
   one (N, C-1) buffer per point for big diagnostics chunks);
2. ``refine_size`` (10) golden-section steps between the best grid point's neighbours
   (bracket 2 log(40) / 11 ~ 0.67 shrunk to ~0.0055, tau* to about +-0.3 %; 24
   objective evaluations in all); never worse than the best grid point.
   ``refine_size=0`` instead evaluates the vertex of the parabola through the best grid
   point and its neighbours (log V against log tau), kept if better.

Tested within 1 % of a 20,000-point float64 brute force for all three rules (a single
64-point grid plus the parabola is within ~0.5 %). No host syncs and only shape-based
Python branches. Rows whose variance is 0 at every tau (C = 2: one non-target entry; or
all non-target logits equal) have no optimum and get ``undefined`` (the loss: tau_min;
diagnostics: NaN, counted).

Student loss as ATS: ce_weight * CE + kd_weight * tau_s^2 * softCE(q, softmax(v/tau_s)).
The chosen non-target temperature tau* is recorded each step as ``isats_tau``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from darkknowledge.methods.ats import ats_teacher_log_probs, soft_label_terms
from darkknowledge.methods.base import DistillMethod, MethodParams, StepContext, register_method
from darkknowledge.methods.functional import as_float, check_logits, standardize_logits

SearchRule = Literal["A", "B", "C"]
TargetRule = Literal["ratio", "fixed"]


class ISATSParams(MethodParams):
    ce_weight: float = Field(0.5, ge=0, description="Weight of the cross-entropy term (as ATS).")
    kd_weight: float = Field(0.5, ge=0, description="Weight of the tau_s^2-scaled soft cross-entropy term (as ATS).")
    student_temperature: float = Field(1.0, gt=0, description="Student softmax temperature tau_s (ATS: 1).")
    search_rule: SearchRule = Field(
        "A",
        description=(
            "Per-instance temperature search (our reconstruction): A = symmetric search then asymmetric "
            "application; B = ratio-tied search (tau1 = target_ratio * tau2); C = tau2 searched in "
            "[tau_min, target_temperature] with tau1 = target_temperature fixed."
        ),
    )
    tau_min: float = Field(0.5, gt=0, description="Lower end of the searched temperature range.")
    tau_max: float = Field(20.0, gt=0, description="Upper end of the searched temperature range (> tau_min).")
    grid_size: int = Field(
        64, ge=3, le=1024, description="Points of the log-spaced search grid over [tau_min, tau_max] (first stage)."
    )
    refine_size: int = Field(
        0,
        ge=0,
        le=1024,
        description=(
            "Golden-section iterations in log tau between the best grid point's neighbours "
            "(0 = one parabolic-vertex step on the grid instead)."
        ),
    )
    target_rule: TargetRule = Field(
        "ratio",
        description=(
            "Rule A only: target temperature tau1 = target_ratio * tau* ('ratio') or "
            "max(target_temperature, tau*) ('fixed')."
        ),
    )
    target_ratio: float = Field(
        2.0, ge=1, description="k in tau1 = k * tau* (rule A with target_rule='ratio', and rule B)."
    )
    target_temperature: float = Field(
        4.0, gt=0, description="Fixed target temperature tau1 (rule A with target_rule='fixed', and rule C)."
    )
    center_logits: bool = Field(
        False, description="Subtract each row's mean teacher logit first (asymmetric scaling is not shift-invariant)."
    )
    logit_standardization: bool = Field(
        False, description="Z-score teacher and student logits before search and soft labels (LS-KD); CE stays raw."
    )

    @field_validator("tau_max")
    @classmethod
    def _max_above_min(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("tau_min")
        if lo is not None and v <= lo:
            raise ValueError(f"tau_max ({v}) must be larger than tau_min ({lo})")
        return v

    @field_validator("target_temperature")
    @classmethod
    def _rule_c_range(cls, v: float, info: ValidationInfo) -> float:
        lo = info.data.get("tau_min")
        if info.data.get("search_rule") == "C" and lo is not None and v < lo:
            raise ValueError(f"rule C searches [tau_min, target_temperature]; target_temperature ({v}) < tau_min ({lo})")
        return v


_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...
# Grid points are evaluated in blocks of at most this many (rows x points x classes)
# elements: one pass for a training batch, one (N, C-1) buffer per point for big chunks.
_GRID_BLOCK_ELEMENTS = 1 << 20


def split_nontarget(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(z_nt, z_y)``: the (N, C-1) non-target entries of ``logits`` (class order kept)
    and the (N,) target entries."""
    n, c = logits.shape
    targets = targets.long().reshape(-1)
    cols = torch.arange(c - 1, device=logits.device).expand(n, c - 1)
    cols = cols + (cols >= targets.unsqueeze(1)).long()
    return logits.gather(1, cols), logits.gather(1, targets.unsqueeze(1)).squeeze(1)


def _row_dtype(x: Tensor) -> torch.dtype:
    """Precision of the per-row (N-sized) quantities: float64 (cheap at N values, and it
    keeps the search's comparisons free of float32 rounding in log/logaddexp, whose
    vectorised and scalar CPU paths can differ by an ulp, which would make tau* depend on
    a row's position in the batch); MPS has no float64."""
    return x.dtype if x.device.type == "mps" else torch.float64


def _log_variance(
    s_nt: Tensor, y_slope: Tensor, y_offset: Tensor | None, inv_tau: Tensor, out: Tensor | None = None
) -> Tensor:
    """``log Var_{c != y}[q_c]`` for K candidate inverse temperatures per row: ``(K, N)``.

    ``s_nt`` (N, n): shifted non-target logits (row max 0), in the compute dtype; the
    scaled logits are ``s_c * inv_tau`` off-target and ``y_offset + y_slope * inv_tau``
    at the target. ``inv_tau`` (K, N) or (K, 1), ``y_slope``/``y_offset`` (N,) and the
    result are in the per-row dtype (see :func:`_row_dtype`); ``out``: optional (K, N, n)
    scratch buffer. ``-inf`` where the variance is 0.
    """
    n = s_nt.shape[-1]
    u = torch.mul(s_nt, inv_tau.to(s_nt.dtype).unsqueeze(-1), out=out)  # (K, N, n), <= 0
    u.exp_()  # in (0, 1]; the row's top non-target class at 1
    total = u.sum(-1)  # >= 1
    u.sub_((total / n).unsqueeze(-1))  # two-pass variance: centre, then square
    sum_sq = u.square_().sum(-1)
    t_y = y_slope * inv_tau if y_offset is None else torch.addcmul(y_offset, y_slope, inv_tau)
    log_z = torch.logaddexp(t_y, torch.log(total.to(t_y.dtype)))
    return torch.log(sum_sq.to(t_y.dtype) / n) - 2.0 * log_z


def nontarget_log_variance(
    s_nt: Tensor, s_y: Tensor, tau: Tensor | float, out: Tensor | None = None, *, y_offset: Tensor | None = None
) -> Tensor:
    """``log Var_{c != y}[softmax(z / tau)_c]`` per row, ``(N,)`` (``-inf`` where it is 0).

    ``s_nt``: (N, C-1) non-target logits shifted so each row's max is 0; ``s_y``: (N,)
    target logit with the same shift; ``tau``: scalar or (N,) temperatures; ``out``: an
    optional (N, C-1) scratch buffer. With ``y_offset`` (N,) the scaled target logit is
    ``y_offset + s_y / tau`` instead of ``s_y / tau`` (rules B and C, see
    :func:`isats_search`). With u = exp(s / tau): Var = Var_c[u] / Z^2,
    log Z = logaddexp(s_y / tau, log sum u); Var_c[u] is taken in two passes (sum, then
    centred sum of squares), so it stays accurate when the u are nearly equal.
    """
    acc = _row_dtype(s_nt)
    inv = torch.as_tensor(tau, dtype=acc, device=s_nt.device).reciprocal().reshape(1, -1)
    offset = None if y_offset is None else y_offset.to(acc)
    buf = out.unsqueeze(0) if out is not None else None
    return _log_variance(s_nt, s_y.to(acc), offset, inv, buf).squeeze(0).to(s_nt.dtype)


def _parabolic_argmax(values: Tensor, first: float, step: float) -> Tensor:
    """Per row of ``values`` (N, K), sampled on the uniform grid ``first + k * step``:
    the vertex of the parabola through the grid argmax's neighbourhood (the three
    points centred on it, or the three nearest an edge), kept within one step of the
    argmax and inside the grid; the plain argmax where the fit is flat or not finite."""
    num = values.shape[-1]
    j = values.argmax(-1)
    centre = j.clamp(1, num - 2)
    idx = centre.unsqueeze(-1) + torch.arange(-1, 2, device=values.device)
    fm, f0, fp = values.gather(-1, idx).unbind(-1)
    curvature = fm - 2.0 * f0 + fp
    concave = (curvature < 0) & (curvature > float("-inf"))
    safe = torch.where(concave, curvature, torch.ones_like(curvature))
    vertex = torch.where(concave, centre + 0.5 * (fm - fp) / safe, j.to(values.dtype))
    lower = (j - 1).clamp(min=0).to(values.dtype)
    upper = (j + 1).clamp(max=num - 1).to(values.dtype)
    vertex = torch.minimum(torch.maximum(vertex, lower), upper)
    return first + vertex * step


def _maximise_log_variance(
    s_nt: Tensor, y_slope: Tensor, y_offset: Tensor | None, lo: float, hi: float, grid_size: int, iterations: int
) -> tuple[Tensor, Tensor]:
    """Grid + golden-section maximisation of log V over u = log tau in [log lo, log hi]:
    ``(argmax u, best log V on the grid)``, both (N,) in the per-row dtype."""
    num, n = s_nt.shape
    u_lo, u_hi = math.log(lo), math.log(hi)
    grid = torch.linspace(u_lo, u_hi, grid_size, device=s_nt.device, dtype=y_slope.dtype)
    inv_grid = torch.exp(-grid).unsqueeze(1)  # (K, 1)
    block = max(1, min(grid_size, _GRID_BLOCK_ELEMENTS // max(1, num * n)))
    buf = s_nt.new_empty((block, num, n))
    values = torch.cat(
        [
            _log_variance(s_nt, y_slope, y_offset, inv_grid[k : k + block], buf[: min(block, grid_size - k)])
            for k in range(0, grid_size, block)
        ]
    )  # (K, N)
    best_val, best_idx = values.max(0)
    best_u = grid[best_idx]
    one = buf[:1]

    def f(u: Tensor) -> Tensor:
        return _log_variance(s_nt, y_slope, y_offset, torch.exp(-u).unsqueeze(0), one).squeeze(0)

    if iterations > 0:
        # Golden-section search on [a, b] = the best grid point's neighbours (the
        # objective need not be unimodal over the whole range, hence the grid first),
        # by reflection: the next probe is the mirror image a + b - m of the best interior
        # point m, which keeps the interior points at the golden ratios. Each step
        # shrinks the bracket by 0.618.
        a = grid[(best_idx - 1).clamp(min=0)]
        b = grid[(best_idx + 1).clamp(max=grid_size - 1)]
        m = b - _INV_PHI * (b - a)
        fm = f(m)
        for _ in range(iterations + 1):
            x = a + b - m
            fx = f(x)
            better = fx > fm
            # the maximum now lies in [a, m] or [m, b] (x better), or [x, b] or [a, x]
            # (m better): the lower end moves up exactly when "x better" and "x left of
            # m" differ, to min(x, m); otherwise the upper end moves down to max(x, m)
            move_lower = better != (x < m)
            a = torch.where(move_lower, torch.minimum(x, m), a)
            b = torch.where(move_lower, b, torch.maximum(x, m))
            m = torch.where(better, x, m)
            fm = torch.where(better, fx, fm)
        cand, cand_val = m, fm
    elif grid_size >= 3:
        # no golden section: the vertex of the parabola through the best grid point and
        # its neighbours (log V against log tau)
        cand = _parabolic_argmax(values.T, u_lo, (u_hi - u_lo) / (grid_size - 1))
        cand_val = f(cand)
    else:
        return best_u, best_val
    # never worse than the best grid point
    return torch.where(cand_val > best_val, cand, best_u).clamp(u_lo, u_hi), best_val


@torch.no_grad()
def isats_search(
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    search_rule: SearchRule = "A",
    tau_min: float = 0.5,
    tau_max: float = 20.0,
    target_ratio: float = 2.0,
    target_temperature: float = 4.0,
    grid_size: int = 12,
    refine_size: int = 10,
    undefined: float | None = None,
) -> Tensor:
    """Per-instance non-target temperature tau* ``(B,)`` maximising the non-target variance.

    See the module docstring for the rules and the search. ``teacher_logits`` (B, C) are
    used as given (centre or standardise them beforehand if wanted), in their own
    precision (half/bf16 upcast to float32). ``grid_size``: log-spaced grid points
    (>= 2); ``refine_size``: golden-section iterations (0: one parabolic-vertex step
    instead). Rows with no optimum (the variance is 0 at every tau: C = 2, or all
    non-target logits equal) get ``undefined`` (default: ``tau_min``; NaN marks them).
    """
    z = as_float(teacher_logits).detach()
    if z.dim() != 2:
        raise ValueError(f"teacher logits must be (B, C), got {tuple(z.shape)}")
    lo, hi = float(tau_min), float(tau_max)
    if search_rule == "C":
        hi = min(hi, float(target_temperature))
    elif search_rule not in ("A", "B"):
        raise ValueError(f"unknown ISATS search rule {search_rule!r} (use 'A', 'B' or 'C')")
    if not 0 < lo <= hi:
        raise ValueError(f"empty ISATS search range [{lo}, {hi}]")
    if grid_size < 2:
        raise ValueError(f"ISATS grid_size must be at least 2, got {grid_size}")
    if refine_size < 0:
        raise ValueError(f"ISATS refine_size must be >= 0, got {refine_size}")
    fill = lo if undefined is None else float(undefined)
    num, num_classes = z.shape
    if num == 0 or num_classes < 3:
        return torch.full((num,), fill, dtype=z.dtype, device=z.device)
    z_nt, z_y = split_nontarget(z, targets)
    top = z_nt.amax(1)
    s_nt = z_nt.sub_(top.unsqueeze(1))  # <= 0, max 0 per row
    # The target's scaled logit, minus the shift top / tau, is  y_offset + y_slope / tau
    # (per-row quantities in float64, see _row_dtype).
    acc = _row_dtype(z)
    top, z_y = top.to(acc), z_y.to(acc)
    y_offset: Tensor | None = None
    if search_rule == "A":
        y_slope = z_y - top
    elif search_rule == "B":
        y_slope = z_y / target_ratio - top
    else:
        y_slope, y_offset = -top, z_y / target_temperature
    log_tau, best = _maximise_log_variance(s_nt, y_slope, y_offset, lo, hi, grid_size, refine_size)
    return torch.where(torch.isfinite(best), log_tau.exp(), fill).to(z.dtype)


def isats_temperatures(
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    search_rule: SearchRule = "A",
    target_rule: TargetRule = "ratio",
    target_ratio: float = 2.0,
    target_temperature: float = 4.0,
    tau_min: float = 0.5,
    tau_max: float = 20.0,
    grid_size: int = 12,
    refine_size: int = 10,
) -> tuple[Tensor, Tensor]:
    """Per-row ``(target_temperature, nontarget_temperature)``, both ``(B,)``, no grad."""
    tau = isats_search(
        teacher_logits,
        targets,
        search_rule=search_rule,
        tau_min=tau_min,
        tau_max=tau_max,
        target_ratio=target_ratio,
        target_temperature=target_temperature,
        grid_size=grid_size,
        refine_size=refine_size,
    )
    if search_rule == "C":
        tau1 = torch.full_like(tau, target_temperature)
    elif search_rule == "B" or target_rule == "ratio":
        tau1 = target_ratio * tau
    elif target_rule == "fixed":
        tau1 = tau.clamp(min=target_temperature)
    else:
        raise ValueError(f"unknown ISATS target rule {target_rule!r} (use 'ratio' or 'fixed')")
    return tau1, tau


def _isats(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    student_temperature: float,
    center_logits: bool,
    logit_standardization: bool,
    **search: object,
) -> tuple[dict[str, Tensor], Tensor]:
    check_logits(student_logits, teacher_logits, targets)
    z_t = as_float(teacher_logits)
    kd_student = None
    if logit_standardization:
        z_t = standardize_logits(z_t)
        kd_student = standardize_logits(student_logits)
    if center_logits:
        z_t = z_t - z_t.mean(dim=-1, keepdim=True)
    tau1, tau2 = isats_temperatures(z_t, targets, **search)  # type: ignore[arg-type]
    log_q = ats_teacher_log_probs(z_t, targets, target_temperature=tau1, nontarget_temperature=tau2)
    terms = soft_label_terms(
        student_logits,
        log_q,
        targets,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        student_temperature=student_temperature,
        kd_student_logits=kd_student,
    )
    return terms, tau2


def isats_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    ce_weight: float = 0.5,
    kd_weight: float = 0.5,
    student_temperature: float = 1.0,
    search_rule: SearchRule = "A",
    target_rule: TargetRule = "ratio",
    target_ratio: float = 2.0,
    target_temperature: float = 4.0,
    tau_min: float = 0.5,
    tau_max: float = 20.0,
    grid_size: int = 12,
    refine_size: int = 10,
    center_logits: bool = False,
    logit_standardization: bool = False,
) -> dict[str, Tensor]:
    """ISATS as named, weighted terms ``{"ce", "kd"}`` (use :func:`isats_temperatures`
    to get the per-instance temperatures)."""
    terms, _ = _isats(
        student_logits,
        teacher_logits,
        targets,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        student_temperature=student_temperature,
        center_logits=center_logits,
        logit_standardization=logit_standardization,
        search_rule=search_rule,
        target_rule=target_rule,
        target_ratio=target_ratio,
        target_temperature=target_temperature,
        tau_min=tau_min,
        tau_max=tau_max,
        grid_size=grid_size,
        refine_size=refine_size,
    )
    return terms


@register_method
class ISATS(DistillMethod):
    name = "isats"
    summary = "Instance-specific ATS: per-sample temperature maximising non-target variance (reconstruction)."
    Params = ISATSParams

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        p = self.params
        terms, tau = _isats(
            student_logits,
            teacher_logits,
            targets,
            ce_weight=p.ce_weight,
            kd_weight=p.kd_weight,
            student_temperature=p.student_temperature,
            center_logits=p.center_logits,
            logit_standardization=p.logit_standardization,
            search_rule=p.search_rule,
            target_rule=p.target_rule,
            target_ratio=p.target_ratio,
            target_temperature=p.target_temperature,
            tau_min=p.tau_min,
            tau_max=p.tau_max,
            grid_size=p.grid_size,
            refine_size=p.refine_size,
        )
        self.record("isats_tau", tau)
        return terms
