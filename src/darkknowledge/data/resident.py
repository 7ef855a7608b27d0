"""Arrays held in the training device's memory: teacher caches and token arrays.

An array read from memory-mapped host files costs a GPU step host syncs: the batch's indices
copied to the host for the gather, and the gathered rows copied back from pageable memory.
An array that fits is copied to the device once and gathered there with the batch's device
indices. Policy (``resident=None``): on an accelerator, when it takes at most
:data:`RESIDENT_SHARE` of the device's free memory; on a CPU the memory map already is the
training device's memory. ``resident=True`` / ``False`` force it (tests run the device path on
a CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

RESIDENT_SHARE = 0.25  # of the device's free memory, at most, for a resident cache
_COPY_BYTES = 64 << 20  # host staging per copy while a cache moves to the device


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of an accelerator (None on a CPU or a device that does not say)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def holds_on_device(nbytes: int, device: torch.device, resident: bool | None, free_bytes: int | None = None) -> bool:
    """Whether a cache of ``nbytes`` is held on ``device`` (see the module's policy)."""
    if resident is not None:
        return resident
    free = free_device_bytes(device) if free_bytes is None else free_bytes
    return free is not None and nbytes <= RESIDENT_SHARE * free


def to_device(parts: Sequence[np.ndarray], device: torch.device) -> Tensor:
    """The concatenation (along rows) of host arrays, e.g. memory-mapped shards, on ``device``,
    copied in slices of about 64 MiB (host memory never holds the whole)."""
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    out = torch.empty((rows, *first.shape[1:]), dtype=torch.from_numpy(first[:0].copy()).dtype, device=device)
    row_bytes = max(1, first[:1].nbytes)
    step = max(1, _COPY_BYTES // row_bytes)
    at = 0
    for part in parts:
        for start in range(0, part.shape[0], step):
            block = torch.from_numpy(np.array(part[start : start + step]))  # a writable host copy
            out[at : at + block.shape[0]].copy_(block)
            at += block.shape[0]
    return out


def resident_arrays(
    arrays: dict[str, Sequence[np.ndarray]], device: torch.device, resident: bool | None
) -> dict[str, Tensor] | None:
    """``arrays`` (name -> its parts, e.g. a cache's shards) on ``device`` where the policy holds
    them there (:func:`holds_on_device` on their total size), each concatenated; else None."""
    nbytes = sum(part.nbytes for parts in arrays.values() for part in parts)
    if not holds_on_device(nbytes, device, resident):
        return None
    return {name: to_device(parts, device) for name, parts in arrays.items()}


__all__ = ["RESIDENT_SHARE", "free_device_bytes", "holds_on_device", "resident_arrays", "to_device"]
