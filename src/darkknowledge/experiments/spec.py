"""The sweep spec: a teacher ladder x methods x seeds, in one validated YAML file.

Example (``darkknowledge sweep SPEC.yaml``; every key is described below and in docs/experiments.md)::

    base:                         # run configuration shared by every stage
      data: {name: digits}
      optim: {epochs: 30, lr: 0.05, schedule: cosine}
    teachers:
      - model: mlp_h64            # trained by the sweep
      - model: mlp_h1024
        config: {optim: {epochs: 40}}
      - checkpoint: runs/big/best.pt   # or given
        label: big
      # - hf: models/my-lm        # or a pretrained language model (text data; data.tokenizer: models/my-lm)
    student: {model: mlp_h16}
    methods:
      - {label: kd-T4, name: kd, temperature: 4}
      - {label: kd-T8, name: kd, temperature: 8}
      - {name: isats}
    seeds: [0, 1, 2]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from darkknowledge.config import deep_merge, read_yaml, validate_config
from darkknowledge.errors import UserError

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_label(label: str, what: str) -> str:
    if not LABEL.match(label):
        raise ValueError(f"{what} label {label!r} must be letters, digits and _.+=- (it names run directories)")
    return label


class TeacherSpec(_Strict):
    model: str | None = Field(
        None,
        description="Architecture of a teacher the sweep trains (with method ce unless its `config` sets `method`, e.g. regt).",
    )
    checkpoint: str | None = Field(
        None, description="A trained teacher checkpoint to use as it is (instead of `model`)."
    )
    hf: str | None = Field(
        None,
        description="A pretrained language model to use as it is: a Hugging Face causal-LM directory (instead of "
        "`model`); the students' `data.tokenizer` must name the same directory.",
    )
    gguf: str | None = Field(
        None,
        description="A pretrained language model to use as it is: a GGUF file (instead of `model`); the students' "
        "`data.tokenizer` must name the same file.",
    )
    epoch: int | None = Field(
        None,
        ge=1,
        description="Early-stopped teacher (ESKD): use the sweep-trained teacher's checkpoint after this epoch "
        "(one training run serves every entry with the same model and config).",
    )
    label: str = Field(
        "",
        description="Name in tables and run directories; default: the model name, the checkpoint's run name, "
        "the `hf` directory's name or the `gguf` file's stem.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Run-config overrides for this teacher's training (merged over `teacher_config`).",
    )
    methods: list[str] | None = Field(
        None,
        description="Distil from this teacher only with these method labels (e.g. KD alone from an ESKD or RegT teacher); default: every method.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if sum(x is not None for x in (self.model, self.checkpoint, self.hf, self.gguf)) != 1:
            raise ValueError(
                "give exactly one of model (trained by the sweep), checkpoint (given), hf or gguf "
                "(a given pretrained language model)"
            )
        if self.epoch is not None and self.model is None:
            raise ValueError("epoch applies to a teacher the sweep trains (model), not to a given one")
        if not self.label:
            if self.checkpoint is not None:
                given = Path(self.checkpoint)
                base = given.parent.name or given.stem
            elif self.hf is not None:
                base = Path(self.hf).name or Path(self.hf).resolve().name
            elif self.gguf is not None:
                base = Path(self.gguf).stem
            else:
                base = str(self.model)
            self.label = f"{base}-e{self.epoch}" if self.epoch else base
        _check_label(self.label, "teacher")
        return self

    @property
    def pretrained(self) -> tuple[str, str] | None:
        """``(kind, path)`` of a given pretrained language model (kind ``hf`` or ``gguf``), else None."""
        if self.hf is not None:
            return "hf", self.hf
        if self.gguf is not None:
            return "gguf", self.gguf
        return None


class StudentSpec(_Strict):
    model: str = Field(..., description="Architecture of the student (the same for every teacher, method and seed).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Run-config overrides for every student run (merged over `base`)."
    )


class AssistantSpec(_Strict):
    """TAKD: distil an assistant from the teacher with this entry's method, then the student from the assistant."""

    model: str = Field(..., description="Architecture of the teacher assistant (between teacher and student in size).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Run-config overrides for the assistant's training."
    )


class AdaptSpec(_Strict):
    """AID: fine-tune the teacher towards the pre-trained student (the CE student of the first seed) before distilling."""

    method: dict[str, Any] = Field(
        default_factory=lambda: {"name": "aid"}, description="The adaptation method and its parameters (default: aid)."
    )
    config: dict[str, Any] = Field(
        default_factory=lambda: {"optim": {"epochs": 5, "lr": 0.01, "warmup_epochs": 0}},
        description="Run-config overrides for the adaptation (a short fine-tuning by default).",
    )


class MethodSpec(BaseModel):
    """``name`` and the method's parameters, flat, plus an optional ``label`` and a
    teacher-side remedy (``assistant`` for TAKD, ``adapt`` for AID)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(..., description="Method name (see `darkknowledge methods`).")
    label: str = Field("", description="Column name in the results; default: the method name. Must be unique.")
    assistant: AssistantSpec | None = Field(
        None, description="TAKD chain: teacher -> assistant -> student, each step with this method."
    )
    adapt: AdaptSpec | None = Field(
        None, description="AID: distil from the teacher adapted to the pre-trained student."
    )
    teachers: list[str] | None = Field(
        None,
        description="Run this method only from these teacher labels (e.g. a TAKD chain from the largest teacher); default: every teacher.",
    )

    @model_validator(mode="after")
    def _default_label(self) -> MethodSpec:
        self.label = _check_label(self.label or self.name, "method")
        if self.assistant and self.adapt:
            raise ValueError(f"method {self.label!r}: give assistant (TAKD) or adapt (AID), not both")
        return self

    def params(self) -> dict[str, Any]:
        """The method section of a run config: name + parameters."""
        return {"name": self.name, **(self.__pydantic_extra__ or {})}


class SweepSpec(_Strict):
    base: dict[str, Any] = Field(
        default_factory=dict, description="Run configuration shared by every stage (sections data, optim, engine, ...)."
    )
    teacher_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Run-config overrides for every teacher the sweep trains (merged over `base`).",
    )
    teachers: list[TeacherSpec] = Field(
        ..., min_length=1, description="The teacher ladder, any order (tables sort by parameters)."
    )
    teacher_seed: int = Field(0, description="Seed of the teachers the sweep trains.")
    teacher_checkpoint: Literal["last", "best"] = Field(
        "last",
        description="Which checkpoint of a sweep-trained teacher the students learn from (`best` is chosen on the evaluation split).",
    )
    teacher_cache: bool = Field(
        False, description="Build one teacher-output cache per teacher (a stage) and distil from it."
    )
    teacher_topk: int | None = Field(
        None,
        ge=1,
        description="teacher.topk of the caches the sweep builds (teacher_cache: true): logits kept per token or view; "
        "default: the run config's.",
    )
    student: StudentSpec = Field(..., description="The student.")
    methods: list[MethodSpec] = Field(
        ..., min_length=1, description="Distillation methods; the student trained alone (ce) is always added."
    )
    seeds: list[int] = Field(
        [0], min_length=1, description="Student seeds: every (teacher, method) and the CE baseline run once per seed."
    )
    diagnose: bool = Field(
        True,
        description="Run the dark-knowledge diagnostics on the teacher ladder (training split) after training it "
        "(the teachers with checkpoints: pretrained hf/gguf teachers are left out).",
    )
    records: str | None = Field(
        None,
        description="Directory (relative to the spec file) of compact per-stage records to commit with the spec: "
        "a stage with a record is done on any machine; run directories are needed only for what still runs.",
    )

    @model_validator(mode="after")
    def _unique(self) -> SweepSpec:
        if self.teacher_topk is not None and not self.teacher_cache:
            raise ValueError("teacher_topk sets the caches' k: it needs teacher_cache: true")
        for what, labels in (
            ("teacher", [t.label for t in self.teachers]),
            ("method", [m.label for m in self.methods]),
        ):
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"{what} labels must be unique, {dup[0]!r} appears twice (set `label:`)")
        teacher_labels, method_labels = {t.label for t in self.teachers}, {m.label for m in self.methods}
        for t in self.teachers:
            for label in set(t.methods or []) - method_labels:
                raise ValueError(
                    f"teacher {t.label!r}: methods names {label!r}, which is not a method label of this spec"
                )
        for m in self.methods:
            for label in set(m.teachers or []) - teacher_labels:
                raise ValueError(
                    f"method {m.label!r}: teachers names {label!r}, which is not a teacher label of this spec"
                )
        for t in self.teachers:
            if t.pretrained is None:
                continue
            for m in self.methods:
                if (m.assistant or m.adapt) and pairs(t, m):
                    raise ValueError(
                        f"method {m.label!r}: TAKD (assistant) and AID (adapt) need a teacher checkpoint, and teacher "
                        f"{t.label!r} is a pretrained model ({t.pretrained[0]}); leave it out with the method's teachers:"
                    )
        if any(m.label == "ce" for m in self.methods):
            raise ValueError("the CE baseline (label 'ce') is always run: remove it from methods")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self


def pairs(teacher: TeacherSpec, method: MethodSpec) -> bool:
    """Whether the sweep distils from ``teacher`` with ``method`` (both filters allow it)."""
    return (teacher.methods is None or method.label in teacher.methods) and (
        method.teachers is None or teacher.label in method.teachers
    )


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every problem is one ``UserError`` naming the key."""
    data = read_yaml(str(path)) if Path(path).is_file() else None
    if data is None:
        raise UserError(f"sweep spec {path} does not exist; write one (see docs/experiments.md) or use a bundled one")
    return parse_spec(data, source=str(path))


def parse_spec(data: dict[str, Any], source: str = "spec") -> SweepSpec:
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise UserError(f"sweep spec {source}: {loc or 'top level'}: {msg}") from None
    # every run configuration it implies must validate too: fail before anything runs
    implied = [
        (f"methods[{i}]", deep_merge(deep_merge(spec.base, spec.student.config), {"method": m.params()}))
        for i, m in enumerate(spec.methods)
    ]
    implied += [
        (
            f"methods[{i}].assistant",
            deep_merge(
                deep_merge(spec.base, m.assistant.config), {"model": {"name": m.assistant.model}, "method": m.params()}
            ),
        )
        for i, m in enumerate(spec.methods)
        if m.assistant
    ]
    implied += [
        (f"methods[{i}].adapt", deep_merge(deep_merge(spec.base, m.adapt.config), {"method": m.adapt.method}))
        for i, m in enumerate(spec.methods)
        if m.adapt
    ]
    implied += [
        (
            f"teachers[{i}]",
            deep_merge(deep_merge(deep_merge(spec.base, spec.teacher_config), t.config), {"model": {"name": t.model}}),
        )
        for i, t in enumerate(spec.teachers)
        if t.model
    ]
    for where, config in implied:
        try:
            validate_config(config, source="config")
        except UserError as exc:
            raise UserError(f"sweep spec {source}: {where}: {str(exc).removeprefix('config: ')}") from None
    return spec
