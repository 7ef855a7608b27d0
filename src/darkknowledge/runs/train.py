"""Train or distil one model: the run a ``train``/``distill`` command or a sweep stage asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from darkknowledge.config import RunConfig, load_config
from darkknowledge.data.splits import Splits
from darkknowledge.engine.distributed import is_main_process
from darkknowledge.engine.factory import teacher_data_section
from darkknowledge.engine.teacher import TeacherSignal
from darkknowledge.engine.trainer import build_trainer

__all__ = ["distill_config", "is_main_process", "train"]


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    splits: Splits | None = None,
    teacher: TeacherSignal | nn.Module | None = None,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` (its teacher, if its method needs one, from ``cfg.teacher`` unless given) and
    return the run's summary (also written to ``<run_dir>/summary.json``).

    ``teacher``: a signal (``teacher_from_module(model, C)``, a cache), or an ``nn.Module``
    giving ``(B, C)`` logits: run live, or with ``teacher.cache`` (``teacher.build=true`` builds
    it from this module) the cache replayed, keyed by the module's weights."""
    return build_trainer(cfg, splits=splits, teacher=teacher, run_dir=run_dir).fit(resume=resume)


def distill_config(config: str | None, overrides: list[str], base: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """A distillation's config whose data settings default to its teacher checkpoint's (``config``
    and ``data.*`` overrides still win), and the settings taken from the teacher."""
    cfg = load_config(config, overrides, base=base)
    checkpoint = cfg.teacher.checkpoint_path
    if not checkpoint:
        return cfg, {}
    inherited = teacher_data_section(checkpoint)
    cfg = load_config(config, overrides, base={**base, "data": inherited})
    default = type(cfg.data)()
    taken = {k: v for k, v in inherited.items() if getattr(cfg.data, k) == v != getattr(default, k)}
    return cfg, taken
