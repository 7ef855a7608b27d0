"""A capacity sweep: teachers x methods x seeds, expanded into stages and run in waves.

Waves (a stage's inputs exist before it is planned, so its key can name their weights):

1. the teachers the sweep trains, and the student alone (CE) for every seed;
2. teacher-side steps of method entries: TAKD assistants, AID-adapted teachers;
3. one teacher-output cache per teacher a student learns from (when ``teacher_cache``);
4. every (teacher, method, seed) student.

Finished stages are reused; a killed sweep re-run continues where it stopped (a
partly trained stage resumes from its ``last.pt``); a failed stage is reported with
its log and does not stop the others (students of a failed teacher are ``blocked``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darkknowledge.config import deep_merge
from darkknowledge.errors import UserError
from darkknowledge.experiments.executors import Executor, InlineExecutor
from darkknowledge.experiments.spec import MethodSpec, SweepSpec, TeacherSpec, pairs
from darkknowledge.experiments.stage import INPUT_KEYS, Stage
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
    def __init__(
        self,
        spec: SweepSpec,
        out_dir: str | Path,
        executor: Executor | None = None,
        log: Callable[[str], None] = print,
        records: str | Path | None = None,
    ):
        self.spec = spec
        self.out = Path(out_dir)
        self.runs = self.out / "runs"
        self.executor = executor or InlineExecutor()
        self.log = log
        self.records = Path(records) if records else None
        self._identity: dict[str, str] = {}  # checkpoint path -> "stage:<key>/<file>" for outputs of this sweep
        self._virtual: dict[str, Stage] = {}  # output paths of recorded stages not materialised here

    def _stage(self, kind: str, name: str, config: dict[str, Any], meta: dict[str, Any]) -> Stage:
        """A stage whose inputs produced by this sweep are identified by their stage, not their bytes."""
        inputs = {
            role: self._identity[path]
            for role, (section, k) in INPUT_KEYS.items()
            if (path := (config.get(section) or {}).get(k)) in self._identity
        }
        cap = self.executor.threads_per_job()
        if cap:  # jobs running side by side: a spec's engine.threads is an upper bound, never oversubscribed
            engine = dict(config.get("engine") or {})
            engine["threads"] = min(engine.get("threads") or cap, cap)
            config = {**config, "engine": engine}
        return Stage(kind, name, config, self.runs, meta=meta, inputs=inputs, records=self.records)

    def _output(self, stage: Stage, filename: str) -> str | Blocked:
        """The path of a finished stage's output file, or why it is not there. A stage done
        elsewhere (``recorded``: a committed record, no files here) gives the path its files
        will have: stages that need them make it run again here (:meth:`_needed`)."""
        stage = stage.same_as or stage  # the same run under another label: its files
        state = stage.state()
        if state not in ("done", "recorded"):
            return Blocked(stage.kind, stage.name, stage.name, "blocked" if state == "failed" else "waiting")
        path = stage.dir / filename
        resolved = str(path.resolve())
        if state == "recorded" and not path.exists():
            self._virtual[resolved] = stage
            self._virtual[str(stage.cache_dir.resolve())] = stage
        elif not path.exists():
            return Blocked(
                stage.kind, stage.name, f"{stage.name}/{filename} (missing: the stage did not write it)", "blocked"
            )
        self._identity[resolved] = f"stage:{stage.key}/{filename}"
        return resolved

    def _needed(self, plan: list[Stage | Blocked]) -> set[str]:
        """Keys of recorded stages whose files a stage still to run needs (transitively)."""
        needed: set[str] = set()
        todo = [s for s in plan if isinstance(s, Stage) and s.same_as is None and s.state() not in ("done", "recorded")]
        while todo:
            stage = todo.pop()
            for section, k in [*INPUT_KEYS.values(), ("teacher", "cache")]:
                path = (stage.config.get(section) or {}).get(k)
                producer = self._virtual.get(str(Path(path).resolve())) if path else None
                if producer is not None and producer.key not in needed:
                    needed.add(producer.key)
                    todo.append(producer)
        return needed

    # ------------------------------------------------------------------ planning
    def _engine(self) -> dict[str, Any]:
        return {"engine": {"progress": False}}

    def _teacher_group(self, t: TeacherSpec) -> list[TeacherSpec]:
        """Entries trained by one run: same model and config (e.g. a full and an early-stopped teacher)."""
        return [u for u in self.spec.teachers if u.model == t.model and u.config == t.config]

    def teacher_stage(self, t: TeacherSpec) -> Stage:
        group = self._teacher_group(t)
        config = deep_merge(deep_merge(deep_merge(self.spec.base, self._engine()), self.spec.teacher_config), t.config)
        config = deep_merge({"method": {"name": "ce"}}, config)  # ce unless the config says otherwise (e.g. regt)
        keep = sorted({u.epoch for u in group if u.epoch})
        extra = {"engine": {"keep_epochs": keep}} if keep else {}
        config = deep_merge(config, {"model": {"name": t.model}, "seed": self.spec.teacher_seed, **extra})
        return self._stage(
            "teacher", f"teacher-{group[0].label}", config, {"role": "teacher", "teacher": group[0].label}
        )

    def teacher_checkpoint(self, t: TeacherSpec) -> str | Blocked:
        """The checkpoint the students of ``t`` learn from, or why it is not there yet."""
        if t.checkpoint:
            if not Path(t.checkpoint).is_file():
                raise UserError(
                    f"teacher {t.label!r}: checkpoint {t.checkpoint} does not exist; fix teachers[].checkpoint"
                )
            return str(Path(t.checkpoint).resolve())
        stage = self.teacher_stage(t)
        name = f"epoch-{t.epoch}.pt" if t.epoch else f"{self.spec.teacher_checkpoint}.pt"
        return self._output(stage, name)

    def _student_config(self, method: dict[str, Any], seed: int) -> dict[str, Any]:
        config = deep_merge(deep_merge(self.spec.base, self._engine()), self.spec.student.config)
        return deep_merge(config, {"model": {"name": self.spec.student.model}, "method": method, "seed": seed})

    def cache_stage(self, label: str, checkpoint: str) -> Stage:
        config = deep_merge(self._student_config({"name": "ce"}, 0), {"teacher": {"checkpoint": checkpoint}})
        config.pop("seed")
        return self._stage("cache", f"cache-{label}", config, {"role": "cache", "teacher": label})

    def ce_stages(self) -> list[Stage]:
        return [
            self._stage(
                "student",
                f"student-{self.spec.student.model}-ce-s{seed}",
                self._student_config({"name": "ce"}, seed),
                {"role": "student", "teacher": None, "method": "ce", "method_params": {}, "seed": seed},
            )
            for seed in self.spec.seeds
        ]

    def intermediate_stage(self, t: TeacherSpec, m: MethodSpec, teacher_ckpt: str) -> Stage | Blocked:
        """The teacher-side step of a method entry: a TAKD assistant, or the AID-adapted teacher."""
        base = deep_merge(self.spec.base, self._engine())
        if m.assistant:
            config = deep_merge(
                deep_merge(base, m.assistant.config),
                {
                    "model": {"name": m.assistant.model},
                    "method": m.params(),
                    "seed": self.spec.teacher_seed,
                    "teacher": {"checkpoint": teacher_ckpt},
                },
            )
            return self._stage(
                "assistant",
                f"assistant-{m.assistant.model}-{m.label}-from-{t.label}",
                config,
                {"role": "assistant", "teacher": t.label, "method": m.label},
            )
        student = self._output(
            self.ce_stages()[0], "last.pt"
        )  # AID adapts to a pre-trained student: the CE student of the first seed
        if isinstance(student, Blocked):
            return Blocked("adapted", f"adapted-{t.label}-{m.label}", student.waits_for, student.state)
        from darkknowledge.engine.checkpoint import load_checkpoint

        # a sweep-trained teacher's file may not be here yet (recorded elsewhere): its architecture is in the spec
        architecture = t.model or load_checkpoint(teacher_ckpt)["model_name"]
        config = deep_merge(
            deep_merge(deep_merge(base, self.spec.teacher_config), m.adapt.config),
            {
                "model": {"name": architecture, "init": teacher_ckpt},
                "method": m.adapt.method,
                "seed": self.spec.teacher_seed,
                "teacher": {"checkpoint": student},
            },
        )
        return self._stage(
            "adapted",
            f"adapted-{t.label}-{m.label}",
            config,
            {"role": "adapted", "teacher": t.label, "method": m.label},
        )

    def waves(self) -> list[list[Stage | Blocked]]:
        """The stages in dependency order: (1) teachers and CE students, (2) assistants and
        adapted teachers, (3) caches, (4) distilled students; a stage whose input is not
        done yet is :class:`Blocked`."""
        spec = self.spec
        seen: set[str] = set()
        teachers: list[Stage | Blocked] = []
        for t in spec.teachers:
            if t.model and (stage := self.teacher_stage(t)).name not in seen:
                seen.add(stage.name)
                teachers.append(stage)
        middle: list[Stage | Blocked] = []
        caches: dict[str, Stage | Blocked] = {}
        students: list[Stage | Blocked] = []
        for t in spec.teachers:
            teacher_ckpt = self.teacher_checkpoint(t)
            for m in spec.methods:
                if not pairs(t, m):
                    continue
                source, source_label = teacher_ckpt, t.label
                if (m.assistant or m.adapt) and isinstance(teacher_ckpt, str):
                    stage = self.intermediate_stage(t, m, teacher_ckpt)
                    middle.append(stage)
                    source, source_label = (
                        (self._output(stage, "last.pt") if isinstance(stage, Stage) else stage),
                        stage.name,
                    )
                elif m.assistant or m.adapt:
                    middle.append(
                        Blocked(
                            "assistant" if m.assistant else "adapted",
                            f"{'assistant' if m.assistant else 'adapted'}-of-{t.label}-{m.label}",
                            teacher_ckpt.waits_for,
                            teacher_ckpt.state,
                        )
                    )
                teacher: dict[str, Any] | Blocked = {"checkpoint": source} if isinstance(source, str) else source
                if spec.teacher_cache and isinstance(source, str):
                    if source not in caches:
                        caches[source] = self.cache_stage(source_label, source)
                    cache = caches[source]
                    ready = self._output(cache, "cache/meta.json")
                    teacher = {"checkpoint": source, "cache": str(cache.cache_dir)} if isinstance(ready, str) else ready
                for seed in spec.seeds:
                    name = f"student-{spec.student.model}-{m.label}-from-{t.label}-s{seed}"
                    if isinstance(teacher, Blocked):
                        students.append(Blocked("student", name, teacher.waits_for, teacher.state))
                        continue
                    config = deep_merge(self._student_config(m.params(), seed), {"teacher": teacher})
                    students.append(
                        self._stage(
                            "student",
                            name,
                            config,
                            {
                                "role": "student",
                                "teacher": t.label,
                                "method": m.label,
                                "method_params": m.params(),
                                "seed": seed,
                            },
                        )
                    )
        waves = [teachers + self.ce_stages(), middle, list(caches.values()), students]
        groups: dict[str, list[Stage]] = {}
        for s in (s for w in waves for s in w if isinstance(s, Stage)):
            groups.setdefault(s.key, []).append(s)
        for group in (
            g for g in groups.values() if len(g) > 1
        ):  # one run: one finished here, else recorded, else the first
            states = [s._own_state() for s in group]
            original = next(
                (s for s, st in zip(group, states) if st == "done"),
                next((s for s, st in zip(group, states) if st == "recorded"), group[0]),
            )
            for s in group:
                s.same_as = original if s is not original else None
        return waves

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

    def write_records(self) -> int:
        """Write the compact record of every finished stage (when the sweep keeps records)."""
        return sum(1 for s in self.stages() if isinstance(s, Stage) and s.write_record() is not None)

    def run(self, retry_failed: bool = True) -> dict[str, int]:
        """Run every missing stage, wave by wave; return counts of final states."""
        self.check_out_dir()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.out / MARKER, {"spec": self.spec.model_dump(mode="json"), "written_by": "darkknowledge sweep"}
        )
        t0 = time.perf_counter()
        for i in range(len(self.waves())):
            waves = self.waves()
            needed = self._needed([s for w in waves for s in w])
            wave = [(s, s.state()) for s in waves[i] if isinstance(s, Stage)]
            todo = [
                s
                for s, state in wave
                if s.same_as is None
                and (
                    state in ("pending", "partial")
                    or (retry_failed and state == "failed")
                    or (state == "recorded" and s.key in needed)
                )
            ]
            if not todo:
                continue
            self.log(
                f"wave {i + 1}: {len(todo)} stage(s) to run, {len(wave) - len(todo)} done "
                f"({self.executor.name} executor)"
            )
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
            for st in todo:
                st.write_record()
            ran = {s.key for s in todo}
            for twin in (s for s, _ in wave if s.same_as is not None and s.key in ran):
                twin.write_record()
                self.log(f"  {twin.state():7s} {twin.name}  (the same run as {twin.same_as.name})")
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
            elif state == "recorded":
                detail = f"done elsewhere: {s.record_file()}"
            if s.same_as is not None:
                detail = f"the same run as {s.same_as.name} (identical configuration and inputs)"
            rows.append({"stage": s.name, "kind": s.kind, "state": state, "detail": detail})
        return rows

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.status_rows():
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out
