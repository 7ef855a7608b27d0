"""Per-instance temperature that maximises the non-target variance (ISATS's tau*).

Definition (Li et al., arXiv 2405.13078, as summarised in
``/work/shared/reference/methods.md`` §3.3, rule (A)): for teacher logits ``z`` and label
``y``,

    tau*(x) = argmax_{tau in [tau_min, tau_max]} Var_{c != y}[ softmax(z / tau)_c ]

with the population variance (ddof 0) of the non-target entries of the *full* softmax
(not renormalised), as in ATS's "derived variance". One symmetric temperature is
searched; this objective has an interior optimum for a confident teacher (the
asymmetric objective with a fixed target temperature is degenerate, see §3.3).

Search (vectorised over rows, no Python loop over samples):

1. a log-spaced grid of ``grid_points`` temperatures in ``[tau_min, tau_max]``;
2. golden-section refinement in log tau inside the bracket formed by the best grid
   point's two neighbours (the objective need not be unimodal over the whole range,
   hence the grid first); the answer is never worse than the best grid point.

Numerics. With the non-target logits shifted so that their maximum is 0
(``s_c = z_c - max_{c != y} z_c <= 0``) and ``u_c = exp(s_c / tau)`` in (0, 1]:

    Var_{c != y}[p_c] = Var_c[u_c] / Z^2,   Z = exp(s_y / tau) + sum_{c != y} u_c

so ``log Var = log Var_c[u] - 2 log Z`` with ``log Z = logaddexp(s_y / tau, log sum u)``.
Nothing under- or overflows even for logit gaps of hundreds; ``Var_c[u]`` is taken
in two passes (sum, then centred sum of squares), so it stays accurate when the u_c
are nearly equal. Rows whose objective is identically zero
(all non-target logits equal, or C = 2) have no optimum: they get ``undefined``
(NaN by default).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["optimal_nontarget_temperature", "nontarget_log_variance", "split_nontarget"]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def split_nontarget(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(z_nt, z_y)``: the (N, C-1) non-target logits (class order kept) and the (N,)
    target logits."""
    n, c = logits.shape
    targets = targets.long().reshape(-1)
    cols = torch.arange(c - 1, device=logits.device).expand(n, c - 1)
    cols = cols + (cols >= targets.unsqueeze(1)).long()
    return logits.gather(1, cols), logits.gather(1, targets.unsqueeze(1)).squeeze(1)


def nontarget_log_variance(s_nt: Tensor, s_y: Tensor, tau: Tensor | float, out: Tensor | None = None) -> Tensor:
    """``log Var_{c != y}[softmax(z / tau)_c]`` per row (``-inf`` where the variance is 0).

    ``s_nt``: (N, C-1) non-target logits shifted so each row's max is 0; ``s_y``: (N,)
    target logit with the same shift; ``tau``: scalar or (N,) temperatures; ``out``: an
    optional (N, C-1) scratch buffer. The variance of u = exp(s / tau) is taken in two
    passes (sum, then centred sum of squares), so it stays accurate when the u are
    nearly equal.
    """
    n = s_nt.shape[1]
    if isinstance(tau, Tensor):
        inv = tau.reciprocal().to(s_nt.dtype)
        inv_col = inv.unsqueeze(1) if inv.dim() == 1 else inv
        u = torch.mul(s_nt, inv_col, out=out) if out is not None else s_nt * inv_col
    else:
        inv = 1.0 / float(tau)
        u = torch.mul(s_nt, inv, out=out) if out is not None else s_nt * inv
    u.exp_()
    total = u.sum(1)
    log_z = torch.logaddexp(s_y * inv, torch.log(total))
    u.sub_((total / n).unsqueeze(1))
    var_u = torch.linalg.vecdot(u, u) / n
    return torch.log(var_u) - 2.0 * log_z


@torch.no_grad()
def optimal_nontarget_temperature(
    logits: Tensor,
    targets: Tensor,
    tau_min: float = 0.5,
    tau_max: float = 20.0,
    *,
    grid_points: int = 12,
    iterations: int = 10,
    dtype: torch.dtype = torch.float32,
    undefined: float = float("nan"),
) -> Tensor:
    """Per-row tau* ``(N,)`` maximising the variance of the non-target softmax entries.

    ``grid_points`` log-spaced temperatures, then ``iterations`` golden-section steps in
    log tau (defaults: bracket width 2 * log(40) / 11 ~ 0.67 shrunk by 0.618^10 to
    0.0055, i.e. tau* to about +-0.3 %; 24 objective evaluations per row). ``dtype``: element-wise compute precision (float32 is ample
    for locating a maximum; float64 for reference checks). Rows with no optimum
    (variance identically zero) get ``undefined``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got {tuple(logits.shape)}")
    if not 0 < tau_min < tau_max:
        raise ValueError(f"need 0 < tau_min < tau_max, got [{tau_min}, {tau_max}]")
    if grid_points < 2:
        raise ValueError("grid_points must be >= 2")
    n, c = logits.shape
    if n == 0:
        return torch.empty(0, dtype=dtype, device=logits.device)
    if c < 3:
        return torch.full((n,), undefined, dtype=dtype, device=logits.device)
    z_nt, z_y = split_nontarget(logits.to(dtype), targets)
    top = z_nt.amax(1)
    s_nt = z_nt - top.unsqueeze(1)
    s_y = z_y - top

    lo, hi = math.log(tau_min), math.log(tau_max)
    grid = torch.linspace(lo, hi, grid_points, dtype=torch.float64).tolist()
    best_val = torch.full((n,), -math.inf, dtype=dtype, device=logits.device)
    best_idx = torch.zeros(n, dtype=torch.long, device=logits.device)
    buf = torch.empty_like(s_nt)
    for i, g in enumerate(grid):
        val = nontarget_log_variance(s_nt, s_y, math.exp(g), out=buf)
        better = val > best_val
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, torch.full_like(best_idx, i), best_idx)
    grid_t = torch.tensor(grid, dtype=dtype, device=logits.device)
    best_log_tau = grid_t[best_idx]
    defined = torch.isfinite(best_val)

    # golden-section search in u = log tau on [a, b] = neighbours of the best grid point
    a = grid_t[(best_idx - 1).clamp(min=0)]
    b = grid_t[(best_idx + 1).clamp(max=grid_points - 1)]

    def f(u: Tensor) -> Tensor:
        return nontarget_log_variance(s_nt, s_y, torch.exp(u), out=buf)

    x1 = b - _INV_PHI * (b - a)
    x2 = a + _INV_PHI * (b - a)
    f1, f2 = f(x1), f(x2)
    for _ in range(iterations):
        left = f1 >= f2  # maximum lies in [a, x2]
        b = torch.where(left, x2, b)
        a = torch.where(left, a, x1)
        x_new = torch.where(left, b - _INV_PHI * (b - a), a + _INV_PHI * (b - a))
        f_new = f(x_new)
        x1, x2, f1, f2 = (
            torch.where(left, x_new, x2),
            torch.where(left, x1, x_new),
            torch.where(left, f_new, f2),
            torch.where(left, f1, f_new),
        )
    cand = torch.where(f1 >= f2, x1, x2)
    cand_val = torch.maximum(f1, f2)
    log_tau = torch.where(cand_val > best_val, cand, best_log_tau).clamp(lo, hi)
    tau = torch.exp(log_tau)
    return torch.where(defined, tau, torch.full_like(tau, undefined))
