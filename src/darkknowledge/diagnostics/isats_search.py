"""Per-instance temperature that maximises the non-target variance (ISATS's tau*).

Definition (Li et al., arXiv 2405.13078, as summarised in
``/work/shared/reference/methods.md`` §3.3, rule (A)): for teacher logits ``z`` and label
``y``,

    tau*(x) = argmax_{tau in [tau_min, tau_max]} Var_{c != y}[ softmax(z / tau)_c ]

with the population variance (ddof 0) of the non-target entries of the *full* softmax
(not renormalised), as in ATS's "derived variance". One symmetric temperature is
searched; this objective has an interior optimum for a confident teacher (the
asymmetric objective with a fixed target temperature is degenerate, see §3.3).

The search itself lives with the method: :func:`darkknowledge.methods.isats.isats_search`
(log-spaced grid, then golden-section in log tau; shifted logits, log-space objective,
two-pass variance; see its module docstring). This module is a thin wrapper with the
diagnostics' defaults: rule A, float32, and NaN for rows with no optimum (variance
identically zero: all non-target logits equal, or C = 2). ``split_nontarget`` and
``nontarget_log_variance`` are re-exported for the other diagnostics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from darkknowledge.methods.isats import isats_search, nontarget_log_variance, split_nontarget

__all__ = ["optimal_nontarget_temperature", "nontarget_log_variance", "split_nontarget"]


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

    :func:`~darkknowledge.methods.isats.isats_search` with ``search_rule="A"``:
    ``grid_points`` log-spaced temperatures, then ``iterations`` golden-section steps in
    log tau (defaults: bracket width 2 * log(40) / 11 ~ 0.67 shrunk by 0.618^10 to
    0.0055, i.e. tau* to about +-0.3 %; 24 objective evaluations per row). ``dtype``:
    element-wise compute precision (float32 is ample for locating a maximum; float64 for
    reference checks). Rows with no optimum (variance identically zero) get ``undefined``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got {tuple(logits.shape)}")
    if not 0 < tau_min < tau_max:
        raise ValueError(f"need 0 < tau_min < tau_max, got [{tau_min}, {tau_max}]")
    if grid_points < 2:
        raise ValueError("grid_points must be >= 2")
    return isats_search(
        logits.to(dtype),
        targets,
        search_rule="A",
        tau_min=tau_min,
        tau_max=tau_max,
        grid_size=grid_points,
        refine_size=iterations,
        undefined=undefined,
    )
