"""Re-keying records: records written under another key rule (full configs, other keys) are
re-keyed when provably the same runs, and a fresh directory then finds every stage recorded."""

from __future__ import annotations

import hashlib
import json

from darkknowledge.config import validate_config
from darkknowledge.experiments import open_sweep
from darkknowledge.experiments.migrate import rekey_records
from support import quiet, write_spec


def _old_style(records, sweep) -> None:
    """Rewrite each record as an older rule would have: another key, the full config with defaults."""
    old_key = {n.key: hashlib.sha256(f"old-{n.key}".encode()).hexdigest()[:16] for n in sweep.graph.nodes}
    for path in sorted(records.glob("*.json")):
        rec = json.loads(path.read_text())
        node = next(n for n in sweep.graph.nodes if n.key == rec["key"] and n.name == rec["name"])
        full = validate_config(node.config).model_dump(mode="json", exclude={"output_dir", "name"})
        inputs = {}
        for role, ident in rec["inputs"].items():
            key, _, output = ident.removeprefix("stage:").partition("/")
            inputs[role] = f"stage:{old_key[key]}/{output}"
        rec.update(key=old_key[node.key], config=full, inputs=inputs)
        path.unlink()
        (records / f"{node.name}-{old_key[node.key][:8]}.json").write_text(json.dumps(rec))


def test_records_of_an_older_key_rule_are_rekeyed_once(tmp_path):
    specdir = tmp_path / "spec"
    specdir.mkdir()
    spec = write_spec(
        specdir / "s.yaml",
        teachers=[{"model": "mlp_h32"}],
        methods=[{"name": "kd"}],
        seeds=[0],
        teacher_cache=True,
        records="rec",
    )
    sweep = open_sweep(str(spec), tmp_path / "a", log=quiet)
    assert sweep.run() == {"done": 4}
    records = specdir / "rec"
    _old_style(records, sweep)
    assert open_sweep(str(spec), tmp_path / "b", log=quiet).counts() == {"pending": 2, "waiting": 2}

    out = rekey_records(spec, log=quiet)
    assert out == {"rekeyed": 4, "unchanged": 0, "unmatched": [], "problems": []}
    assert open_sweep(str(spec), tmp_path / "b", log=quiet).counts() == {"recorded": 4}
    assert rekey_records(spec, log=quiet)["unchanged"] == 4  # once: a second pass changes nothing

    # a record of another configuration under a stage's name is left alone and listed, and so are
    # the records whose input it was (their producer is no longer proven)
    teacher = next(records.glob("teacher-*.json"))
    rec = json.loads(teacher.read_text())
    rec["config"]["optim"]["epochs"] = 7
    teacher.write_text(json.dumps(rec))
    out = rekey_records(spec, log=quiet)
    assert sorted(out["unmatched"]) == sorted(str(p) for p in records.glob("*.json") if "-ce-" not in p.name)
    assert out["problems"][0].startswith("teacher-mlp_h32:") and "another configuration" in out["problems"][0]
    assert (teacher.read_text(), out["rekeyed"]) == (json.dumps(rec), 0)
