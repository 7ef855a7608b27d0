"""Every sweep spec committed in configs/ validates (its implied run configurations included), so a
spec cannot rot while its experiment waits for the next session."""

from pathlib import Path

import pytest
import yaml

from darkknowledge.experiments.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_repository_commits_sweep_specs():
    assert {p.name for p in SPECS} >= {"capacity_cifar10.yaml", "lm_capacity_stdlib.yaml", "lm_capacity_smollm2.yaml"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_a_committed_spec_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # the specs name files relative to the repository root
    raw = yaml.safe_load(path.read_text())
    files = [t["gguf"] for t in raw.get("teachers", []) if isinstance(t, dict) and "gguf" in t]
    missing = [f for f in files if not (REPO / f).is_file()]
    if missing:
        pytest.skip(f"{missing[0]} is not installed (make install-lm-teacher)")
    spec = load_spec(path)
    assert spec.seeds and spec.methods and spec.teachers
    assert spec.records  # each committed experiment keeps its records beside it
