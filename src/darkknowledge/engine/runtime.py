"""Process-wide runtime settings (torch's intra-op threads), applied once per process."""

from __future__ import annotations

import torch

_applied: dict[str, int] = {}


def apply_runtime(threads: int | None) -> None:
    """Set torch's intra-op threads to ``threads`` (None: leave torch's choice); a repeated call
    with the value already in force does nothing."""
    if threads and _applied.get("threads") != threads:
        torch.set_num_threads(threads)
        _applied["threads"] = threads
