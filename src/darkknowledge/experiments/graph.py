"""The typed stage graph: each :class:`StageSpec` names its kind, its config and its inputs
(role -> :class:`StageRef` of a producing stage's output, or :class:`FileInput` of a given
checkpoint or pretrained model). Its key follows from the config and the inputs' identities, so the whole
graph, keys included, is known before anything runs; producers are added before their
consumers, so the order of :attr:`StageGraph.nodes` is a topological order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darkknowledge.experiments.identity import input_digest, stage_key
from darkknowledge.experiments.kinds import KINDS, Kind


@dataclass(frozen=True)
class FileInput:
    """A checkpoint given by path, identified by the digest of its weights; or (``kind`` ``hf`` or
    ``gguf``) a pretrained language model, identified by the digest of its weight files."""

    path: str
    digest: str
    kind: str = "checkpoint"

    @classmethod
    def of(cls, path: str | Path, kind: str = "checkpoint") -> FileInput:
        return cls(str(Path(path).resolve()), input_digest(kind, path), kind)

    @property
    def identity(self) -> str:
        return self.digest


@dataclass(frozen=True)
class StageRef:
    """An output (a file or directory name inside the stage directory) of another stage."""

    stage: StageSpec
    output: str

    @property
    def identity(self) -> str:
        return f"stage:{self.stage.key}/{self.output}"


Input = StageRef | FileInput


@dataclass(eq=False)
class StageSpec:
    """One stage: ``config`` is what its kind runs (a run config without its input paths for
    the training kinds); ``meta`` is for reports (labels, seed), never part of the key."""

    kind: Kind
    name: str
    config: dict[str, Any]
    inputs: dict[str, Input] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = field(init=False)
    identity: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.kind = Kind(self.kind)
        self.identity = KINDS[self.kind.value].identity(self.config)
        self.key = stage_key(self.kind.value, self.identity, self.input_identities())

    def input_identities(self) -> dict[str, str]:
        return {role: ref.identity for role, ref in self.inputs.items()}

    def producers(self) -> list[StageSpec]:
        return [ref.stage for ref in self.inputs.values() if isinstance(ref, StageRef)]

    def ref(self, output: str) -> StageRef:
        return StageRef(self, output)


class StageGraph:
    """Stages in topological order; stages with one key (the same run under several labels)
    form a group run once."""

    def __init__(self) -> None:
        self.nodes: list[StageSpec] = []
        self._names: set[str] = set()

    def add(self, node: StageSpec) -> StageSpec:
        """Add a stage (its producers must be in the graph already); a stage of the same
        name and key is the one already there."""
        for p in node.producers():
            if p not in self.nodes:
                raise ValueError(f"stage {node.name}: producer {p.name} is not in the graph yet")
        existing = next((n for n in self.nodes if n.name == node.name), None)
        if existing is not None:
            if existing.key != node.key:
                raise ValueError(f"two different stages are named {node.name}")
            return existing
        self.nodes.append(node)
        return node

    def groups(self) -> dict[str, list[StageSpec]]:
        """key -> the stages with that key, in graph order."""
        out: dict[str, list[StageSpec]] = {}
        for n in self.nodes:
            out.setdefault(n.key, []).append(n)
        return out

    def of_kind(self, kind: Kind) -> list[StageSpec]:
        return [n for n in self.nodes if n.kind == kind]

    def waiting_on(self) -> dict[str, int]:
        """key -> how many other stages (distinct keys) need it, directly or through others."""
        counts: dict[str, set[str]] = {}
        for n in self.nodes:
            for p in self.upstream([n]):
                if p.key != n.key:
                    counts.setdefault(p.key, set()).add(n.key)
        return {k: len(v) for k, v in counts.items()}

    def upstream(self, nodes: list[StageSpec]) -> list[StageSpec]:
        """Every producer of ``nodes``, transitively (graph order)."""
        seen: set[int] = set()
        todo = list(nodes)
        while todo:
            for p in todo.pop().producers():
                if id(p) not in seen:
                    seen.add(id(p))
                    todo.append(p)
        return [n for n in self.nodes if id(n) in seen]
