"""Every read and write of stage directories and committed records.

A stage's directory is ``<root>/<name>-<key[:8]>``; its record (when the sweep keeps
records) is ``<records>/<name>-<key[:8]>.json``, or a record of the same key under another
name (a relabelled entry: the same run). States are read once per pass and cached until
:meth:`StageStore.refresh` (after jobs ran)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from darkknowledge.experiments.graph import StageRef, StageSpec
from darkknowledge.experiments.kinds import KINDS
from darkknowledge.experiments.stage import LOG_FILE, RESULT_FILE, STAGE_FILE, read_json
from darkknowledge.fileio import atomic_write_json

FINISHED = ("done", "recorded")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class StageStore:
    def __init__(self, root: str | Path, records: str | Path | None = None, warn: Callable[[str], None] = _warn):
        self.root = Path(root)
        self.records = Path(records) if records is not None else None
        self.warn = warn
        self._warned: set[Path] = set()
        self._homes: dict[str, StageSpec] = {}  # key -> the stage of a group whose files serve the group
        self.refresh()

    def refresh(self) -> None:
        """Forget cached states (call after jobs ran)."""
        self._own: dict[int, str] = {}
        self._results: dict[Path, dict[str, Any] | None] = {}
        self._record_index: dict[str, list[Path]] | None = None
        self._record_of: dict[int, tuple[Path, dict[str, Any]] | None] = {}

    # ------------------------------------------------------------------ places
    def dir(self, node: StageSpec) -> Path:
        return self.root / f"{node.name}-{node.key[:8]}"

    def log(self, node: StageSpec) -> Path:
        return self.dir(node) / LOG_FILE

    def record_path(self, node: StageSpec) -> Path | None:
        return self.records / f"{node.name}-{node.key[:8]}.json" if self.records is not None else None

    # ------------------------------------------------------------------ groups of one key
    def set_groups(self, groups: dict[str, list[StageSpec]]) -> None:
        """Stages of one key are one run: the home of a group is the one finished here, else
        the one recorded, else the first; the others read from it until they have their own."""
        self._groups = {k: g for k, g in groups.items() if len(g) > 1}
        self._homes = {}

    def home(self, node: StageSpec) -> StageSpec:
        group = getattr(self, "_groups", {}).get(node.key)
        if not group:
            return node
        if node.key not in self._homes:
            states = [self.own_state(n) for n in group]
            self._homes[node.key] = next(
                (n for n, s in zip(group, states) if s == "done"),
                next((n for n, s in zip(group, states) if s == "recorded"), group[0]),
            )
        return self._homes[node.key]

    def twin_of(self, node: StageSpec) -> StageSpec | None:
        """The stage this one reads from (the same run under another label), if any."""
        home = self.home(node)
        return None if home is node else home

    # ------------------------------------------------------------------ state
    def _result(self, node: StageSpec) -> dict[str, Any] | None:
        path = self.dir(node) / RESULT_FILE
        if path not in self._results:
            result = read_json(path)
            self._results[path] = result if isinstance(result, dict) and result.get("key") == node.key else None
        return self._results[path]

    def own_state(self, node: StageSpec) -> str:
        """``done`` | ``recorded`` (done elsewhere: a record, no run files here) | ``failed`` |
        ``partial`` (started: resumable) | ``pending``."""
        if id(node) not in self._own:
            result = self._result(node)
            if result and result.get("status") == "done":
                state = "done"
            elif self.record(node) is not None:
                state = "recorded"
            elif result:
                state = "failed" if result.get("status") == "failed" else "partial"
            elif (self.dir(node) / "last.pt").is_file() or (self.dir(node) / STAGE_FILE).is_file():
                state = "partial"
            else:
                state = "pending"
            self._own[id(node)] = state
        return self._own[id(node)]

    def state(self, node: StageSpec) -> str:
        own = self.own_state(node)
        twin = self.twin_of(node)
        if twin is None:
            return own
        other = self.own_state(twin)
        return other if own not in FINISHED or other == "done" else own

    def files_dir(self, node: StageSpec) -> Path:
        """Where a stage's files are: its own directory, or its twin's."""
        twin = self.twin_of(node)
        if twin is not None and self._result(node) is None:
            return self.files_dir(twin)
        return self.dir(node)

    def output(self, ref: StageRef) -> Path:
        return (self.files_dir(ref.stage) / ref.output).resolve()

    # ------------------------------------------------------------------ outcome
    def result(self, node: StageSpec) -> dict[str, Any] | None:
        result = self._result(node)
        if result is None and (rec := self.record(node)) is not None:
            return rec["result"]
        if result is None and (twin := self.twin_of(node)) is not None:
            return self.result(twin)
        return result

    def summary(self, node: StageSpec) -> dict[str, Any] | None:
        summary = KINDS[node.kind.value].summary(self.dir(node)) if self._result(node) else None
        if summary is None and (rec := self.record(node)) is not None:
            return rec.get("summary")
        if summary is None and (twin := self.twin_of(node)) is not None:
            return self.summary(twin)
        return summary

    def history(self, node: StageSpec) -> list[dict[str, Any]]:
        """Per-epoch records (metrics.jsonl, or the record's copy for teachers)."""
        from darkknowledge.engine.rundir import read_history

        path = self.dir(node) / "metrics.jsonl"
        if path.is_file():
            return read_history(path)
        rec = self.record(node)
        if rec is None and (twin := self.twin_of(node)) is not None:
            return self.history(twin)
        return rec.get("history", []) if rec else []

    # ------------------------------------------------------------------ records
    def _index(self) -> dict[str, list[Path]]:
        if self._record_index is None:
            self._record_index = {}
            if self.records is not None and self.records.is_dir():
                for p in sorted(self.records.glob("*.json")):
                    self._record_index.setdefault(p.stem.rsplit("-", 1)[-1], []).append(p)
        return self._record_index

    def _valid_record(self, path: Path) -> dict[str, Any] | None:
        rec = read_json(path)
        problem = None
        if not isinstance(rec, dict):
            problem = "not a JSON object"
        elif not isinstance(rec.get("result"), dict) or not isinstance(rec.get("key"), str):
            problem = "no `key` or `result`"
        if problem is None:
            return rec
        if path not in self._warned:
            self._warned.add(path)
            self.warn(f"record {path} is not a stage record ({problem}); ignored: restore it from git or delete it")
        return None

    def find_record(self, node: StageSpec) -> tuple[Path, dict[str, Any]] | None:
        """This stage's record file and content: its own, else one of the same key under another name."""
        if id(node) not in self._record_of:
            found = None
            own = self.record_path(node)
            if own is not None:
                others = [p for p in self._index().get(node.key[:8], []) if p != own]
                for path in [own, *others] if own.is_file() else others:
                    rec = self._valid_record(path)
                    if rec and rec["key"] == node.key and rec.get("kind") == node.kind.value:
                        found = (path, rec)
                        break
            self._record_of[id(node)] = found
        return self._record_of[id(node)]

    def record(self, node: StageSpec) -> dict[str, Any] | None:
        found = self.find_record(node)
        return found[1] if found else None

    def write_record(self, node: StageSpec) -> Path | None:
        """Save the compact record of a finished stage: identity, summary, wall time (and
        the per-epoch history of kinds that keep it)."""
        path = self.record_path(node)
        if path is None or self.state(node) != "done":
            return None
        record: dict[str, Any] = {
            "key": node.key,
            "kind": node.kind.value,
            "name": node.name,
            "meta": node.meta,
            "inputs": node.input_identities(),
            "config": node.identity,
            "result": self.result(node),
            "summary": self.summary(node),
        }
        if KINDS[node.kind.value].keeps_history:
            record["history"] = self.history(node)
        written = atomic_write_json(path, record)
        self._record_index = None
        self._record_of.pop(id(node), None)
        return written

    # ------------------------------------------------------------------ requests
    def request(self, node: StageSpec, paths: dict[str, str]) -> dict[str, Any]:
        """What a job of ``node`` receives: its config with its input paths filled in."""
        return {
            "kind": node.kind.value,
            "name": node.name,
            "key": node.key,
            "config": KINDS[node.kind.value].place(node.config, paths),
            "paths": paths,
            "inputs": node.input_identities(),
            "meta": node.meta,
        }

    def input_paths(self, node: StageSpec) -> dict[str, str]:
        return {
            role: str(self.output(ref)) if isinstance(ref, StageRef) else ref.path for role, ref in node.inputs.items()
        }

    def write_request(self, node: StageSpec) -> Path:
        """Write ``stage.json``: everything a job needs, so it can run anywhere. A failed attempt's
        ``result.json`` goes (its error stays in ``log.txt``): the stage is running again, not failed."""
        d = self.dir(node)
        d.mkdir(parents=True, exist_ok=True)
        previous = self._result(node)
        if previous is not None and previous.get("status") == "failed":
            (d / RESULT_FILE).unlink(missing_ok=True)
            self._results.pop(d / RESULT_FILE, None)
        atomic_write_json(
            d / STAGE_FILE,
            {**self.request(node, self.input_paths(node)), "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")},
        )
        self._own.pop(id(node), None)
        return d
