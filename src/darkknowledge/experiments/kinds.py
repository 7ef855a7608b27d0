"""The kinds of stage: what each consumes, how its identity is computed, and its job.

A new kind (a language-model teacher, a tune trial, ...) is a member of :class:`Kind` and
a :class:`StageKind` in :data:`KINDS`; the graph, the store, the executors, ``--status``
and the records handle it without further changes (docs/experiments.md, "A new stage kind").
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from darkknowledge.config import validate_config
from darkknowledge.errors import UserError
from darkknowledge.experiments.identity import INPUT_FIELDS, identity_config, input_digest


class Kind(str, Enum):
    TEACHER = "teacher"  # a teacher the sweep trains
    STUDENT = "student"  # a student run (alone, or distilled)
    ASSISTANT = "assistant"  # a TAKD teacher assistant, distilled from a teacher
    ADAPTED = "adapted"  # an AID teacher, fine-tuned towards the pre-trained student
    CACHE = "cache"  # a teacher-output cache
    EVALUATE = "evaluate"  # a given pretrained language-model teacher, measured once on val and test
    DIAGNOSE = "diagnose"  # the dark-knowledge diagnostics of a teacher ladder


Runner = Callable[[dict[str, Any], Path, "dict[str, Any] | None"], None]


@dataclass(frozen=True)
class StageKind:
    """``identity(config)``: the result-determining part of a stage's config; ``run(request,
    stage_dir, datasets)``: the job; ``place(config, paths)``: the config a job receives, with
    the paths of the stage's inputs (role -> path) filled in. ``keeps_history``: its record
    keeps the per-epoch history (teachers: early-stopped snapshots). ``materialises_inputs``:
    when its producers are recorded elsewhere, they run again here so that it can run
    (False: it waits until their files are here, and is ``skipped`` meanwhile)."""

    kind: Kind
    identity: Callable[[dict[str, Any]], dict[str, Any]]
    run: Runner
    place: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]
    keeps_history: bool = False
    materialises_inputs: bool = True
    summary: Callable[[Path], dict[str, Any] | None] = lambda d: _read_dict(d / "summary.json")


def _read_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------- training runs


def _run_identity(config: dict[str, Any]) -> dict[str, Any]:
    return identity_config(config)


def place_run_inputs(config: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """A run config with its input files (role -> path) at their config fields."""
    out = copy.deepcopy(config)
    for role, path in paths.items():
        section, name = INPUT_FIELDS[role]
        out.setdefault(section, {})[name] = path
    return out


def _load_splits(cfg, datasets: dict[str, Any] | None):
    from darkknowledge.data.splits import load_splits

    key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
    if datasets is not None and key in datasets:
        return datasets[key]
    splits = load_splits(cfg.data)
    if datasets is not None:
        datasets[key] = splits
    return splits


def _check_given_inputs(request: dict[str, Any]) -> None:
    """A given checkpoint or pretrained model (identified by its weights) must not have changed since planning."""
    for role, path in request.get("paths", {}).items():
        ident = str(request["inputs"].get(role, ""))
        if role != "cache" and not ident.startswith("stage:") and input_digest(role, path) != ident:
            raise UserError(f"{role} input {path} changed since this stage was planned; run the sweep again")


def _run_training(request: dict[str, Any], stage_dir: Path, datasets: dict[str, Any] | None) -> None:
    from darkknowledge.runs.train import train

    _check_given_inputs(request)
    config = {**request["config"], "output_dir": str(stage_dir.parent), "name": stage_dir.name}
    cfg = validate_config(config, source=f"stage {request['name']}")
    splits = _load_splits(cfg, datasets)
    resume = (stage_dir / "last.pt").is_file()
    if resume:
        print(f"resuming {stage_dir} from last.pt", flush=True)
    train(cfg, resume=resume, splits=splits)


def _run_cache(request: dict[str, Any], stage_dir: Path, datasets: dict[str, Any] | None) -> None:
    from darkknowledge.runs.cache import build_teacher_cache

    _check_given_inputs(request)
    target = stage_dir / CACHE_OUTPUT
    config = place_run_inputs(request["config"], {"cache": str(target)})
    cfg = validate_config(
        {**config, "output_dir": str(stage_dir.parent), "name": stage_dir.name}, source=f"stage {request['name']}"
    )
    build_teacher_cache(str(target), cfg, overwrite=(target / "meta.json").is_file())


CACHE_OUTPUT = "cache"  # a cache stage's output (a directory), as consumers name it


def _run_evaluate(request: dict[str, Any], stage_dir: Path, datasets: dict[str, Any] | None) -> None:
    """A pretrained teacher's parameters and val/test metrics, written as the stage's ``summary.json``
    (kept in its record: a resumed sweep reports them without loading the teacher again)."""
    from darkknowledge.fileio import atomic_write_json
    from darkknowledge.runs.evaluate import evaluate_language_model_teacher

    _check_given_inputs(request)
    config = {**request["config"], "output_dir": str(stage_dir.parent), "name": stage_dir.name}
    cfg = validate_config(config, source=f"stage {request['name']}")
    summary = evaluate_language_model_teacher(cfg, _load_splits(cfg, datasets))
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}), flush=True)
    print(json.dumps(summary["final"]), flush=True)
    atomic_write_json(stage_dir / "summary.json", {**summary, "run_dir": str(stage_dir)})


# ----------------------------------------------------------------------------- diagnostics


def _diagnose_identity(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config)


def _place_diagnose(config: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    return {**config, "paths": paths}


def diagnose_roles(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The input roles of a diagnose stage: ``teacher.I`` and ``student.J``, in order."""
    return [f"teacher.{i}" for i in range(config["teachers"])], [f"student.{j}" for j in range(config["students"])]


def _run_diagnose(request: dict[str, Any], stage_dir: Path, datasets: dict[str, Any] | None) -> None:
    from darkknowledge.diagnostics import DiagnoseOptions
    from darkknowledge.runs.diagnose import diagnose_checkpoints, diagnose_lm_caches

    config, paths = request["config"], request["config"]["paths"]
    options = DiagnoseOptions(temperatures=tuple(config["temperatures"]))
    if config.get("source") == "caches":  # language-model teachers from their caches (pretrained ones too)
        caches = [paths[f"cache.{i}"] for i in range(config["caches"])]
        diagnose_lm_caches(caches, out_dir=stage_dir, options=options, names=config["names"])
        return
    teachers, students = diagnose_roles(config)
    diagnose_checkpoints(
        [paths[r] for r in teachers],
        [paths[r] for r in students],
        [],
        split=config["split"],
        out_dir=stage_dir,
        options=options,
        names=config["names"],
    )


DIAGNOSE_REPORT = "report.html"


def _diagnose_summary(stage_dir: Path) -> dict[str, Any] | None:
    """What a diagnosis' record keeps: its report cards (the sweep's card check reads them)."""
    diagnostics = _read_dict(stage_dir / "diagnostics.json")
    return None if diagnostics is None else {"cards": diagnostics.get("cards") or []}


KINDS: dict[str, StageKind] = {
    k.value: StageKind(k, _run_identity, _run_training, place_run_inputs, keeps_history=k != Kind.STUDENT)
    for k in (Kind.TEACHER, Kind.STUDENT, Kind.ASSISTANT, Kind.ADAPTED)
}
KINDS[Kind.CACHE.value] = StageKind(Kind.CACHE, _run_identity, _run_cache, place_run_inputs)
KINDS[Kind.EVALUATE.value] = StageKind(Kind.EVALUATE, _run_identity, _run_evaluate, place_run_inputs)
KINDS[Kind.DIAGNOSE.value] = StageKind(
    Kind.DIAGNOSE,
    _diagnose_identity,
    _run_diagnose,
    _place_diagnose,
    materialises_inputs=False,
    summary=_diagnose_summary,
)
assert set(KINDS) == {k.value for k in Kind}, "every kind has a definition"
