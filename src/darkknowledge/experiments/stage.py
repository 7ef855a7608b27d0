"""A stage's identity and its job.

``key`` = sha256 of the stage's kind, its *identity config* and the identities of its
inputs (the key and output file of a producing stage, the weight digest of a given
checkpoint, or the digest of a pretrained model's weight files). The identity config holds only the fields that change a run's result and
omits every field at its default value, so adding a defaulted setting never changes a
key. A finished stage with the same key is reused, never recomputed.

A stage directory holds ``stage.json`` (the request: kind, key, config with the paths of
its inputs, input identities), ``log.txt``, ``result.json`` (done / failed, error, wall
time) and the kind's own files (a run's ``config.yaml``, ``metrics.jsonl``,
``summary.json``, ``last.pt``; a cache's ``cache/``; a diagnosis' report). A job reads
everything from that directory and writes its outcome there, so it can run in this
process, in a subprocess or on another machine (:mod:`.executors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import traceback
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from darkknowledge.config import RunConfig, validate_config
from darkknowledge.engine.checkpoint import load_checkpoint, state_digest
from darkknowledge.errors import UserError
from darkknowledge.fileio import atomic_write_json

# where a run config names the files it consumes: role -> (section, field); identified by inputs, not paths
INPUT_FIELDS = {
    "teacher": ("teacher", "checkpoint"),
    "cache": ("teacher", "cache"),
    "init": ("model", "init"),
    "hf": ("teacher", "hf"),  # a pretrained language model: a Hugging Face directory
    "gguf": ("teacher", "gguf"),  # or a GGUF file
}
PRETRAINED_ROLES = ("hf", "gguf")  # identified by the digest of their weight files, not a checkpoint's weights
INPUT_PLACEHOLDER = "<input>"  # an input's field in a planned config, until a job receives the path
STAGE_FILE, RESULT_FILE, LOG_FILE = "stage.json", "result.json", "log.txt"

_DIGESTS: dict[tuple[str, int, int], str] = {}


def weight_digest(path: str | Path) -> str:
    """Content digest of a checkpoint's model weights (independent of file layout and path);
    remembered per (path, size, mtime) within a process."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise UserError(f"checkpoint {path} does not exist (a teacher or model.init of the sweep)") from None
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        _DIGESTS[memo] = state_digest(load_checkpoint(p)["model"])
    return _DIGESTS[memo]


def input_digest(role: str, path: str | Path) -> str:
    """The identity of a given input file: a pretrained model's weight files (``weights_digest``),
    else a checkpoint's model weights (:func:`weight_digest`)."""
    if role in PRETRAINED_ROLES:
        from darkknowledge.models.lm import weights_digest

        return weights_digest(path)
    return weight_digest(path)


def _affects_result(field: Any) -> bool:
    """Whether a config field changes a run's result, as config.py declares it (``setting(affects_result=...)``)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return bool(extra.get("affects_result", True))


def _is_tag(field: Any) -> bool:
    """A discriminator-like field (a one-value Literal): always kept, so two variants at their defaults differ."""
    from typing import Literal, get_args, get_origin

    return get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1


_INPUT_PATHS = {f"{section}.{name}" for section, name in INPUT_FIELDS.values()}


def _non_default(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    dumped = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        path = f"{prefix}{name}"
        if path in _INPUT_PATHS or not _affects_result(field):
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            sub = _non_default(value, f"{path}.")
            if sub:
                out[name] = sub
        elif _is_tag(field) or field.is_required() or value != field.get_default(call_default_factory=True):
            out[name] = dumped[name]
    extra = model.__pydantic_extra__
    if extra:  # free-form parameters (a method's): defaults are those of the same declared fields without them
        base = type(model).model_validate({n: getattr(model, n) for n in type(model).model_fields})
        defaults = base.__pydantic_extra__ or {}
        out.update({k: dumped[k] for k, v in extra.items() if k not in defaults or defaults[k] != v})
    return out


def identity_config(config: dict[str, Any] | RunConfig) -> dict[str, Any]:
    """The part of a run configuration that determines its result: result-affecting fields
    that differ from their default, without the paths of consumed files (those are inputs)."""
    cfg = config if isinstance(config, RunConfig) else validate_config(config, source="stage config")
    return _non_default(cfg)


def stage_key(kind: str, identity: dict[str, Any], inputs: dict[str, str]) -> str:
    """The key of a stage from its kind, identity config and input identities."""
    blob = json.dumps({"kind": kind, "config": identity, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    from darkknowledge.experiments.kinds import KINDS

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
