"""A capacity sweep: teachers x methods x seeds, planned once as a stage graph and run in
topological order.

The graph (:func:`build_graph`) holds the teachers the sweep trains, one evaluation per
given pretrained language-model teacher, the CE students, TAKD assistants and AID-adapted
teachers, one teacher-output cache per teacher a student learns from (with
``teacher_cache``), every (teacher, method, seed) student and the ladder's diagnosis. Finished stages are reused; a killed sweep run again continues where
it stopped (a partly trained stage resumes from its ``last.pt``); a failed stage is
reported with its log and does not stop the others (stages after it are ``blocked``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from darkknowledge.config import deep_merge, validate_config
from darkknowledge.data.corpora import is_text, read_corpus
from darkknowledge.errors import UserError
from darkknowledge.experiments.executors import Executor, InlineExecutor
from darkknowledge.experiments.graph import FileInput, Input, StageGraph, StageRef, StageSpec
from darkknowledge.experiments.identity import INPUT_FIELDS, INPUT_PLACEHOLDER, PRETRAINED_ROLES
from darkknowledge.experiments.kinds import CACHE_OUTPUT, KINDS, Kind, place_run_inputs
from darkknowledge.experiments.spec import MethodSpec, SweepSpec, TeacherSpec, pairs
from darkknowledge.experiments.stage import read_json
from darkknowledge.experiments.store import FINISHED, StageStore
from darkknowledge.fileio import atomic_write_json

MARKER = "sweep.json"
MARKER_ID = "darkknowledge_sweep"  # the key inside sweep.json that says this project wrote it
MARKER_VERSION = 1
# what a sweep writes beside its stage directories (removed by ``clear``)
OUTPUT_FILES = ("results.csv", "teachers.csv", "results.md", "student_vs_teacher.png", "card_check.csv")
OUTPUT_DIRS = {"submitit": ".", "diagnostics": "diagnostics.json"}
DIAGNOSE_TEMPERATURES = [1.0, 2.0, 4.0, 8.0]


# ----------------------------------------------------------------------------- the graph


class _Planner:
    """Builds the stage graph of a spec; ``threads_cap`` bounds each job's engine.threads."""

    def __init__(self, spec: SweepSpec, threads_cap: int | None):
        self.spec = spec
        self.cap = threads_cap
        self.graph = StageGraph()
        self.teacher_inputs: dict[str, Input] = {}  # teacher label -> what its students learn from

    def _config(self, *parts: dict[str, Any], inputs: dict[str, Input]) -> dict[str, Any]:
        config: dict[str, Any] = {"engine": {"progress": False}}
        for part in parts:
            config = deep_merge(config, part)
        if self.cap:  # jobs side by side: a spec's engine.threads is an upper bound, never oversubscribed
            config["engine"]["threads"] = min(config["engine"].get("threads") or self.cap, self.cap)
        return place_run_inputs(config, dict.fromkeys(inputs, INPUT_PLACEHOLDER))

    def _add(self, kind: Kind, name: str, config: dict[str, Any], inputs: dict[str, Input], meta: dict[str, Any]):
        if kind != Kind.DIAGNOSE:  # checkpoints a spec's own config names (model.init): inputs identified by weights
            inputs = dict(inputs)
            for role, (section, field) in INPUT_FIELDS.items():
                path = (config.get(section) or {}).get(field)
                if not path or path == INPUT_PLACEHOLDER or role in inputs:
                    continue
                if role == "cache":
                    raise UserError(
                        f"stage {name}: teacher.cache={path} in the spec; a sweep builds its own caches "
                        "(set teacher_cache: true) instead"
                    )
                inputs[role] = FileInput.of(path, role if role in PRETRAINED_ROLES else "checkpoint")
                config = place_run_inputs(config, {role: INPUT_PLACEHOLDER})
        try:
            node = StageSpec(kind, name, config, inputs, meta)
        except UserError as exc:
            raise UserError(f"sweep spec: stage {name}: {str(exc).removeprefix('stage config: ')}") from None
        return self.graph.add(node)

    def teacher(self, t: TeacherSpec) -> Input:
        if t.checkpoint:
            if not Path(t.checkpoint).is_file():
                raise UserError(
                    f"teacher {t.label!r}: checkpoint {t.checkpoint} does not exist; fix teachers[].checkpoint"
                )
            return FileInput.of(t.checkpoint)
        if t.pretrained is not None:  # its files were checked up front
            kind, path = t.pretrained
            try:
                source = FileInput.of(path, kind)
            except UserError as exc:  # no weight files
                raise UserError(f"sweep spec: teacher {t.label!r}: {exc}") from None
            self.evaluate(t.label, source)
            return source
        spec = self.spec
        group = [u for u in spec.teachers if u.model == t.model and u.config == t.config]
        keep = sorted({u.epoch for u in group if u.epoch})
        config = self._config(
            {"method": {"name": "ce"}},
            spec.base,
            spec.teacher_config,
            t.config,
            {"model": {"name": t.model}, "seed": spec.teacher_seed},
            {"engine": {"keep_epochs": keep}} if keep else {},
            inputs={},
        )
        node = self._add(Kind.TEACHER, f"teacher-{group[0].label}", config, {}, {"teacher": group[0].label})
        return node.ref(f"epoch-{t.epoch}.pt" if t.epoch else f"{spec.teacher_checkpoint}.pt")

    def student_config(self, method: dict[str, Any], seed: int, inputs: dict[str, Input]) -> dict[str, Any]:
        spec = self.spec
        return self._config(
            spec.base,
            spec.student.config,
            {"model": {"name": spec.student.model}, "method": method, "seed": seed},
            inputs=inputs,
        )

    def ce_students(self) -> list[StageSpec]:
        model = self.spec.student.model
        return [
            self._add(
                Kind.STUDENT,
                f"student-{model}-ce-s{seed}",
                self.student_config({"name": "ce"}, seed, {}),
                {},
                {"teacher": None, "method": "ce", "method_params": {}, "seed": seed},
            )
            for seed in self.spec.seeds
        ]

    def assistant(self, t: TeacherSpec, m: MethodSpec, source: Input) -> StageSpec:
        from darkknowledge.runs.assistant import assistant_config

        assert m.assistant is not None
        inputs = {"teacher": source}
        chain = self._config(
            self.spec.base,
            m.assistant.config,
            {"method": m.params(), "seed": self.spec.teacher_seed},
            inputs=inputs,
        )
        config = assistant_config(validate_config(chain, source=f"methods {m.label}.assistant"), m.assistant.model)
        return self._add(
            Kind.ASSISTANT,
            f"assistant-{m.assistant.model}-{m.label}-from-{t.label}",
            self._config(config.model_dump(mode="json", exclude={"output_dir", "name"}), inputs=inputs),
            inputs,
            {"teacher": t.label, "method": m.label},
        )

    def adapted(self, t: TeacherSpec, m: MethodSpec, source: Input, ce: StageSpec) -> StageSpec:
        """AID: the teacher fine-tuned towards the pre-trained student (the CE student of the first seed)."""
        assert m.adapt is not None
        architecture = t.model or _checkpoint_model(source)
        inputs: dict[str, Input] = {"init": source, "teacher": ce.ref("last.pt")}
        config = self._config(
            self.spec.base,
            self.spec.teacher_config,
            m.adapt.config,
            {"model": {"name": architecture}, "method": m.adapt.method, "seed": self.spec.teacher_seed},
            inputs=inputs,
        )
        config["engine"].pop("keep_epochs", None)  # teacher_config's snapshots are the trained teachers', not its
        return self._add(
            Kind.ADAPTED, f"adapted-{t.label}-{m.label}", config, inputs, {"teacher": t.label, "method": m.label}
        )

    def evaluate(self, label: str, source: FileInput) -> StageSpec:
        """A given pretrained teacher measured once on the students' validation and test splits."""
        merged = self._config(self.spec.base, self.spec.student.config, inputs={})
        config = {
            "data": merged.get("data", {}),
            "engine": merged["engine"],
            "teacher": {source.kind: INPUT_PLACEHOLDER},
        }
        return self._add(Kind.EVALUATE, f"evaluate-{label}", config, {source.kind: source}, {"teacher": label})

    def cache(self, label: str, source: Input) -> StageSpec:
        role = teacher_role(source)
        inputs = {role: source, "cache": source}  # the cache field names the stage's own output
        config = self.student_config({"name": "ce"}, 0, inputs)
        if self.spec.teacher_topk is not None:
            config["teacher"]["topk"] = self.spec.teacher_topk
        return self._add(Kind.CACHE, f"cache-{label}", config, {role: source}, {"teacher": label})

    def distil_inputs(self, label: str, source: Input, caches: dict[str, StageSpec]) -> dict[str, Input]:
        """What a student distilled from ``source`` (teacher ``label``) consumes: the teacher, and
        its cache (one per source, kept in ``caches``) with ``teacher_cache``."""
        inputs: dict[str, Input] = {teacher_role(source): source}
        if self.spec.teacher_cache:
            if source.identity not in caches:
                caches[source.identity] = self.cache(label, source)
            inputs["cache"] = caches[source.identity].ref(CACHE_OUTPUT)
        return inputs

    def diagnose_caches(self, caches: list[tuple[str, StageSpec]]) -> StageSpec:
        """The teachers diagnosed from their language-model caches (pretrained ones included), in
        spec order, with the statistics each cache recorded from the full distribution beside them."""
        inputs: dict[str, Input] = {f"cache.{i}": stage.ref(CACHE_OUTPUT) for i, (_, stage) in enumerate(caches)}
        config = {
            "source": "caches",
            "temperatures": DIAGNOSE_TEMPERATURES,
            "caches": len(caches),
            "names": [label for label, _ in caches],
            "card_rules": _card_rules(),
        }
        return self._add(Kind.DIAGNOSE, "diagnose-teachers", config, inputs, {})

    def diagnose(self, teachers: list[tuple[str, Input]], ce: StageSpec) -> StageSpec:
        rules = _card_rules()
        inputs: dict[str, Input] = {f"teacher.{i}": ref for i, (_, ref) in enumerate(teachers)}
        inputs["student.0"] = ce.ref("last.pt")
        config = {
            "split": "train",
            "temperatures": DIAGNOSE_TEMPERATURES,
            "teachers": len(teachers),
            "students": 1,
            "names": [label for label, _ in teachers] + [ce.name],
            "card_rules": rules,  # new card rules: new cards
        }
        return self._add(Kind.DIAGNOSE, "diagnose-teachers", config, inputs, {})

    def build(self) -> StageGraph:
        spec = self.spec
        for t in spec.teachers:
            self.teacher_inputs[t.label or ""] = self.teacher(t)
        ce = self.ce_students()
        caches: dict[str, StageSpec] = {}
        for t in spec.teachers:
            teacher = self.teacher_inputs[t.label or ""]
            for m in spec.methods:
                if not pairs(t, m):
                    continue
                source, source_label = teacher, t.label or ""
                if m.assistant or m.adapt:
                    step = self.assistant(t, m, teacher) if m.assistant else self.adapted(t, m, teacher, ce[0])
                    source, source_label = step.ref("last.pt"), step.name
                inputs = self.distil_inputs(source_label, source, caches)
                for seed in spec.seeds:
                    self._add(
                        Kind.STUDENT,
                        f"student-{spec.student.model}-{m.label}-from-{t.label}-s{seed}",
                        self.student_config(m.params(), seed, inputs),
                        inputs,
                        {"teacher": t.label, "method": m.label, "method_params": m.params(), "seed": seed},
                    )
        ladder = [(t.label or "", self.teacher_inputs[t.label or ""]) for t in spec.teachers if t.pretrained is None]
        cached = [(t.label or "", caches.get(self.teacher_inputs[t.label or ""].identity)) for t in spec.teachers]
        language_model = is_text(validate_config(deep_merge(spec.base, spec.student.config), source="spec").data)
        if spec.diagnose and language_model and cached and all(stage is not None for _, stage in cached):
            self.diagnose_caches([(label, stage) for label, stage in cached if stage is not None])  # all teachers
        elif spec.diagnose and ladder:  # from checkpoints: pretrained teachers are left out
            self.diagnose(ladder, ce[0])
        return self.graph


def _card_rules() -> str:
    """A digest of the report cards' rules: new rules make a diagnose stage run again."""
    from darkknowledge.diagnostics import DISCLAIMER, RULES_VERSION

    return hashlib.sha256(json.dumps([DISCLAIMER, RULES_VERSION]).encode()).hexdigest()[:16]


def teacher_role(source: Input) -> str:
    """The input role under which a student consumes a teacher: ``teacher`` (its ``teacher.checkpoint``),
    or ``hf`` / ``gguf`` for a pretrained language model (``teacher.hf`` / ``teacher.gguf``)."""
    return source.kind if isinstance(source, FileInput) and source.kind in PRETRAINED_ROLES else "teacher"


def _checkpoint_model(source: Input) -> str:
    from darkknowledge.engine.checkpoint import load_checkpoint

    assert isinstance(source, FileInput), "a sweep-trained teacher's architecture is in the spec"
    return str(load_checkpoint(source.path)["model_name"])


def check_up_front(spec: SweepSpec) -> None:
    """What the spec's validation cannot see: model names exist, a given teacher fits the data, a
    pretrained teacher's files are sound and the students' data uses its tokenizer."""
    from darkknowledge.models import build_model

    models = [("student.model", spec.student.model)]
    models += [(f"teachers[{i}].model", t.model) for i, t in enumerate(spec.teachers) if t.model]
    models += [(f"methods[{i}].assistant.model", m.assistant.model) for i, m in enumerate(spec.methods) if m.assistant]
    for where, name in models:
        try:
            build_model(name, 2, 3)
        except UserError as exc:
            raise UserError(f"sweep spec: {where}: {exc}") from None
    pretrained = [(i, t.pretrained) for i, t in enumerate(spec.teachers) if t.pretrained is not None]
    given = [(i, t) for i, t in enumerate(spec.teachers) if t.checkpoint]
    if not (pretrained or given):
        return
    d = validate_config(deep_merge(spec.base, spec.student.config), source="sweep spec base").data
    if pretrained:
        from darkknowledge.engine.factory import check_teacher_tokenizer
        from darkknowledge.models.lm import check_pretrained_lm

        for i, (kind, path) in pretrained:
            try:
                check_pretrained_lm(kind, path)
                check_teacher_tokenizer(d.tokenizer, path)
            except UserError as exc:
                raise UserError(f"sweep spec: teachers[{i}].{kind}: {exc}") from None
    if given:
        from darkknowledge.data import build_dataset
        from darkknowledge.engine.checkpoint import load_checkpoint
        from darkknowledge.engine.factory import check_teacher_fits

        sample = build_dataset(
            d.name,
            root=d.root,
            train=False,
            download=d.download,
            classes=d.classes,
            train_per_class=1,
            image_size=d.image_size,
            seed=d.subset_seed,
        )
        for i, t in given:
            if not Path(str(t.checkpoint)).is_file():
                raise UserError(f"sweep spec: teachers[{i}].checkpoint {t.checkpoint} does not exist")
            try:
                check_teacher_fits(load_checkpoint(str(t.checkpoint)), sample.spec, str(t.checkpoint))
            except UserError as exc:
                raise UserError(f"sweep spec: teachers[{i}]: {exc}") from None


def build_graph(spec: SweepSpec, threads_cap: int | None = None) -> tuple[StageGraph, dict[str, Input]]:
    """The stage graph of a spec and, per teacher label, what its students learn from."""
    check_up_front(spec)
    planner = _Planner(spec, threads_cap)
    return planner.build(), planner.teacher_inputs


# ----------------------------------------------------------------------------- the sweep


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
        self.executor = executor or InlineExecutor()
        self.log = log
        self.graph, self.teacher_inputs = build_graph(spec, self.executor.threads_per_job())
        self.store = StageStore(self.out / "runs", records)
        self.store.set_groups(self.graph.groups())
        self._status: dict[int, tuple[str, str]] = {}

    # ------------------------------------------------------------------ reading
    def stages(self) -> list[StageSpec]:
        return list(self.graph.nodes)

    def state(self, node: StageSpec) -> str:
        return self.store.state(node)

    def refresh(self) -> None:
        """Read states again (after jobs ran)."""
        self.store.refresh()
        self.store.set_groups(self.graph.groups())
        self._status.clear()

    def _ready(self, node: StageSpec) -> tuple[str, str] | None:
        """Why ``node`` cannot run yet: (state, detail), or None when its inputs are here."""
        for ref in node.inputs.values():
            if not isinstance(ref, StageRef):
                continue
            producer = ref.stage
            state = self.status_of(producer)[0]
            if state in ("failed", "blocked"):
                return "blocked", f"needs {producer.name} ({state})"
            if state == "recorded":
                if not KINDS[node.kind.value].materialises_inputs:
                    return "skipped", f"needs the files of {producer.name} (recorded elsewhere); run it here first"
                continue  # it runs again here first (see _needed)
            if state != "done":
                return "waiting", f"needs {producer.name}"
            if not self.store.output(ref).exists():
                return "blocked", f"needs {producer.name}/{ref.output} (missing: the stage did not write it)"
        return None

    def status_of(self, node: StageSpec) -> tuple[str, str]:
        """(state, detail) of a stage from the store: done / recorded / failed / partial /
        pending, or, for a stage still to run, waiting / blocked / skipped (read once per pass)."""
        if id(node) not in self._status:
            self._status[id(node)] = self._status_of(node)
        return self._status[id(node)]

    def _status_of(self, node: StageSpec) -> tuple[str, str]:
        state = self.store.state(node)
        twin = self.store.twin_of(node)
        if twin is not None:
            return state, f"the same run as {twin.name} (identical configuration and inputs)"
        if state == "done":
            return state, str(self.store.dir(node))
        if state == "recorded":
            found = self.store.find_record(node)
            return state, f"done elsewhere: {found[0] if found else ''}"
        if state == "failed":
            result = self.store.result(node) or {}
            return state, f"{result.get('error')}  log: {self.store.log(node)}"
        why = self._ready(node)
        if why is not None and (state == "pending" or why[0] != "waiting"):
            return why
        if state == "partial":
            epochs = (node.config.get("optim") or {}).get("epochs")
            done = len(self.store.history(node)) if epochs else 0
            progress = f" ({done} of {epochs} epochs done)" if epochs else ""
            return state, f"started, resumable{progress}; log: {self.store.log(node)}"
        return state, "ready to run"

    def status_rows(self) -> list[dict[str, str]]:
        return [
            {"stage": n.name, "kind": n.kind.value, "state": s, "detail": d}
            for n in self.graph.nodes
            for s, d in [self.status_of(n)]
        ]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.status_rows():
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out

    # ------------------------------------------------------------------ planning a pass
    def _needed(self, todo: list[StageSpec]) -> set[str]:
        """Keys of recorded stages whose files a stage to run needs (transitively)."""
        needed: set[str] = set()
        stack = [n for n in todo if KINDS[n.kind.value].materialises_inputs]
        while stack:
            for producer in stack.pop().producers():
                home = self.store.home(producer)
                if self.store.state(home) == "recorded" and home.key not in needed:
                    needed.add(home.key)
                    stack.append(home)
        return needed

    def plan(self, retry_failed: bool = True, exclude: set[str] | None = None) -> list[StageSpec]:
        """The stages this invocation would run (one per key), in graph order: those not finished
        (failed ones unless ``retry_failed``), the recorded ones whose files they need, minus any
        that could not get their inputs (a producer failed and is not run again, or did not write
        the file)."""
        exclude = exclude or set()
        homes = [self.store.home(g[0]) for g in self.graph.groups().values()]
        wanted = [
            n
            for n in homes
            if n.key not in exclude
            and (self.store.state(n) in ("pending", "partial") or (retry_failed and self.store.state(n) == "failed"))
            and (self._ready(n) or ("", ""))[0] != "skipped"
        ]
        todo = {n.key for n in wanted} | (self._needed(wanted) - exclude)
        changed = True
        while changed:  # drop what cannot get its inputs
            changed = False
            for n in (h for h in homes if h.key in todo):
                for ref in (r for r in n.inputs.values() if isinstance(r, StageRef)):
                    producer = self.store.home(ref.stage)
                    here = self.store.state(producer) == "done" and self.store.output(ref).exists()
                    if producer.key not in todo and not here:
                        todo.discard(n.key)
                        changed = True
                        break
        return [n for n in homes if n.key in todo]

    def plan_rows(self, retry_failed: bool = True) -> list[dict[str, str]]:
        """``--dry-run``: every stage and what this invocation would do with it (nothing is run or written)."""
        todo = {n.key for n in self.plan(retry_failed)}
        rows = []
        for n in self.graph.nodes:
            state, detail = self.status_of(n)
            twin = self.store.twin_of(n)
            if twin is not None:
                action, why = "same", f"reported from {twin.name}"
            elif n.key in todo:
                action = "run"
                why = {
                    "recorded": "recorded elsewhere; its files are needed here by a stage to run",
                    "partial": "resume from its last.pt",
                    "failed": "run again (it failed)",
                }.get(state, "new")
                if self._ready(n) is not None:
                    why += ", after its inputs"
            elif state in ("done", "recorded"):
                action, why = "reuse", state
            else:
                action, why = "skip", f"{state}: {detail}"
            rows.append({"stage": n.name, "kind": n.kind.value, "action": action, "detail": why})
        return rows

    # ------------------------------------------------------------------ writing
    def check_out_dir(self) -> None:
        """A sweep writes only into a new or empty directory, or one whose ``sweep.json`` it wrote."""
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"sweep directory {self.out} is a file; choose another --out")
        if self.out.is_dir() and any(self.out.iterdir()) and not self.owns_out_dir():
            what = "a sweep.json that darkknowledge did not write" if (self.out / MARKER).exists() else f"no {MARKER}"
            raise UserError(f"{self.out} holds files that no sweep wrote ({what}); choose another --out")

    def owns_out_dir(self) -> bool:
        marker = read_json(self.out / MARKER)
        return isinstance(marker, dict) and (
            marker.get(MARKER_ID) == MARKER_VERSION or marker.get("written_by") == "darkknowledge sweep"  # before ids
        )

    def prepare_out_dir(self) -> None:
        self.check_out_dir()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.out / MARKER,
            {MARKER_ID: MARKER_VERSION, "written_by": "darkknowledge sweep", "spec": self.spec.model_dump(mode="json")},
        )

    def clear(self) -> list[Path]:
        """Delete what this project wrote in the sweep directory (stage directories with a
        stage.json, results files), nothing else; return what was removed."""
        import shutil

        self.check_out_dir()
        if not self.owns_out_dir():
            return []
        removed = []
        runs = self.store.root
        if runs.is_dir():
            for d in sorted(runs.iterdir()):
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
        if runs.is_dir() and not any(runs.iterdir()):
            runs.rmdir()
        if [p.name for p in self.out.iterdir()] == [MARKER]:  # kept while other files remain: still ours to write into
            (self.out / MARKER).unlink()
            self.out.rmdir()
        self.refresh()
        return removed

    def write_records(self) -> int:
        """Write the compact record of every finished stage (when the sweep keeps records)."""
        return sum(1 for n in self.graph.nodes if self.store.write_record(n) is not None)

    def check_recorded_corpora(self) -> None:
        """Refuse records of language-model runs made on another corpus than this machine reads
        for their ``data`` settings (the standard library's sources differ between Python versions;
        a corpus directory may have been edited): a run's summary names its corpus digest."""
        digests: dict[str, str] = {}
        for node in self.graph.nodes:
            if self.store.state(node) != "recorded":
                continue
            recorded = ((self.store.summary(node) or {}).get("data_provenance") or {}).get("corpus_digest")
            if not recorded:
                continue
            data = validate_config(node.config, source=f"stage {node.name}").data
            if not is_text(data):
                continue
            setting = json.dumps(data.model_dump(mode="json"), sort_keys=True)
            if setting not in digests:
                digests[setting] = read_corpus(data).digest
            if digests[setting] != recorded:
                raise UserError(
                    f"the record of {node.name} was made on another corpus (digest {recorded[:12]}) than data.name="
                    f"{data.name} reads here ({digests[setting][:12]}): the standard library differs between Python "
                    "versions and a corpus directory may have changed; run with the corpus (or Python) that made "
                    "the records, or give the spec another records directory"
                )

    def run(self, retry_failed: bool = True) -> dict[str, int]:
        """Run every missing stage in topological order; return counts of final states."""
        self.prepare_out_dir()
        self.check_recorded_corpora()
        if self.executor.streams:
            return self._run_streaming(retry_failed)
        t0 = time.perf_counter()
        attempted: set[str] = set()
        step = 0
        while True:
            self.refresh()
            todo = self.plan(retry_failed, exclude=attempted)
            ready = [n for n in todo if self._ready(n) is None]
            if not ready:
                break
            step += 1
            self.log(
                f"wave {step}: {len(ready)} stage(s) to run, {len(todo) - len(ready)} after them ({self.executor.name} executor)"
            )
            for n in ready:
                self.store.write_request(n)
            start = time.perf_counter()
            self.executor.run([self.store.dir(n) for n in ready])
            self.refresh()
            for n in ready:
                attempted.add(n.key)
                self._finished(n)
            self.log(f"wave {step} finished in {time.perf_counter() - start:.1f}s")
        counts = self.counts()
        self.log(f"sweep: {counts} in {time.perf_counter() - t0:.1f}s")
        return counts

    def _run_streaming(self, retry_failed: bool) -> dict[str, int]:
        """:meth:`run` on an executor with a worker pool: each stage is submitted as soon as its
        inputs are finished and a worker is free, so a long stage never holds back the stages that
        do not need it; among ready stages, the one the most other stages wait for goes first."""
        from concurrent.futures import FIRST_COMPLETED, wait

        executor: Any = self.executor
        t0 = time.perf_counter()
        attempted: set[str] = set()
        running: dict[Any, StageSpec] = {}
        waiting_on = self.graph.waiting_on()
        self.refresh()
        with executor.pool() as pool:
            while True:
                ready = [n for n in self.plan(retry_failed, exclude=attempted) if self._ready(n) is None]
                # the stage most others wait for first; never more than the workers can take, so a
                # stage that becomes ready later is not queued behind the others
                ready.sort(key=lambda n: -waiting_on.get(n.key, 0))
                for n in ready[: max(0, executor.jobs - len(running))]:
                    self.store.write_request(n)
                    attempted.add(n.key)
                    running[executor.submit(pool, self.store.dir(n))] = n
                    self.log(f"  started {n.name} ({len(running)} running, {self.executor.name} executor)")
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                finished = [(future, running.pop(future)) for future in done]
                for future, n in finished:
                    executor.collect(future, self.store.dir(n))
                self.refresh()  # once for every stage that finished: their outcomes, and what is ready now
                for _, n in finished:
                    self._finished(n)
        counts = self.counts()
        self.log(f"sweep: {counts} in {time.perf_counter() - t0:.1f}s")
        return counts

    def _finished(self, n: StageSpec) -> None:
        """Log a stage's outcome and write its record (and those of the stages that are the same run)."""
        self.log(self._outcome_line(n))
        self.store.write_record(n)
        for twin in (
            t for t in self.graph.nodes if t.key == n.key and t is not n and self.store.twin_of(t) is not None
        ):
            self.store.write_record(twin)
            self.log(f"  {self.store.state(twin):7s} {twin.name}  (the same run as {self.store.home(twin).name})")

    def _outcome_line(self, n: StageSpec) -> str:
        res = self.store.result(n) or {}
        line = f"  {self.store.state(n):7s} {n.name}"
        summary = self.store.summary(n) if res.get("status") == "done" else None
        final = (summary or {}).get("final") or {}
        if final.get("test/bpb") is not None:  # a language model
            line += f"  {final['test/bpb']:.3f} bits per byte"
        elif final.get("test/top1") is not None:
            line += f"  top-1 {final['test/top1']:.2f}%"
        if res.get("job_wall_s") is not None:
            line += f"  ({res['job_wall_s']:.1f}s)"
        if res.get("status") == "failed":
            line += f"  error: {res.get('error')}  log: {self.store.log(n)}"
        return line


__all__ = ["FINISHED", "MARKER", "Sweep", "build_graph"]
