"""Learning rate as a pure function of (config, fractional epoch): resumable by construction."""

from __future__ import annotations

import math

from darkknowledge.config import OptimConfig


def learning_rate(cfg: OptimConfig, epoch: int, step_fraction: float = 0.0) -> float:
    """LR at 0-indexed ``epoch`` plus ``step_fraction`` in [0, 1) of it.

    * warm-up: linear from 0 to ``lr`` over ``warmup_epochs`` (per step);
    * multistep: ``lr * gamma ** (number of milestones <= epoch)`` — with milestones
      150/180/210 this is mdistiller's rule (1-indexed epoch > 150 decays);
    * cosine: from ``lr`` to ``min_lr`` over the epochs after warm-up;
    * constant.
    """
    t = epoch + step_fraction
    if cfg.warmup_epochs > 0 and t < cfg.warmup_epochs:
        return cfg.lr * t / cfg.warmup_epochs
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        progress = min(max((t - cfg.warmup_epochs) / span, 0.0), 1.0)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    return cfg.lr
