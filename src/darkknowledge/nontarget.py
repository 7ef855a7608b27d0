"""The non-target maths shared by the methods and the diagnostics.

* :func:`split_nontarget`: the (N, C-1) non-target entries and the (N,) target entries;
* :func:`nontarget_variance`: population variance of the non-target probabilities;
* :func:`nontarget_log_variance` and :func:`isats_search`: the per-instance temperature
  tau* that maximises that variance (ISATS's search, also the diagnostics' tau*).

Only torch is imported here, so :mod:`darkknowledge.methods` and
:mod:`darkknowledge.diagnostics` both build on it without importing each other. The
search and its numerics are described in docs/methods.md ("ISATS").
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

SearchRule = Literal["A", "B", "C"]

# Defaults of the tau* search, defined once: ISATS's Params and isats_search use them.
TAU_MIN = 0.5
TAU_MAX = 20.0
GRID_SIZE = 64  # one batched grid ...
REFINE_SIZE = 0  # ... plus a parabola step: tau* within ~0.4 % (docs/performance.md)
TARGET_RATIO = 1.0  # tau1 = tau*: the asymmetric ratio 2 cost 4 points on validation (docs/methods.md)
TARGET_TEMPERATURE = 4.0


def _upcast(x: Tensor) -> Tensor:
    """Half/bf16 to float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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
    s_nt: Tensor, y_slope: Tensor, y_offset: Tensor | None, lo: float, hi: float, grid_size: int, refine_size: int
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

    if refine_size > 0:
        # Golden-section search on [a, b] = the best grid point's neighbours (the
        # objective need not be unimodal over the whole range, hence the grid first),
        # by reflection: the next probe is the mirror image a + b - m of the best interior
        # point m, which keeps the interior points at the golden ratios. Each step
        # shrinks the bracket by 0.618.
        a = grid[(best_idx - 1).clamp(min=0)]
        b = grid[(best_idx + 1).clamp(max=grid_size - 1)]
        m = b - _INV_PHI * (b - a)
        fm = f(m)
        for _ in range(refine_size + 1):
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
    tau_min: float = TAU_MIN,
    tau_max: float = TAU_MAX,
    target_ratio: float = TARGET_RATIO,
    target_temperature: float = TARGET_TEMPERATURE,
    grid_size: int = GRID_SIZE,
    refine_size: int = REFINE_SIZE,
    undefined: float | None = None,
) -> Tensor:
    """Per-instance non-target temperature tau* ``(B,)`` maximising the non-target variance.

    Rules A/B/C and the search: docs/methods.md ("ISATS"). ``teacher_logits`` (B, C) are
    used as given (centre or standardise them beforehand if wanted), in their own
    precision (half/bf16 upcast to float32). ``grid_size``: log-spaced grid points
    (>= 2); ``refine_size``: golden-section iterations (0: one parabolic-vertex step
    instead). Rows with no optimum (the variance is 0 at every tau: C = 2, or all
    non-target logits equal) get ``undefined`` (default: ``tau_min``; NaN marks them).
    """
    z = _upcast(teacher_logits).detach()
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


def nontarget_variance(probs: Tensor, mask: Tensor) -> Tensor:
    """Population variance (ddof = 0) of the non-target entries of each probability row.

    ``probs`` is ``(..., C)`` (the full softmax, *not* renormalised over the non-target
    classes, as in the ATS authors' "derived variance"); ``mask`` marks the target and
    broadcasts against ``probs``. Computed centred (no ``E[x^2] - E[x]^2`` cancellation).
    """
    n = probs.shape[-1] - 1
    zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
    w = torch.where(mask, zero, probs)
    mean = w.sum(-1, keepdim=True) / max(n, 1)
    dev = torch.where(mask, zero, w - mean)
    return dev.pow(2).sum(-1) / max(n, 1)
