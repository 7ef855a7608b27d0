"""TAKD: a teacher assistant distilled from the teacher, then the student from the assistant.

:func:`~darkknowledge.runs.assistant.assistant_config` is the one definition of an assistant's
run (the sweep's TAKD entries and ``darkknowledge distill ... --assistant MODEL`` both use it); from the command
line the assistant is a stage under ``<output_dir>/assistants/`` keyed by its config and the
teacher's weights, so a finished one is reused by every later chain through it."""

from __future__ import annotations

from pathlib import Path

from darkknowledge.config import RunConfig
from darkknowledge.runs.assistant import assistant_config


def run_assistant(cfg: RunConfig, assistant_model: str, log=print) -> str:
    """Train (or reuse) the assistant of ``cfg``'s teacher; return its checkpoint path."""
    from darkknowledge.errors import UserError
    from darkknowledge.experiments.graph import FileInput, StageSpec
    from darkknowledge.experiments.identity import INPUT_PLACEHOLDER
    from darkknowledge.experiments.kinds import Kind
    from darkknowledge.experiments.stage import run_stage
    from darkknowledge.experiments.store import StageStore

    assistant = assistant_config(cfg, assistant_model)
    teacher = str(assistant.teacher.checkpoint_path)
    config = assistant.model_dump(mode="json", exclude={"output_dir", "name"})
    config["teacher"]["checkpoint"] = INPUT_PLACEHOLDER
    node = StageSpec(
        Kind.ASSISTANT,
        f"{assistant_model}-{cfg.method.name}-s{cfg.seed}",
        config,
        {"teacher": FileInput.of(teacher)},
    )
    store = StageStore(Path(cfg.output_dir) / "assistants")
    if store.state(node) != "done":
        log(f"training the assistant {assistant_model} from {teacher} in {store.dir(node)}")
        store.write_request(node)
        if run_stage(store.dir(node)) != "done":
            store.refresh()
            raise UserError(f"the assistant failed: {(store.result(node) or {}).get('error')} (log: {store.log(node)})")
    else:
        log(f"reusing the assistant in {store.dir(node)}")
    return str(store.dir(node) / "last.pt")
