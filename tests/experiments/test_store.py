"""The StageStore: states read once per pass, records found by key, twins read from their home."""

from __future__ import annotations

import json

from darkknowledge.experiments.graph import StageGraph, StageSpec
from darkknowledge.experiments.kinds import Kind
from darkknowledge.experiments.store import StageStore


def _node(name: str, epochs: int = 2) -> StageSpec:
    return StageSpec(Kind.STUDENT, name, {"method": {"name": "ce"}, "optim": {"epochs": epochs}})


def _finish(store: StageStore, node: StageSpec, status: str = "done") -> None:
    d = store.write_request(node)
    (d / "result.json").write_text(json.dumps({"key": node.key, "status": status, "error": None}))
    (d / "summary.json").write_text(json.dumps({"final": {"test/top1": 50.0}}))


def test_states_are_read_once_per_pass(tmp_path):
    store = StageStore(tmp_path / "runs", tmp_path / "rec")
    node = _node("a")
    assert store.state(node) == "pending"
    store.write_request(node)
    assert store.state(node) == "partial"  # a request written through the store is seen at once
    (store.dir(node) / "result.json").write_text(json.dumps({"key": node.key, "status": "done"}))
    assert store.state(node) == "partial"  # a file written behind its back: seen after refresh
    store.refresh()
    assert store.state(node) == "done"
    (store.dir(node) / "result.json").write_text(json.dumps({"key": "another", "status": "done"}))
    store.refresh()
    assert store.state(node) == "partial"  # a result of another key is not this stage's


def test_records_carry_identity_and_are_found_by_key_under_another_name(tmp_path):
    store = StageStore(tmp_path / "runs", tmp_path / "rec")
    node = _node("a")
    assert store.write_record(node) is None  # nothing finished: nothing recorded
    _finish(store, node)
    store.refresh()
    path = store.write_record(node)
    assert path is not None and path.name == f"a-{node.key[:8]}.json"
    record = json.loads(path.read_text())
    assert record["config"] == node.identity == {"teacher": {"kind": "none"}, "optim": {"epochs": 2}}
    assert record["result"]["status"] == "done" and record["summary"]["final"]["test/top1"] == 50.0

    fresh = StageStore(tmp_path / "other", tmp_path / "rec")
    renamed = _node("renamed")
    assert renamed.key == node.key and fresh.state(renamed) == "recorded"
    assert fresh.find_record(renamed)[0] == path
    other = _node("renamed", epochs=3)
    assert fresh.state(other) == "pending"


def test_the_same_run_under_two_names_reads_from_its_home(tmp_path):
    graph = StageGraph()
    first, second = graph.add(_node("first")), graph.add(_node("second"))
    store = StageStore(tmp_path / "runs")
    store.set_groups(graph.groups())
    assert store.home(second) is first and store.twin_of(first) is None
    _finish(store, second)  # the second label finished here: it becomes the home
    store.refresh()
    store.set_groups(graph.groups())
    assert store.home(first) is second
    assert store.state(first) == "done" and store.files_dir(first) == store.dir(second)
    assert store.summary(first) == {"final": {"test/top1": 50.0}}


def test_a_failed_stage_submitted_again_is_running_not_failed(tmp_path):
    store = StageStore(tmp_path / "runs", tmp_path / "rec")
    node = _node("a")
    _finish(store, node, status="failed")
    store.refresh()
    assert store.state(node) == "failed"
    store.write_request(node)  # the retry
    assert store.state(node) == "partial"
    store.refresh()
    assert store.state(node) == "partial" and not (store.dir(node) / "result.json").exists()
    _finish(store, node)  # a finished stage is never submitted again; its result stays
    store.refresh()
    store.write_request(node)
    assert (store.dir(node) / "result.json").is_file()
