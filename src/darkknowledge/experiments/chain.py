"""TAKD from the command line: ``darkknowledge distill ... --assistant MODEL`` distils a
teacher assistant from the teacher, then the student from the assistant, with the same
method. The assistant is a stage (``<output_dir>/assistants/...``, keyed by its config and
the teacher's weights): a finished one is reused by every later chain through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from darkknowledge.config import RunConfig, deep_merge
from darkknowledge.errors import UserError
from darkknowledge.experiments.stage import Stage, run_stage


def run_assistant(cfg: RunConfig, assistant_model: str, log=print) -> str:
    """Train (or reuse) the assistant of ``cfg``'s teacher; return its checkpoint path."""
    if not cfg.teacher.checkpoint:
        raise UserError("--assistant needs teacher.checkpoint=PATH (the teacher the assistant learns from)")
    config: dict[str, Any] = cfg.model_dump(mode="json")
    config = deep_merge(
        config,
        {"model": {"name": assistant_model, "init": None}, "teacher": {"cache": None}, "engine": {"progress": False}},
    )
    stage = Stage(
        "assistant", f"{assistant_model}-{cfg.method.name}-s{cfg.seed}", config, Path(cfg.output_dir) / "assistants"
    )
    if stage.state() != "done":
        log(f"training the assistant {assistant_model} from {cfg.teacher.checkpoint} in {stage.dir}")
        stage.write_request()
        if run_stage(stage.dir) != "done":
            raise UserError(f"the assistant failed: {stage.result().get('error')} (log: {stage.log})")
    else:
        log(f"reusing the assistant in {stage.dir}")
    return str(stage.dir / "last.pt")
