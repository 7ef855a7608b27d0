"""Seeds and the random state a checkpoint carries."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed torch, numpy and random (the latter two for user code) and set deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def rng_state() -> dict[str, Any]:
    """torch's generator: the only one training draws from (data order and augmentation have their own)."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())  # the checkpoint may have been mapped to a GPU
