"""The optimiser of a run: SGD with momentum, as one fused kernel where torch has one.

``engine.fused_optimizer=true`` (default) asks torch for its fused SGD, which updates every
parameter in a few kernels instead of a handful of operations per tensor; torch has it on
CPU and CUDA. ``false`` uses the ``foreach`` implementation (one operation per step over
lists of tensors). The arithmetic is SGD's either way; docs/performance.md has the timings.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from darkknowledge.config import OptimConfig


def fused_sgd_available(device: torch.device | str) -> bool:
    """Whether this torch has a fused SGD kernel for ``device``'s type."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - older torch
        return torch.device(device).type == "cuda"
    return torch.device(device).type in _get_fused_kernels_supported_devices()


def build_optimizer(
    params: Iterable[torch.nn.Parameter], optim: OptimConfig, device: torch.device | str, fused: bool = True
) -> torch.optim.Optimizer:
    """``optim.optimizer`` over ``params`` (SGD with momentum, or AdamW with ``optim.betas``): fused
    where asked and available, else foreach."""
    use_fused = fused and fused_sgd_available(device)
    kernels: dict = {"fused": use_fused or None, "foreach": None if use_fused else True}
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(
            list(params), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, **kernels
        )
    return torch.optim.SGD(
        list(params),
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
        **kernels,
    )
