"""A capacity sweep: teachers x methods x seeds, expanded into stages and run in waves.

Waves (a stage's inputs exist before it is planned, so its key can name their weights):

1. the teachers the sweep trains, and the student alone (CE) for every seed;
2. one teacher-output cache per teacher (when ``teacher_cache``);
3. every (teacher, method, seed) student.

Finished stages are reused; a killed sweep re-run continues where it stopped (a
partly trained stage resumes from its ``last.pt``); a failed stage is reported with
its log and does not stop the others (students of a failed teacher are ``blocked``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from darkknowledge.config import deep_merge
from darkknowledge.errors import UserError
from darkknowledge.experiments.executors import Executor, InlineExecutor
from darkknowledge.experiments.spec import SweepSpec, TeacherSpec
from darkknowledge.experiments.stage import Stage
from darkknowledge.fileio import atomic_write_json

MARKER = "sweep.json"
# what a sweep writes beside its stage directories (removed by ``clear``)
OUTPUT_FILES = ("results.csv", "teachers.csv", "results.md", "student_vs_teacher.png")
OUTPUT_DIRS = {"diagnostics": "inputs.json", "submitit": "."}


@dataclass
class Blocked:
    """A stage that cannot be planned yet: an input stage is not done."""

    kind: str
    name: str
    waits_for: str
    state: str = "waiting"  # "waiting" (input pending) or "blocked" (input failed)


class Sweep:
    def __init__(self, spec: SweepSpec, out_dir: str | Path, executor: Executor | None = None, log: Callable[[str], None] = print):
        self.spec = spec
        self.out = Path(out_dir)
        self.runs = self.out / "runs"
        self.executor = executor or InlineExecutor()
        self.log = log

    # ------------------------------------------------------------------ planning
    def _engine(self) -> dict[str, Any]:
        threads = self.executor.threads_per_job()
        engine = {"progress": False}
        if threads and not (self.spec.base.get("engine") or {}).get("threads"):
            engine["threads"] = threads
        return {"engine": engine}

    def teacher_stage(self, t: TeacherSpec) -> Stage:
        config = deep_merge(deep_merge(deep_merge(self.spec.base, self._engine()), self.spec.teacher_config), t.config)
        config = deep_merge(config, {"model": {"name": t.model}, "method": {"name": "ce"}, "seed": self.spec.teacher_seed})
        return Stage("teacher", f"teacher-{t.label}", config, self.runs, meta={"role": "teacher", "teacher": t.label})

    def teacher_checkpoint(self, t: TeacherSpec) -> str | Blocked:
        """The checkpoint the students of ``t`` learn from, or why it is not there yet."""
        if t.checkpoint:
            if not Path(t.checkpoint).is_file():
                raise UserError(f"teacher {t.label!r}: checkpoint {t.checkpoint} does not exist; fix teachers[].checkpoint")
            return str(Path(t.checkpoint).resolve())
        stage = self.teacher_stage(t)
        state = stage.state()
        if state != "done":
            return Blocked("teacher", stage.name, stage.name, "blocked" if state == "failed" else "waiting")
        return str((stage.dir / f"{self.spec.teacher_checkpoint}.pt").resolve())

    def _student_config(self, method: dict[str, Any], seed: int) -> dict[str, Any]:
        config = deep_merge(deep_merge(self.spec.base, self._engine()), self.spec.student.config)
        return deep_merge(config, {"model": {"name": self.spec.student.model}, "method": method, "seed": seed})

    def cache_stage(self, t: TeacherSpec, checkpoint: str) -> Stage:
        config = deep_merge(self._student_config({"name": "ce"}, 0), {"teacher": {"checkpoint": checkpoint}})
        config.pop("seed")
        return Stage("cache", f"cache-{t.label}", config, self.runs, meta={"role": "cache", "teacher": t.label})

    def ce_stages(self) -> list[Stage]:
        return [Stage("student", f"student-{self.spec.student.model}-ce-s{seed}", self._student_config({"name": "ce"}, seed),
                      self.runs, meta={"role": "student", "teacher": None, "method": "ce", "method_params": {}, "seed": seed})
                for seed in self.spec.seeds]

    def waves(self) -> list[list[Stage | Blocked]]:
        """The stages in dependency order; stages whose inputs are missing are :class:`Blocked`."""
        spec = self.spec
        teachers: list[Stage | Blocked] = [self.teacher_stage(t) for t in spec.teachers if t.model]
        caches: list[Stage | Blocked] = []
        students: list[Stage | Blocked] = []
        for t in spec.teachers:
            ckpt = self.teacher_checkpoint(t)
            source: dict[str, Any] | Blocked
            if isinstance(ckpt, Blocked):
                source = ckpt
                if spec.teacher_cache:
                    caches.append(Blocked("cache", f"cache-{t.label}", ckpt.waits_for, ckpt.state))
            elif spec.teacher_cache:
                cache = self.cache_stage(t, ckpt)
                caches.append(cache)
                state = cache.state()
                source = ({"checkpoint": ckpt, "cache": str(cache.cache_dir)} if state == "done"
                          else Blocked("cache", cache.name, cache.name, "blocked" if state == "failed" else "waiting"))
            else:
                source = {"checkpoint": ckpt}
            for m in spec.methods:
                for seed in spec.seeds:
                    name = f"student-{spec.student.model}-{m.label}-from-{t.label}-s{seed}"
                    if isinstance(source, Blocked):
                        students.append(Blocked("student", name, source.waits_for, source.state))
                        continue
                    config = deep_merge(self._student_config(m.params(), seed), {"teacher": source})
                    students.append(Stage("student", name, config, self.runs, meta={
                        "role": "student", "teacher": t.label, "method": m.label, "method_params": m.params(), "seed": seed}))
        return [teachers + self.ce_stages(), caches, students]

    def stages(self) -> list[Stage | Blocked]:
        return [s for wave in self.waves() for s in wave]

    # ------------------------------------------------------------------ running
    def check_out_dir(self) -> None:
        """A sweep writes only into a new or empty directory, or one it wrote before."""
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"sweep directory {self.out} is a file; choose another --out")
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / MARKER).is_file():
            raise UserError(f"{self.out} holds files that no sweep wrote (no {MARKER}); choose another --out")

    def clear(self) -> list[Path]:
        """Delete what this project wrote in the sweep directory (stage directories with a
        stage.json, results files, diagnostics), nothing else; return what was removed."""
        import shutil

        self.check_out_dir()
        if not (self.out / MARKER).is_file():
            return []
        removed = []
        if self.runs.is_dir():
            for d in sorted(self.runs.iterdir()):
                if d.is_dir() and (d / "stage.json").is_file():
                    shutil.rmtree(d)
                    removed.append(d)
        for name in OUTPUT_FILES:
            p = self.out / name
            if p.is_file():
                p.unlink()
                removed.append(p)
        for name, marker in OUTPUT_DIRS.items():
            p = self.out / name
            if p.is_dir() and (p / marker).exists():
                shutil.rmtree(p)
                removed.append(p)
        if self.runs.is_dir() and not any(self.runs.iterdir()):
            self.runs.rmdir()
        if [p.name for p in self.out.iterdir()] == [MARKER]:  # kept while other files remain: still ours to write into
            (self.out / MARKER).unlink()
            self.out.rmdir()
        return removed

    def run(self, retry_failed: bool = True) -> dict[str, int]:
        """Run every missing stage, wave by wave; return counts of final states."""
        self.check_out_dir()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / MARKER, {"spec": self.spec.model_dump(mode="json"), "written_by": "darkknowledge sweep"})
        t0 = time.perf_counter()
        for i in range(3):
            wave = [s for s in self.waves()[i] if isinstance(s, Stage)]
            todo = [s for s in wave if s.state() in ("pending", "partial") or (retry_failed and s.state() == "failed")]
            if not todo:
                continue
            self.log(f"wave {i + 1}: {len(todo)} stage(s) to run, {len(wave) - len(todo)} done "
                     f"({self.executor.name} executor)")
            for s in todo:
                s.write_request()
            start = time.perf_counter()
            self.executor.run([s.dir for s in todo])
            for s in todo:
                res = s.result() or {}
                line = f"  {s.state():7s} {s.name}"
                summary = s.summary() if res.get("status") == "done" else None
                if summary and summary.get("final", {}).get("test/top1") is not None:
                    line += f"  top-1 {summary['final']['test/top1']:.2f}%"
                if res.get("job_wall_s") is not None:
                    line += f"  ({res['job_wall_s']:.1f}s)"
                if res.get("status") == "failed":
                    line += f"  error: {res.get('error')}  log: {s.log}"
                self.log(line)
            self.log(f"wave {i + 1} finished in {time.perf_counter() - start:.1f}s")
        counts = self.counts()
        self.log(f"sweep: {counts} in {time.perf_counter() - t0:.1f}s")
        return counts

    def status_rows(self) -> list[dict[str, str]]:
        rows = []
        for s in self.stages():
            if isinstance(s, Blocked):
                rows.append({"stage": s.name, "kind": s.kind, "state": s.state, "detail": f"needs {s.waits_for}"})
                continue
            state = s.state()
            res = s.result() or {}
            detail = str(s.dir)
            if state == "failed":
                detail = f"{res.get('error')}  log: {s.log}"
            elif state == "partial":
                detail = f"started, resumable; log: {s.log}"
            rows.append({"stage": s.name, "kind": s.kind, "state": state, "detail": detail})
        return rows

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.status_rows():
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out

