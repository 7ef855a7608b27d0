"""``darkknowledge tune``: choose teacher, method and its parameters for a student on the
validation split, within a budget of student epochs.

A tune spec is a sweep spec (base, teachers, student, caches, records) plus ``search``: the
candidate teachers, methods and parameter ranges, and the successive-halving schedule. Optuna
samples a candidate (TPE or random); the candidate trains for ``min_epochs``, then — if
Optuna's successive-halving pruner keeps it — for ``reduction_factor`` times as many, up to
``max_epochs``. Every rung is an ordinary student stage (its own run with that many epochs,
keyed by its configuration), so a rung already run by this tune, another tune or a sweep
sharing the records is reused, and teacher caches are shared between trials. The study lives
in ``<out>/study.journal``: a killed tune run again keeps its finished trials and re-runs an
interrupted one with the same parameters (its finished rungs are reused).

Selection reads only validation metrics (best epoch on the validation split) of the metric the
trainer selects epochs by (top-1 for classifiers, NLL for language models; each run's summary
names it). The test split is read once, for the chosen configuration's full-length run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from darkknowledge.config import deep_merge, read_yaml, validate_config
from darkknowledge.data.corpora import is_text
from darkknowledge.engine.evaluation import Selection, selection_of
from darkknowledge.errors import UserError
from darkknowledge.experiments.executors import Executor, make_executor
from darkknowledge.experiments.graph import StageSpec
from darkknowledge.experiments.kinds import Kind
from darkknowledge.experiments.spec import MethodSpec, SweepSpec
from darkknowledge.experiments.sweep import Sweep, _Planner, teacher_role
from darkknowledge.fileio import atomic_write_json, atomic_write_text

STUDY_FILE = "study.journal"
RESULT_FILE = "tune.json"
STUDY_NAME = "darkknowledge-tune"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A numeric range to sample from (``int``: integers; ``log``: uniform in log space)."""

    low: float
    high: float
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Choices(_Strict):
    """Values to choose from."""

    choices: list[Any] = Field(..., min_length=1)


class MethodSearch(_Strict):
    """A candidate method: its parameters fixed (plain values) or searched (a range or choices)."""

    name: str = Field(..., description="Method name (see `darkknowledge methods`); not `ce`.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="method parameter -> a value (fixed), {low, high, log?, int?} (a range) or {choices: [...]}.",
    )

    def space(self) -> dict[str, Range | Choices | Any]:
        out: dict[str, Range | Choices | Any] = {}
        for key, value in self.params.items():
            if isinstance(value, dict) and "choices" in value:
                out[key] = Choices.model_validate(value)
            elif isinstance(value, dict):
                out[key] = Range.model_validate(value)
            else:
                out[key] = value
        return out


class Search(_Strict):
    teachers: list[str] | None = Field(None, description="Candidate teacher labels (default: every teacher).")
    methods: list[MethodSearch] = Field(..., description="Candidate methods and their parameter ranges.")
    budget_epochs: int = Field(..., ge=1, description="Compute budget: student epochs summed over all trial stages.")
    max_epochs: int | None = Field(None, ge=1, description="Epochs of a full trial (default: the base optim.epochs).")
    min_epochs: int = Field(..., ge=1, description="Epochs of the first rung of successive halving.")
    reduction_factor: int = Field(3, ge=2, description="Successive halving keeps the best 1/reduction_factor.")
    max_trials: int | None = Field(
        None,
        ge=1,
        description="At most this many trials (default: budget_epochs // min_epochs; reused rungs cost no budget).",
    )
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler.")
    seed: int = Field(0, description="Seed of the sampler.")
    student_seed: int = Field(0, description="Seed of every trial's student (one seed: the search compares configs).")
    jobs: int = Field(1, ge=1, description="Trials run side by side (with the local or submitit executor).")


class TuneSpec(SweepSpec):
    methods: list[MethodSpec] = Field(default_factory=list, description="Unused by tune (give search.methods).")
    seeds: list[int] = Field([0], description="Seeds of the CE baseline run beside the search.")
    diagnose: bool = Field(False, description="Also diagnose the teacher ladder (the report card).")
    search: Search = Field(..., description="What to choose from, and the budget.")


def _space_error(source: str, where: str, message: str) -> UserError:
    return UserError(f"tune spec {source}: {where}: {message}")


def parse_tune_spec(data: dict[str, Any], source: str = "spec") -> TuneSpec:
    """Validate a tune spec; every problem is one ``UserError`` naming the key."""
    try:
        spec = TuneSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise UserError(f"tune spec {source}: {loc or 'top level'}: {msg}") from None
    search = spec.search
    labels = [t.label for t in spec.teachers]
    candidates = search.teachers if search.teachers is not None else labels
    if not candidates or not search.methods:
        raise _space_error(source, "search", "the search space is empty: give search.methods and at least one teacher")
    for label in set(candidates) - set(labels):
        raise _space_error(source, "search.teachers", f"{label!r} is not a teacher label of this spec")
    base = validate_config(deep_merge(spec.base, spec.student.config), source=f"tune spec {source}: base")
    if not base.data.val_per_class and not is_text(base.data):  # a text corpus always has validation documents
        raise _space_error(
            source, "base.data.val_per_class", "tune chooses on a validation split: set it (images per class held out)"
        )
    max_epochs = search.max_epochs or base.optim.epochs
    if search.min_epochs > max_epochs:
        raise _space_error(source, "search.min_epochs", f"{search.min_epochs} is above max_epochs {max_epochs}")
    if search.budget_epochs < max_epochs:
        raise _space_error(
            source,
            "search.budget_epochs",
            f"{search.budget_epochs} is smaller than one full trial ({max_epochs} epochs); raise it",
        )
    for i, m in enumerate(search.methods):
        if m.name == "ce":
            raise _space_error(source, f"search.methods[{i}]", "ce needs no teacher; it is run as the baseline")
        try:
            space = m.space()
        except ValidationError as exc:
            raise _space_error(source, f"search.methods[{i}].params", str(exc.errors()[0]["msg"])) from None
        for probe in _corners(space):  # the bounds and every choice must be valid parameters
            try:
                validate_config(deep_merge(spec.base, {"method": {"name": m.name, **probe}}), source="config")
            except UserError as exc:
                raise _space_error(source, f"search.methods[{i}]", str(exc).removeprefix("config: ")) from None
    return spec


def _corners(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Parameter sets covering every bound and every choice of ``space`` (for validation)."""
    width = max([2] + [len(v.choices) for v in space.values() if isinstance(v, Choices)])
    probes = []
    for i in range(width):
        probe = {}
        for key, value in space.items():
            if isinstance(value, Choices):
                probe[key] = value.choices[i % len(value.choices)]
            elif isinstance(value, Range):
                bound = value.low if i % 2 == 0 else value.high
                probe[key] = int(bound) if value.int else bound
            else:
                probe[key] = value
        probes.append(probe)
    return probes


def load_tune_spec(path: str | Path) -> TuneSpec:
    if not Path(path).is_file():
        raise UserError(f"tune spec {path} does not exist; write one (see docs/tune.md)")
    return parse_tune_spec(read_yaml(str(path)), source=str(path))


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("darkknowledge tune needs Optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class Tune:
    """A tune over ``spec`` writing under ``out``: teachers and caches as sweep stages, trials
    as student stages, the study in ``<out>/study.journal``."""

    def __init__(
        self, spec: TuneSpec, out: str | Path, executor: Executor, log: Callable[[str], None] = print, records=None
    ):
        self.spec, self.out, self.log = spec, Path(out), log
        self.sweep = Sweep(spec, self.out, executor=executor, log=log, records=records)
        self.planner = _Planner(spec, executor.threads_per_job())
        self.planner.graph, self.planner.teacher_inputs = self.sweep.graph, self.sweep.teacher_inputs
        search = spec.search
        base = validate_config(deep_merge(spec.base, spec.student.config), source="tune spec base")
        self.max_epochs = search.max_epochs or base.optim.epochs
        self.rungs = _rungs(search.min_epochs, self.max_epochs, search.reduction_factor)
        self.max_trials = search.max_trials or search.budget_epochs // search.min_epochs
        self.teachers = search.teachers if search.teachers is not None else [t.label for t in spec.teachers]
        self.methods = {m.name: m for m in search.methods}
        self.selection = selection_of(base.data)  # what each rung's best.pt was chosen by

    # ------------------------------------------------------------------ the study
    def study(self):
        optuna = _optuna()
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        search = self.spec.search
        sampler = (
            optuna.samplers.TPESampler(seed=search.seed)
            if search.sampler == "tpe"
            else optuna.samplers.RandomSampler(seed=search.seed)
        )
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=search.min_epochs, reduction_factor=search.reduction_factor
        )
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / STUDY_FILE
        _check_journal(path)
        try:
            storage = JournalStorage(JournalFileBackend(str(path)))
            return optuna.create_study(
                study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruner, direction="maximize",
                load_if_exists=True,
            )  # fmt: skip
        except Exception as exc:  # optuna raises several types for a damaged journal
            raise UserError(
                f"tune study {path} is damaged ({str(exc).splitlines()[0][:120]}); "
                f"move it away to start the search afresh (finished trial stages are reused)"
            ) from None

    def suggest(self, trial) -> dict[str, Any]:
        """A candidate: teacher label, method name and parameters."""
        teacher = trial.suggest_categorical("teacher", self.teachers)
        name = trial.suggest_categorical("method", list(self.methods))
        params: dict[str, Any] = {}
        for key, value in self.methods[name].space().items():
            tag = f"{name}.{key}"
            if isinstance(value, Choices):
                params[key] = trial.suggest_categorical(tag, value.choices)
            elif isinstance(value, Range) and value.int:
                params[key] = trial.suggest_int(tag, int(value.low), int(value.high), log=value.log)
            elif isinstance(value, Range):
                params[key] = trial.suggest_float(tag, value.low, value.high, log=value.log)
            else:
                params[key] = value
        return {"teacher": teacher, "method": name, "params": params}

    # ------------------------------------------------------------------ stages
    def rung_stage(self, candidate: dict[str, Any], epochs: int) -> StageSpec:
        """The student stage of ``candidate`` trained for ``epochs`` (added to the graph)."""
        spec, planner = self.spec, self.planner
        source = self.sweep.teacher_inputs[candidate["teacher"]]
        inputs = planner.distil_inputs(candidate["teacher"], source, {})  # a cache stage already planned is reused
        method = {"name": candidate["method"], **candidate["params"]}
        config = planner.student_config(method, spec.search.student_seed, inputs)
        config = deep_merge(config, {"optim": {"epochs": epochs}})
        config["engine"].pop("keep_epochs", None)
        tag = hashlib.sha256(json.dumps(candidate, sort_keys=True).encode()).hexdigest()[:8]
        name = f"tune-{spec.student.model}-{candidate['method']}-from-{candidate['teacher']}-{tag}-e{epochs}"
        meta = {"teacher": candidate["teacher"], "method": candidate["method"], "method_params": method}
        return planner._add(Kind.STUDENT, name, config, inputs, {**meta, "seed": spec.search.student_seed})

    def val_score(self, node: StageSpec) -> float | None:
        """The best validation score of a finished rung, higher is better (None if it failed); never a
        test metric."""
        summary = self.sweep.store.summary(node) if self.sweep.store.state(node) in ("done", "recorded") else None
        return None if summary is None else self.selection.score(summary.get("best") or {}, "val")

    # ------------------------------------------------------------------ the search
    def run(self) -> dict[str, Any]:
        _optuna()
        from optuna.trial import TrialState

        t0 = time.perf_counter()
        self.sweep.prepare_out_dir()  # refuses a directory of the user's before anything is written
        study = self.study()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            if t.state == TrialState.RUNNING:  # killed mid-trial: its finished rungs are stages, reused
                study.tell(t.number, state=TrialState.FAIL)
                study.enqueue_trial(t.params, user_attrs={"resumed_from": t.number}, skip_if_exists=False)
        self.sweep.run()  # teachers, caches, the CE baseline
        spent = self.spent(study)
        active: list[tuple[Any, dict[str, Any], int]] = []  # (trial, candidate, next rung index)
        while True:
            while (
                len(active) < self.spec.search.jobs
                and spent + self.rungs[0] <= self.spec.search.budget_epochs
                and len(study.get_trials(deepcopy=False)) < self.max_trials
            ):
                trial = study.ask()
                candidate = self.suggest(trial)
                active.append((trial, candidate, 0))
                spent += self.rungs[0]
                trial.set_user_attr("epochs_spent", 0)
            if not active:
                break
            nodes = [(trial, candidate, i, self.rung_stage(candidate, self.rungs[i])) for trial, candidate, i in active]
            self.sweep.refresh()
            reused = {node.key for *_, node in nodes if self.sweep.state(node) in ("done", "recorded")}
            self.sweep.run(retry_failed=False)
            active = []
            for trial, candidate, i, node in nodes:
                epochs = self.rungs[i]
                if node.key in reused:  # trained before (this tune, another one, a sweep): no compute spent
                    spent -= epochs
                else:
                    trial.set_user_attr("epochs_spent", trial.user_attrs.get("epochs_spent", 0) + epochs)
                value = self.val_score(node)
                if value is None:
                    self.log(f"  trial {trial.number}: {node.name} failed; see {self.sweep.store.log(node)}")
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                trial.set_user_attr(f"stage_e{epochs}", node.key)
                trial.report(value, step=epochs)
                last = i + 1 == len(self.rungs)
                over = spent + (0 if last else self.rungs[i + 1]) > self.spec.search.budget_epochs
                if last:
                    study.tell(trial, value)
                elif trial.should_prune() or over:
                    trial.set_user_attr("stopped_by", "budget" if over and not trial.should_prune() else "pruner")
                    study.tell(trial, state=TrialState.PRUNED)
                else:
                    spent += self.rungs[i + 1]
                    active.append((trial, candidate, i + 1))
                self.log(f"  trial {trial.number} {candidate['method']} from {candidate['teacher']} "
                         f"{json.dumps(candidate['params'], sort_keys=True)}: val {self.selection.metric} "
                         f"{self.selection.value(value):.4g} after {epochs} epochs")  # fmt: skip
        return self.write_report(study, time.perf_counter() - t0)

    def spent(self, study) -> int:
        return sum(int(t.user_attrs.get("epochs_spent", 0)) for t in study.get_trials(deepcopy=False))

    # ------------------------------------------------------------------ the report
    def candidate_of(self, trial) -> dict[str, Any]:
        name = trial.params["method"]
        params = {k.split(".", 1)[1]: v for k, v in trial.params.items() if k.startswith(f"{name}.")}
        fixed = {k: v for k, v in self.methods[name].space().items() if not isinstance(v, Range | Choices)}
        return {"teacher": trial.params["teacher"], "method": name, "params": {**fixed, **params}}

    def write_report(self, study, wall_s: float) -> dict[str, Any]:
        trials = []
        for t in study.get_trials(deepcopy=False):
            if "method" not in t.params:
                continue
            curve = {int(step): self.selection.value(float(v)) for step, v in t.intermediate_values.items()}
            trials.append(
                {
                    "number": t.number,
                    "state": t.state.name.lower(),
                    **self.candidate_of(t),
                    "val": curve,
                    "epochs_reached": max(curve) if curve else 0,
                    "stopped_by": t.user_attrs.get("stopped_by"),
                }
            )
        full = [t for t in trials if t["state"] == "complete"]
        if not full:
            raise UserError(
                f"tune: no trial reached {self.max_epochs} epochs within search.budget_epochs="
                f"{self.spec.search.budget_epochs}; raise the budget (or lower max_epochs)"
            )
        chosen = max(full, key=lambda t: self.selection.score_of(t["val"][self.max_epochs]))
        final = self.rung_stage({k: chosen[k] for k in ("teacher", "method", "params")}, self.max_epochs)
        summary = self.sweep.store.summary(final) or {}
        test = (summary.get("best") or {}).get(
            f"test/{self.selection.metric}"
        )  # read once: the chosen configuration's run only
        config = self.final_config(final)
        atomic_write_text(self.out / "chosen.yaml", yaml.safe_dump(config, sort_keys=False))
        spent = self.spent(study)
        result = {
            "student": self.spec.student.model,
            "chosen": {k: chosen[k] for k in ("teacher", "method", "params")},
            "selection": self.selection.as_dict(),
            "val": chosen["val"][self.max_epochs],
            "test": test,
            "teacher_checkpoint": self.sweep.store.input_paths(final)[
                teacher_role(self.sweep.teacher_inputs[chosen["teacher"]])
            ],
            "run_dir": str(self.sweep.store.files_dir(final)),
            "command": f"darkknowledge distill --config {self.out / 'chosen.yaml'} seed=SEED name=NAME",
            "runner_ups": _runner_ups(trials, chosen, self.selection)[:5],
            "compute": {
                "student_epochs": spent,
                "budget_epochs": self.spec.search.budget_epochs,
                "max_epochs": self.max_epochs,
                "rungs": self.rungs,
                "trials": len(trials),
                "wall_s": wall_s,
            },
            "trials": trials,
        }
        atomic_write_json(self.out / RESULT_FILE, result)
        self.plot(trials, chosen)
        return result

    def final_config(self, node: StageSpec) -> dict[str, Any]:
        """The chosen run's configuration with its input paths filled in (for `darkknowledge distill --config`)."""
        request = self.sweep.store.request(node, self.sweep.store.input_paths(node))
        config = request["config"]
        config.pop("name", None)
        config.pop("output_dir", None)
        config["engine"]["progress"] = True
        return config

    def plot(self, trials: list[dict[str, Any]], chosen: dict[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for t in trials:
            steps = sorted(t["val"])
            if not steps:
                continue
            is_chosen = t["number"] == chosen["number"]
            ax.plot(steps, [t["val"][s] for s in steps], marker="o", lw=2.5 if is_chosen else 0.8,
                    alpha=1.0 if is_chosen else 0.5, color="C3" if is_chosen else "C0",
                    label=f"chosen: {chosen['method']} from {chosen['teacher']}" if is_chosen else None)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(self.rungs, [str(r) for r in self.rungs])
        ax.set_xlabel("epochs (successive-halving rungs)")
        ax.set_ylabel(_METRIC_LABEL.get(self.selection.metric, f"validation {self.selection.metric}"))
        ax.set_title(f"tune: {len(trials)} trials for {self.spec.student.model}")
        ax.legend(loc="lower right" if self.selection.higher_is_better else "upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(self.out / "tune.png", dpi=120)
        plt.close(fig)


def _check_journal(path: Path) -> None:
    """Every complete line of the study journal is a JSON record (a kill may leave a last, partial one)."""
    if not path.exists():
        return
    try:
        lines = path.read_bytes().split(b"\n")[:-1]
        for line in lines:
            if not isinstance(json.loads(line), dict):
                raise ValueError("not a record")
    except (OSError, ValueError) as exc:
        raise UserError(
            f"tune study {path} is damaged ({exc}); move it away to start the search afresh "
            "(finished trial stages are reused)"
        ) from None


_METRIC_LABEL = {"top1": "validation top-1 (%)", "nll": "validation NLL (nats per token)"}


def _runner_ups(trials: list[dict[str, Any]], chosen: dict[str, Any], selection: Selection) -> list[dict[str, Any]]:
    """Distinct candidates other than the chosen one, furthest and best first."""
    seen = {json.dumps({k: chosen[k] for k in ("teacher", "method", "params")}, sort_keys=True)}
    out = []
    order = sorted(
        (t for t in trials if t["val"]),
        key=lambda t: (-t["epochs_reached"], -selection.score_of(t["val"][t["epochs_reached"]])),
    )
    for t in order:
        candidate = {k: t[k] for k in ("teacher", "method", "params")}
        tag = json.dumps(candidate, sort_keys=True)
        if tag not in seen:
            seen.add(tag)
            out.append(candidate | {"epochs_reached": t["epochs_reached"], "val": t["val"][t["epochs_reached"]]})
    return out


def _rungs(min_epochs: int, max_epochs: int, factor: int) -> list[int]:
    rungs, r = [], min_epochs
    while r < max_epochs:
        rungs.append(r)
        r *= factor
    return [*rungs, max_epochs]


def open_tune(
    spec: str,
    out: str | None,
    *,
    executor: str = "auto",
    jobs: int | None = None,
    cluster: str | None = None,
    submitit_params: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> Tune:
    parsed = load_tune_spec(spec)
    path = Path(spec)
    if jobs is not None:
        parsed = parsed.model_copy(update={"search": parsed.search.model_copy(update={"jobs": jobs})})
    out_dir = Path(out) if out else Path("runs") / "tune" / path.stem
    ex = make_executor(
        executor, jobs=parsed.search.jobs, folder=out_dir / "submitit", cluster=cluster, parameters=submitit_params
    )
    records = path.parent / parsed.records if parsed.records else None
    return Tune(parsed, out_dir, ex, log=log, records=records)


def result_markdown(result: dict[str, Any]) -> str:
    c = result["chosen"]
    metric = {"top1": "top-1", "nll": "NLL"}.get(result["selection"]["metric"], result["selection"]["metric"])
    lines = [
        f"Chosen for {result['student']}: {c['method']} {json.dumps(c['params'], sort_keys=True)} from {c['teacher']} "
        f"— validation {metric} {result['val']:.4g}"
        + (f", test {metric} {result['test']:.4g} (read once)" if result.get("test") is not None else ""),
        f"Compute: {result['compute']['student_epochs']} of {result['compute']['budget_epochs']} student epochs, "
        f"{result['compute']['trials']} trials, rungs {result['compute']['rungs']}.",
        f"Runner-ups (validation {metric} at the epochs reached):",
    ]
    for r in result["runner_ups"]:
        value = r["val"]
        shown = f"{value:.4g}" if math.isfinite(value) else "n/a"
        lines.append(
            f"  {r['method']} {json.dumps(r['params'], sort_keys=True)} from {r['teacher']}: "
            f"{shown} after {r['epochs_reached']} epochs"
        )
    lines.append(f"Train it to the end with other seeds: {result['command']}")
    return "\n".join(lines)
