"""TAKD: the teacher assistant of a distillation, defined once for the command line and sweeps."""

from __future__ import annotations

from darkknowledge.config import CacheTeacher, CheckpointTeacher, RunConfig, deep_merge, validate_config
from darkknowledge.errors import UserError


def assistant_config(cfg: RunConfig, assistant_model: str) -> RunConfig:
    """The assistant of distillation ``cfg``: model ``assistant_model`` learning from ``cfg``'s teacher
    checkpoint with ``cfg``'s method, data, schedule and seed (a live teacher: the assistant sees
    every augmentation); the student then learns from the assistant."""
    teacher = cfg.teacher
    if not isinstance(teacher, CheckpointTeacher | CacheTeacher) or not teacher.checkpoint:
        raise UserError("--assistant needs teacher.checkpoint=PATH (the teacher the assistant learns from)")
    fold = teacher.fold_batchnorm
    config = deep_merge(
        cfg.model_dump(mode="json", exclude={"teacher"}),
        {
            "model": {"name": assistant_model, "init": None},
            "teacher": {"kind": "checkpoint", "checkpoint": teacher.checkpoint, "fold_batchnorm": fold},
            "engine": {"progress": False},
        },
    )
    return validate_config(config, source=f"assistant {assistant_model}")
