"""A stage's job (its identity, the key: :mod:`.identity`).

A stage directory holds ``stage.json`` (the request: kind, key, config with the paths of
its inputs, input identities), ``log.txt``, ``result.json`` (done / failed, error, wall
time) and the kind's own files (a run's ``config.yaml``, ``metrics.jsonl``,
``summary.json``, ``last.pt``; a cache's ``cache/``; a diagnosis' report). A job reads
everything from that directory and writes its outcome there, so it can run in this
process, in a subprocess or on another machine (:mod:`.executors`).
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from pathlib import Path
from typing import Any

from darkknowledge.errors import UserError
from darkknowledge.experiments.kinds import KINDS
from darkknowledge.fileio import atomic_write_json

STAGE_FILE, RESULT_FILE, LOG_FILE = "stage.json", "result.json", "log.txt"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_stage(stage_dir: str | Path, datasets: dict[str, Any] | None = None, capture: bool = True) -> str:
    """The job: run the stage described by ``stage_dir/stage.json``; write ``result.json``.

    Returns the status (``done`` or ``failed``); never raises for a failing stage, so one
    failed job does not stop the others. A killed run resumes from its ``last.pt``.
    ``datasets`` caches loaded splits across stages of one process (keyed by data config).
    """
    stage_dir = Path(stage_dir)
    request = json.loads((stage_dir / STAGE_FILE).read_text())
    t0 = time.perf_counter()
    status, error = "done", None
    with open(stage_dir / LOG_FILE, "a") as log, contextlib.ExitStack() as stack:
        if capture:
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        try:
            KINDS[request["kind"]].run(request, stage_dir, datasets)
        except Exception as exc:
            status = "failed"
            error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            print(f"error: {error}", file=log, flush=True)
            if not isinstance(exc, UserError):
                traceback.print_exc(file=log)
    _write_result(stage_dir, request.get("key"), status, error, time.perf_counter() - t0)
    return status


def _write_result(stage_dir: Path, key: str | None, status: str, error: str | None, wall: float | None) -> None:
    atomic_write_json(
        stage_dir / RESULT_FILE,
        {
            "key": key,
            "status": status,
            "error": error,
            "log": str(stage_dir / LOG_FILE),
            "job_wall_s": wall,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def record_failure(stage_dir: Path, error: str) -> None:
    """Mark a stage failed when its job died without writing its own result (killed, node lost)."""
    request = read_json(stage_dir / STAGE_FILE)
    request = request if isinstance(request, dict) else {}
    result = read_json(stage_dir / RESULT_FILE)
    if (
        isinstance(result, dict)
        and result.get("key") == request.get("key")
        and result.get("finished", "") >= request.get("submitted", "")
    ):
        return
    with open(stage_dir / LOG_FILE, "a") as log:
        print(f"error: {error}", file=log)
    _write_result(stage_dir, request.get("key"), "failed", error, None)


def main(argv: list[str] | None = None) -> int:
    """``python -m darkknowledge.experiments.stage STAGE_DIR``: one job in its own process
    (for any scheduler that runs commands; exit status 0 done, 1 failed)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m darkknowledge.experiments.stage STAGE_DIR", file=sys.stderr)
        return 2
    return 0 if run_stage(args[0], capture=False) == "done" else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
