"""The stage graph: built once from a spec, keys from configs and producers' keys, identity
configs that omit defaults, every kind declared, and the committed capacity records resolving."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkknowledge.errors import UserError
from darkknowledge.experiments import open_sweep
from darkknowledge.experiments.graph import FileInput, StageGraph, StageSpec
from darkknowledge.experiments.identity import identity_config
from darkknowledge.experiments.kinds import KINDS, Kind
from darkknowledge.experiments.spec import parse_spec
from support import quiet, spec_dict

REPO = Path(__file__).resolve().parents[2]
REMEDIES = [
    {"name": "kd"},
    {"label": "takd", "name": "kd", "assistant": {"model": "mlp_h16"}, "teachers": ["mlp_h32"]},
    {"label": "aid", "name": "kd", "adapt": {}, "teachers": ["mlp_h32"]},
]


def test_every_kind_of_a_sweep_is_declared_and_the_order_is_topological(tmp_path):
    spec = parse_spec(spec_dict(methods=REMEDIES, seeds=[0], teacher_cache=True, diagnose=True))
    sweep = open_sweep(spec, tmp_path, log=quiet)
    kinds = {n.kind for n in sweep.graph.nodes}
    # evaluate: a given pretrained language model's (tests/experiments/test_lm_pretrained_sweep.py)
    assert kinds == set(Kind) - {Kind.EVALUATE} and set(KINDS) == {k.value for k in Kind}
    position = {id(n): i for i, n in enumerate(sweep.graph.nodes)}
    for n in sweep.graph.nodes:
        assert all(position[id(p)] < position[id(n)] for p in n.producers()), n.name
    (diagnose,) = sweep.graph.of_kind(Kind.DIAGNOSE)
    assert sorted(diagnose.inputs) == ["student.0", "teacher.0", "teacher.1"]
    (student,) = [n for n in sweep.graph.nodes if n.name == "student-mlp_h16-takd-from-mlp_h32-s0"]
    assert [p.kind for p in student.producers()] == [Kind.ASSISTANT, Kind.CACHE]


def test_a_key_follows_from_the_config_and_the_producers_keys(tmp_path):
    small = spec_dict(teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0])
    longer = spec_dict(
        teachers=[{"model": "mlp_h32", "config": {"optim": {"epochs": 3}}}], methods=[{"name": "kd"}], seeds=[0]
    )
    a, b = (open_sweep(parse_spec(s), tmp_path / n, log=quiet).graph.nodes for n, s in (("a", small), ("b", longer)))
    names = [n.name for n in a]
    assert names == [n.name for n in b]
    changed = {n.name for n, m in zip(a, b) if n.key != m.key}
    # the teacher's config changed: it and its student get new keys, the CE student keeps its own
    assert changed == {"teacher-mlp_h32", "student-mlp_h16-kd-from-mlp_h32-s0"}
    (kd,) = [n for n in b if "kd" in n.name]
    assert kd.identity == next(n for n in a if "kd" in n.name).identity  # only its input differs


def test_a_setting_at_its_default_never_changes_a_key():
    plain = {"data": {"name": "digits"}, "method": {"name": "kd", "temperature": 8}}
    spelled = {
        "data": {"name": "digits", "augment": True, "subset_seed": 0},
        "method": {"name": "kd", "temperature": 8, "ce_weight": 0.1},
        "engine": {"keep_epochs": [], "eval_every": 1},
        "optim": {"momentum": 0.9},
    }
    assert (
        identity_config(plain)
        == identity_config(spelled)
        == {
            "teacher": {"kind": "none"},
            "method": {"name": "kd", "temperature": 8.0},
        }
    )
    assert identity_config({**plain, "optim": {"momentum": 0.8}}) != identity_config(plain)


def test_a_new_kind_plugs_in_by_declaring_its_identity_inputs_and_job(tmp_path, monkeypatch):
    from darkknowledge.experiments.kinds import StageKind
    from darkknowledge.experiments.store import StageStore

    ran = []
    trial = StageKind(
        Kind.TEACHER,  # stands for a new member of Kind in this test
        identity=lambda config: dict(config),
        run=lambda request, stage_dir, datasets: ran.append(request["config"]),
        place=lambda config, paths: {**config, "paths": paths},
    )
    monkeypatch.setitem(KINDS, "teacher", trial)
    graph = StageGraph()
    first = graph.add(StageSpec(Kind.TEACHER, "trial-a", {"lr": 0.1}))
    second = graph.add(StageSpec(Kind.TEACHER, "trial-b", {"lr": 0.2}, {"warm": first.ref("out.txt")}))
    assert first.key != second.key and second.producers() == [first]
    store = StageStore(tmp_path)
    from darkknowledge.experiments.stage import run_stage

    assert run_stage(store.write_request(second)) == "done"
    assert ran == [{"lr": 0.2, "paths": {"warm": str(store.dir(first).resolve() / "out.txt")}}]


def test_the_graph_refuses_a_consumer_before_its_producer():
    graph = StageGraph()
    producer = StageSpec(Kind.STUDENT, "a", {"method": {"name": "ce"}})
    with pytest.raises(ValueError, match="producer a is not in the graph"):
        graph.add(StageSpec(Kind.STUDENT, "b", {"method": {"name": "ce"}}, {"init": producer.ref("last.pt")}))


def test_a_given_checkpoint_is_identified_by_its_weights(teacher_ckpt, tmp_path):
    import shutil

    copy = tmp_path / "elsewhere.pt"
    shutil.copy(teacher_ckpt, copy)
    assert FileInput.of(copy).identity == FileInput.of(teacher_ckpt).identity
    assert FileInput.of(copy).path != FileInput.of(teacher_ckpt).path


def test_the_committed_capacity_records_resolve_on_a_fresh_directory(tmp_path):
    spec = REPO / "configs" / "capacity_cifar10.yaml"
    sweep = open_sweep(str(spec), tmp_path / "fresh", log=quiet)
    assert len(list((REPO / "configs" / "capacity_cifar10.records").glob("*.json"))) == 229
    # every stage of the 2.4 h sweep is recorded; only the diagnosis needs the teachers' files here
    assert sweep.counts() == {"recorded": 229, "skipped": 1}
    assert sweep.plan() == []
    assert not (tmp_path / "fresh").exists()


def test_the_committed_language_model_records_resolve_on_a_fresh_directory(tmp_path):
    # the LM capacity experiment spans sessions: a fresh clone must find every committed record a stage of its spec
    spec = REPO / "configs" / "lm_capacity_stdlib.yaml"
    records = list((REPO / "configs" / "lm_capacity_stdlib.records").glob("*.json"))
    sweep = open_sweep(str(spec), tmp_path / "fresh", log=quiet)
    assert len(records) == 54  # the whole experiment: teachers, students of every method, the diagnosis
    assert sweep.counts() == {"recorded": 54} and sweep.plan() == []
    assert not (tmp_path / "fresh").exists()


def test_waiting_on_counts_every_stage_downstream_once(tmp_path):
    # two teachers; KD from both, DIST from the larger only; one seed
    spec = parse_spec(
        spec_dict(
            methods=[{"name": "kd"}, {"name": "dist", "teachers": ["mlp_h128"]}],
            seeds=[0],
        )
    )
    graph = open_sweep(spec, tmp_path / "sw", log=quiet).graph
    waiting = graph.waiting_on()
    by_name = {n.name: waiting.get(n.key, 0) for n in graph.nodes}
    assert by_name["teacher-mlp_h32"] == 1  # its KD student
    assert by_name["teacher-mlp_h128"] == 2  # KD and DIST students
    assert all(v == 0 for k, v in by_name.items() if k.startswith("student-"))


def test_teacher_topk_sets_the_k_of_the_caches_the_sweep_builds(tmp_path):
    spec = parse_spec(spec_dict(methods=[{"name": "kd"}], seeds=[0], teacher_cache=True, teacher_topk=5))
    graph = open_sweep(spec, tmp_path / "sw", log=quiet).graph
    caches = [n for n in graph.nodes if n.kind == Kind.CACHE]
    assert caches and all(n.config["teacher"]["topk"] == 5 for n in caches)
    default = open_sweep(parse_spec(spec_dict(methods=[{"name": "kd"}], seeds=[0], teacher_cache=True)), tmp_path / "d")
    assert {n.key for n in default.graph.nodes if n.kind == Kind.CACHE}.isdisjoint({n.key for n in caches})
    with pytest.raises(UserError, match="teacher_topk .* needs teacher_cache: true"):
        parse_spec(spec_dict(methods=[{"name": "kd"}], teacher_topk=5))


def test_a_pretrained_tokenizer_is_identified_by_its_files_not_its_path(tmp_path):
    import shutil

    from darkknowledge.experiments.identity import identity_config, stage_key

    first = tmp_path / "a" / "tok"
    first.mkdir(parents=True)
    (first / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}}}')
    moved = tmp_path / "b" / "tok"
    shutil.copytree(first, moved)

    def key(tokenizer: Path) -> str:
        config = {"data": {"name": "stdlib", "tokenizer": str(tokenizer)}, "model": {"name": "lm_d16_l1"}}
        return stage_key("student", identity_config(config), {})

    assert key(first) == key(moved)  # another path (a venv elsewhere): the same stages
    (moved / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"b": 0}}}')
    assert key(first) != key(moved)  # another tokenizer: other stages
    with pytest.raises(UserError, match="no .gguf file or tokenizer files"):
        key(tmp_path / "empty")
