"""``engine.compile``: the student's training forward (and, through AOTAutograd, its backward)
compiled by ``torch.compile`` with the inductor backend; ``engine.compile_teacher``: a live
teacher's forward, compiled with inductor's *freezing* (its weights are constants: BatchNorm
folded into the convolutions and the weights packed once for oneDNN).

Inductor fuses BatchNorm, ReLU and the residual additions into a few generated kernels
around the convolutions (oneDNN on a CPU, cuDNN on CUDA), which eager mode runs as separate
memory-bound passes. The compiled module shares its parameters with the original one:
checkpoints, evaluation and the optimiser keep using the original module. Compilation
happens at the first training step (tens of seconds on a small CPU) and again only when
the input shape changes (the training loader drops the last partial batch, so it does not).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from darkknowledge.errors import UserError


def compile_module(model: nn.Module, device: torch.device | str, *, frozen: bool = False) -> nn.Module:
    """``model`` compiled on ``device``; ``frozen``: for inference with weights that never change
    (inductor's freezing). A clear error where inductor cannot run."""
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise UserError(
            f"engine.compile=true supports cpu and cuda devices, not {dev.type!r}; set engine.compile=false"
        )
    if dev.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            raise UserError(
                "engine.compile=true on CUDA needs the `triton` package (it comes with torch's CUDA wheels); "
                "install it or set engine.compile=false"
            ) from exc
    if frozen:
        compiled: Any = torch.compile(model, backend="inductor", dynamic=False, options={"freezing": True})
    else:
        compiled = torch.compile(model, backend="inductor", dynamic=False)
    return compiled
