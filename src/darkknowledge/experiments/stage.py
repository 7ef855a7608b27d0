"""A stage: one training run (a teacher, a student) or one teacher-cache build, as an
independent job whose identity is a digest of what determines its result.

``key`` = sha256 of the resolved run configuration (without paths and without settings
that do not change the result: output_dir, name, engine.progress/threads/tensorboard)
and of the *weight digests* of the checkpoints it consumes (teacher, ``model.init``).
A finished stage with the same key is reused, never recomputed; a changed config or a
retrained teacher gives another key, so nothing is silently reused.

A stage directory holds ``stage.json`` (the request: kind, key, config, inputs),
``log.txt`` (its output), ``result.json`` (done / failed, error, wall time) and, for a
run, the trainer's files (config.yaml, metrics.jsonl, summary.json, last.pt, best.pt).
A job reads everything from that directory and writes its outcome there, so it can run
in this process, in a subprocess or on another machine (:mod:`.executors`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from darkknowledge.config import validate_config
from darkknowledge.engine.checkpoint import load_checkpoint, state_digest
from darkknowledge.errors import UserError
from darkknowledge.fileio import atomic_write_json

Kind = Literal["teacher", "student", "cache"]
# (section, key) of config values that are paths to consumed checkpoints: identified by weights
INPUT_KEYS = {"teacher": ("teacher", "checkpoint"), "init": ("model", "init")}
# settings that never change a run's result
IGNORED_KEYS = {"": ("output_dir", "name"), "engine": ("progress", "threads", "tensorboard")}
STAGE_FILE, RESULT_FILE, LOG_FILE = "stage.json", "result.json", "log.txt"
CACHE_SUBDIR = "cache"


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


def identity_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run configuration that determines its result (paths of inputs removed)."""
    out = copy.deepcopy(config)
    for section, keys in IGNORED_KEYS.items():
        node = out if section == "" else out.get(section, {})
        for k in keys:
            node.pop(k, None)
    for section, key in [*INPUT_KEYS.values(), ("teacher", "cache")]:
        node = out.get(section, {})
        if node.get(key):
            node[key] = "<input>"  # a cache is identified by its teacher's weights and the cache settings
    return out


def stage_key(kind: str, config: dict[str, Any], input_digests: dict[str, str]) -> str:
    blob = json.dumps({"kind": kind, "config": identity_config(config), "inputs": input_digests}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Stage:
    """A job of a sweep: ``config`` is a full run-config dict (validated), without output_dir/name."""

    kind: Kind
    name: str
    config: dict[str, Any]
    root: Path
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    # role -> identity of an input checkpoint: its weight digest, or "stage:<key>/<file>" for an
    # output of another stage of the same sweep (portable: a retrained teacher stands for itself)
    inputs: dict[str, str] = field(default_factory=dict)
    records: Path | None = None  # directory of compact records (committed results) or None
    # an earlier stage of the sweep with the same key (the same run under another label): this
    # one is not run again and reads its outcome from that stage until it has its own
    same_as: Stage | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.config = validate_config(self.config, source=f"stage {self.name}").model_dump(mode="json")
        for role, (section, k) in INPUT_KEYS.items():
            path = self.config[section].get(k)
            if path and role not in self.inputs:
                self.inputs[role] = weight_digest(path)
        self.key = stage_key(self.kind, self.config, self.inputs)

    @property
    def dir(self) -> Path:
        return self.root / f"{self.name}-{self.key[:8]}"

    @property
    def files_dir(self) -> Path:
        """Where this stage's run files are: its own directory, or its twin's (``same_as``)."""
        if self.same_as is not None and not (self.dir / RESULT_FILE).is_file():
            return self.same_as.files_dir
        return self.dir

    @property
    def log(self) -> Path:
        return self.dir / LOG_FILE

    @property
    def cache_dir(self) -> Path:
        return self.dir / CACHE_SUBDIR

    @property
    def record_path(self) -> Path | None:
        return self.records / f"{self.name}-{self.key[:8]}.json" if self.records is not None else None

    def _find_record(self) -> tuple[Path, dict[str, Any]] | tuple[None, None]:
        """This stage's record file (same key) and its content: its own, else one written under
        another name with the same key (a relabelled entry: the same run)."""
        if self.record_path is None:
            return None, None
        others = sorted(self.records.glob(f"*-{self.key[:8]}.json")) if self.records.is_dir() else []
        for path in [self.record_path, *(p for p in others if p != self.record_path)]:
            rec = read_json(path)
            if rec and rec.get("key") == self.key and rec.get("kind") == self.kind:
                return path, rec
        return None, None

    def record_file(self) -> Path | None:
        """The record file of this stage (see :meth:`_find_record`), if any."""
        return self._find_record()[0]

    def record(self) -> dict[str, Any] | None:
        """The committed compact record of this stage (see :meth:`_find_record`), if any."""
        return self._find_record()[1]

    def state(self) -> str:
        """``done`` | ``recorded`` (done elsewhere: a record, no run files here) | ``failed`` |
        ``partial`` (killed: resumable) | ``pending``."""
        own = self._own_state()
        if self.same_as is None:
            return own
        twin = self.same_as.state()
        return twin if own not in ("done", "recorded") or twin == "done" else own

    def _own_state(self) -> str:
        result = read_json(self.dir / RESULT_FILE)
        if result and result.get("key") == self.key and result["status"] == "done":
            return "done"
        if self.record() is not None:
            return "recorded"
        if result and result.get("key") == self.key:
            return result["status"]
        if (self.dir / "last.pt").is_file() or (self.dir / STAGE_FILE).is_file():
            return "partial"
        return "pending"

    def result(self) -> dict[str, Any] | None:
        result = read_json(self.dir / RESULT_FILE)
        if result is None and (rec := self.record()) is not None:
            return rec["result"]
        if result is None and self.same_as is not None:
            return self.same_as.result()
        return result

    def summary(self) -> dict[str, Any] | None:
        summary = read_json(self.dir / "summary.json")
        if summary is None and (rec := self.record()) is not None:
            return rec["summary"]
        if summary is None and self.same_as is not None:
            return self.same_as.summary()
        return summary

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch records (metrics.jsonl, or the record's copy for teachers)."""
        from darkknowledge.engine.rundir import read_history

        path = self.dir / "metrics.jsonl"
        if path.is_file():
            return read_history(path)
        rec = self.record()
        if rec is None and self.same_as is not None:
            return self.same_as.history()
        return rec.get("history", []) if rec else []

    def write_record(self) -> Path | None:
        """Save the compact record of a finished stage: identity, summary, wall time (and
        the per-epoch history of teachers, for early-stopped snapshots)."""
        if self.record_path is None or self.state() != "done":
            return None
        from darkknowledge.fileio import atomic_write_json

        record = {
            "key": self.key,
            "kind": self.kind,
            "name": self.name,
            "meta": self.meta,
            "inputs": self.inputs,
            "config": identity_config(self.config),
            "result": self.result(),
            "summary": self.summary(),
        }
        if self.kind != "student":
            record["history"] = self.history()
        return atomic_write_json(self.record_path, record)

    def write_request(self) -> Path:
        """Write ``stage.json``: everything a job needs, so it can run anywhere."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.dir / STAGE_FILE,
            {
                "kind": self.kind,
                "name": self.name,
                "key": self.key,
                "config": self.config,
                "inputs": self.inputs,
                "meta": self.meta,
                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        return self.dir


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_stage(stage_dir: str | Path, datasets: dict[str, Any] | None = None, capture: bool = True) -> str:
    """The job: run the stage described by ``stage_dir/stage.json``; write ``result.json``.

    Returns the status (``done`` or ``failed``); never raises for a failing run, so one
    failed job does not stop the others. A killed run resumes from its ``last.pt``.
    ``datasets`` caches loaded splits across stages of one process (keyed by data config).
    """
    stage_dir = Path(stage_dir)
    request = json.loads((stage_dir / STAGE_FILE).read_text())
    t0 = time.perf_counter()
    status, error = "done", None
    log = open(stage_dir / LOG_FILE, "a")
    redirect = (contextlib.redirect_stdout(log), contextlib.redirect_stderr(log)) if capture else ()
    with log, contextlib.ExitStack() as stack:
        for r in redirect:
            stack.enter_context(r)
        try:
            _execute(request, stage_dir, datasets)
        except Exception as exc:
            status = "failed"
            error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            print(f"error: {error}", file=log, flush=True)
            if not isinstance(exc, UserError):
                traceback.print_exc(file=log)
    atomic_write_json(
        stage_dir / RESULT_FILE,
        {
            "key": request["key"],
            "status": status,
            "error": error,
            "log": str(stage_dir / LOG_FILE),
            "job_wall_s": time.perf_counter() - t0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    return status


def record_failure(stage_dir: Path, error: str) -> None:
    """Mark a stage failed when its job died without writing its own result (killed, node lost)."""
    request = read_json(stage_dir / STAGE_FILE) or {}
    result = read_json(stage_dir / RESULT_FILE)
    if (
        result
        and result.get("key") == request.get("key")
        and result.get("finished", "") >= request.get("submitted", "")
    ):
        return
    with open(stage_dir / LOG_FILE, "a") as log:
        print(f"error: {error}", file=log)
    atomic_write_json(
        stage_dir / RESULT_FILE,
        {
            "key": request.get("key"),
            "status": "failed",
            "error": error,
            "log": str(stage_dir / LOG_FILE),
            "job_wall_s": None,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def _execute(request: dict[str, Any], stage_dir: Path, datasets: dict[str, Any] | None) -> None:
    from darkknowledge.engine.assembly import load_splits, open_cache_for_run

    config = copy.deepcopy(request["config"])
    for role, (section, k) in INPUT_KEYS.items():
        path = config[section].get(k)
        if (
            path
            and not str(request["inputs"].get(role, "")).startswith("stage:")
            and weight_digest(path) != request["inputs"].get(role)
        ):
            raise UserError(
                f"{section}.{k}={path} changed since this stage was planned; run the sweep again to re-plan it"
            )
    config["output_dir"], config["name"] = str(stage_dir.parent), stage_dir.name
    if request["kind"] == "cache":
        config["teacher"]["cache"] = str(stage_dir / CACHE_SUBDIR)
    cfg = validate_config(config, source=f"stage {request['name']}")
    key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
    if datasets is not None and key in datasets:
        train_set, val_set, test_set = datasets[key]
    else:
        train_set, val_set, test_set = load_splits(cfg.data)
        if datasets is not None:
            datasets[key] = (train_set, val_set, test_set)
    if cfg.engine.threads:
        import torch

        torch.set_num_threads(cfg.engine.threads)
    if request["kind"] == "cache":
        import torch

        open_cache_for_run(cfg, train_set, torch.device(cfg.engine.device), test_set)
        return
    from darkknowledge.engine.trainer import Trainer

    resume = (stage_dir / "last.pt").is_file()
    if resume:
        print(f"resuming {stage_dir} from last.pt", flush=True)
    Trainer(cfg, train_set=train_set, val_set=val_set, test_set=test_set).fit(resume=resume)


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
