"""Transitional re-exports while the experiments layer moves to :mod:`darkknowledge.engine.factory`,
:mod:`darkknowledge.data.splits` and :mod:`darkknowledge.runs` (removed once nothing imports it)."""

from __future__ import annotations

from typing import Any

import torch

from darkknowledge.config import CacheTeacher, RunConfig
from darkknowledge.data.base import ArrayDataset
from darkknowledge.data.splits import Splits, load_split, load_splits, split_validation
from darkknowledge.engine.factory import (
    _cache_teacher,
    check_teacher_fits,
    checkpoint_data_config,
    resolve_device,
    teacher_data_section,
)
from darkknowledge.engine.teacher import TeacherSignal

build_split = load_split

__all__ = [
    "build_split",
    "check_teacher_fits",
    "checkpoint_data_config",
    "load_datasets",
    "load_splits",
    "open_cache_for_run",
    "resolve_device",
    "split_validation",
    "teacher_data_section",
]


def load_datasets(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset]:
    splits = load_splits(cfg.data)
    return splits.train, splits.test


def open_cache_for_run(
    cfg: RunConfig, train_set: ArrayDataset, device: torch.device, eval_set: Any = None
) -> TeacherSignal:
    """The run's cache, built first from ``teacher.checkpoint`` when missing."""
    teacher = cfg.teacher
    if isinstance(teacher, CacheTeacher) and teacher.checkpoint:
        cfg = cfg.model_copy(update={"teacher": teacher.model_copy(update={"build": True})})
    return _cache_teacher(cfg, Splits(train_set, None, eval_set), device)
