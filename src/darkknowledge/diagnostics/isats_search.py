"""The diagnostics' per-instance optimal temperature tau* (docs/diagnostics.md).

tau*(x) = argmax over tau in [tau_min, tau_max] of Var_{c != y}[softmax(z / tau)_c]: the
same search as the ISATS loss (:func:`darkknowledge.nontarget.isats_search`, rule A),
with the diagnostics' settings: a finer search than training's one-grid default, and NaN
for rows with no optimum (variance identically zero: C = 2 or equal non-target logits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from darkknowledge.diagnostics.parallel import map_blocks
from darkknowledge.nontarget import isats_search

# Search settings of the diagnostics: 12 grid points + 10 golden-section steps, tau* to
# about +-0.3 % (training uses the cheaper 64-point grid + parabola, within ~0.4 %).
GRID_SIZE = 12
REFINE_SIZE = 10
# rows per call of the search: its (rows, C - 1) buffers then stay within a core's cache
_BLOCK_ROWS = 512


def optimal_nontarget_temperature(
    logits: Tensor,
    targets: Tensor,
    tau_min: float = 0.5,
    tau_max: float = 20.0,
    *,
    grid_size: int = GRID_SIZE,
    refine_size: int = REFINE_SIZE,
    dtype: torch.dtype = torch.float32,
    undefined: float = float("nan"),
    threads: int | None = None,
) -> Tensor:
    """Per-row tau* ``(N,)`` maximising the variance of the non-target softmax entries.

    ``grid_size`` log-spaced temperatures, then ``refine_size`` golden-section steps in
    log tau. ``dtype``: element-wise compute precision (float32 is ample for locating a
    maximum; float64 for reference checks). Rows with no optimum get ``undefined``.
    Rows are searched in blocks of 512 (each row's result does not depend on the block),
    on ``threads`` worker threads (None: ``torch.get_num_threads()``; see
    :mod:`~darkknowledge.diagnostics.parallel`).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got {tuple(logits.shape)}")
    if not 0 < tau_min < tau_max:
        raise ValueError(f"need 0 < tau_min < tau_max, got [{tau_min}, {tau_max}]")
    z = logits.to(dtype)
    y = targets.reshape(-1)

    def block(start: int) -> Tensor:
        return isats_search(
            z[start : start + _BLOCK_ROWS],
            y[start : start + _BLOCK_ROWS],
            search_rule="A",
            tau_min=tau_min,
            tau_max=tau_max,
            grid_size=grid_size,
            refine_size=refine_size,
            undefined=undefined,
        )

    blocks = map_blocks(block, range(0, max(1, z.shape[0]), _BLOCK_ROWS), threads)
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)
