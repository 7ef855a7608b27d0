"""Small shared helpers: input validation and conversion of chunks to tensors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from darkknowledge.errors import UserError


def to_tensor(x: Any, dtype: torch.dtype | None = None) -> Tensor:
    """A CPU/GPU tensor view of ``x`` (tensor, numpy array or memmap slice)."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
            if not arr.flags.writeable:
                arr = arr.copy()
        t = torch.from_numpy(arr)
    return t.to(dtype) if dtype is not None and t.dtype != dtype else t


def check_logits_targets(logits: Tensor, targets: Tensor, what: str = "logits") -> None:
    """Raise :class:`UserError` for wrong shapes, labels out of range or non-finite logits."""
    if logits.dim() != 2:
        raise UserError(f"{what} must be a 2-D (samples, classes) array, got shape {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise UserError(
            f"{what}: {tuple(targets.shape)} targets for {logits.shape[0]} rows; give one integer label per row"
        )
    if logits.shape[1] < 2:
        raise UserError(f"{what} has {logits.shape[1]} class column(s); diagnostics need at least 2 classes")
    if targets.numel():
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= logits.shape[1]:
            raise UserError(
                f"{what}: labels must lie in [0, {logits.shape[1] - 1}] but range over [{lo}, {hi}]; "
                "check that the logits and targets belong to the same dataset"
            )
    if logits.is_floating_point() and not bool(torch.isfinite(logits).all()):
        raise UserError(f"{what} contain NaN or infinite values; re-export the model outputs")


def finite_or_none(x: float | np.floating) -> float | None:
    """JSON-friendly float (NaN/inf become ``None``)."""
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj: Any) -> Any:
    """Recursively convert numpy/torch scalars and NaNs to plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj
