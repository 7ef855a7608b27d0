"""A sweep with a given pretrained language-model teacher (a Hugging Face directory): it is
evaluated once (its own stage, kept in the records), cached, distilled from, reported, and its
weight files' digest is part of every stage that depends on it."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
import torch
import yaml

from darkknowledge.cli.main import main
from support import write_corpus

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

TEACHER = "tiny-llama"  # the directory, relative to the sweep's working directory; also the teacher's label


@pytest.fixture(scope="module")
def corpus_and_teacher(tmp_path_factory):
    """A corpus of 60 small text files and a tiny LlamaForCausalLM saved with save_pretrained, with the
    BPE tokenizer trained on that corpus (tokenizer.json): a stand-in for a downloaded model."""
    from darkknowledge.data.text import read_text_files
    from darkknowledge.data.tokenize import train_bpe
    from darkknowledge.models import build_model

    root = tmp_path_factory.mktemp("pretrained")
    write_corpus(root / "corpus", documents=60, size=1200, source_files=30)
    tokenizer = train_bpe(read_text_files(root / "corpus"), vocab_size=300)
    torch.manual_seed(1)
    model = build_model("lm_d32_l1", num_classes=tokenizer.vocab_size).eval()
    model.hf.save_pretrained(root / TEACHER)
    tokenizer.tokenizer.save(str(root / TEACHER / "tokenizer.json"))
    (root / TEACHER / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return root, model


def _spec(tokenizer: str = TEACHER, **teacher) -> dict:
    return {
        "base": {
            "data": {"name": "textfiles", "root": "corpus", "tokenizer": tokenizer, "context": 24, "batch_size": 16},
            "optim": {"optimizer": "adamw", "lr": 0.003, "schedule": "cosine", "grad_clip": 1.0, "epochs": 1},
            "engine": {"precision": "fp32", "channels_last": False},
        },
        "teachers": [teacher or {"hf": TEACHER}],
        "student": {"model": "lm_d16_l1"},
        "methods": [{"name": "kd"}],
        "teacher_cache": True,
        "records": "records",  # diagnose: true (the default): from the teachers' caches, pretrained ones included
    }


def _setup(tmp_path, monkeypatch, corpus_and_teacher, spec: dict) -> None:
    root, _ = corpus_and_teacher
    monkeypatch.chdir(tmp_path)
    shutil.copytree(root / "corpus", tmp_path / "corpus")
    shutil.copytree(root / TEACHER, tmp_path / TEACHER)
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(spec))


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_pretrained_hf_teacher_is_evaluated_cached_distilled_reported_and_resumed(
    tmp_path, monkeypatch, capsys, corpus_and_teacher
):
    from darkknowledge.models.lm import lm_parameter_counts

    _setup(tmp_path, monkeypatch, corpus_and_teacher, _spec())
    assert main(["sweep", "lm.yaml", "--out", "out", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert f"evaluate-{TEACHER}" in plan and f"cache-{TEACHER}" in plan and f"kd-from-{TEACHER}" in plan
    assert main(["sweep", "lm.yaml", "--out", "out"]) == 0
    capsys.readouterr()
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert [p.split("-")[0] for p in runs] == ["cache", "diagnose", "evaluate", "student", "student"]
    # the pretrained teacher diagnosed from its cache, the statistics it recorded from the full distribution beside
    diagnosis = json.loads((tmp_path / "out" / "runs" / runs[1] / "diagnostics.json").read_text())
    assert [t["name"] for t in diagnosis["teachers"]] == [TEACHER]
    assert diagnosis["data"]["source"] == "language-model teacher caches"
    assert set(diagnosis["data"]["full_distribution_at_T1"][TEACHER]) >= {"nt_var", "tau_star_median"}
    assert (tmp_path / "out" / "diagnostics" / "report.html").is_file()

    # the teacher row: its parameters (all of them, as trained teachers count; and non-embedding) and metrics
    counts = lm_parameter_counts(corpus_and_teacher[1])
    (teacher,) = _rows(tmp_path / "out" / "teachers.csv")
    assert teacher["teacher"] == TEACHER and int(teacher["params"]) == counts["total"]
    assert int(teacher["non_embedding_params"]) == counts["non_embedding"]
    assert teacher["checkpoint"] == str((tmp_path / TEACHER).resolve())
    assert all(float(teacher[c]) > 0 for c in ("bpb", "val_bpb", "top1", "val_top1"))
    students = _rows(tmp_path / "out" / "results.csv")
    assert {r["method"] for r in students} == {"ce", "kd"}
    kd = next(r for r in students if r["method"] == "kd")
    assert kd["teacher"] == TEACHER and int(kd["teacher_params"]) == counts["total"]
    assert kd["teacher_bpb"] == teacher["bpb"] and 0 < float(kd["last_bpb"]) < 8
    student_config = yaml.safe_load((tmp_path / "out" / "runs" / runs[-1] / "config.yaml").read_text())
    assert student_config["teacher"]["kind"] == "cache" and student_config["teacher"]["hf"].endswith(TEACHER)

    # resumed: nothing to run here; on a fresh directory the records report the teacher without loading it
    assert main(["sweep", "lm.yaml", "--out", "out", "--status"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"done": 5}
    assert main(["sweep", "lm.yaml", "--out", "fresh", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"reuse": 5}
    assert main(["sweep", "lm.yaml", "--out", "fresh", "--report"]) == 0
    (again,) = _rows(tmp_path / "fresh" / "teachers.csv")
    assert {k: again[k] for k in ("params", "non_embedding_params", "bpb", "val_bpb", "top1")} == {
        k: teacher[k] for k in ("params", "non_embedding_params", "bpb", "val_bpb", "top1")
    }
    assert not (tmp_path / "fresh" / "runs").exists()

    # changed weights: every stage that depends on the teacher runs again, the CE student does not
    import safetensors.torch

    weights = tmp_path / TEACHER / "model.safetensors"
    tensors = safetensors.torch.load_file(str(weights))
    name = next(k for k in tensors if k.endswith("norm.weight"))
    tensors[name] = tensors[name] * 1.5
    safetensors.torch.save_file(tensors, str(weights), metadata={"format": "pt"})
    assert main(["sweep", "lm.yaml", "--out", "out", "--dry-run"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert json.loads(rows[-1]) == {"run": 4, "reuse": 1}  # evaluate, cache, its diagnosis, the KD student
    assert any(r.startswith("reuse") and "-ce-" in r for r in rows)


def test_a_pretrained_teacher_needs_its_tokenizer_and_sound_files(tmp_path, monkeypatch, capsys, corpus_and_teacher):
    _setup(tmp_path, monkeypatch, corpus_and_teacher, _spec(tokenizer="bpe"))
    for spec, message in [
        (_spec(tokenizer="bpe"), rf"teachers\[0\]\.hf: teacher {TEACHER} has its own tokenizer .*data\.tokenizer=bpe"),
        (_spec(hf="missing"), r"teachers\[0\]\.hf: Hugging Face model directory missing: no such directory"),
        (_spec(tokenizer="t.gguf", gguf="t.gguf"), r"teachers\[0\]\.gguf: GGUF file t\.gguf: no such file"),
        (_spec(hf="broken"), r"teachers\[0\]\.hf: safetensors file .*model\.safetensors: corrupted or truncated"),
        ({**_spec(), "teachers": [{"hf": TEACHER, "checkpoint": "t.pt"}]}, "give exactly one of model"),
    ]:
        if spec["teachers"][0].get("hf") == "broken":
            shutil.copytree(TEACHER, "broken")
            data = (tmp_path / "broken" / "model.safetensors").read_bytes()
            (tmp_path / "broken" / "model.safetensors").write_bytes(data[: len(data) // 2])
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
        assert main(["sweep", "bad.yaml", "--out", "out", "--dry-run"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_the_label_of_a_pretrained_teacher_defaults_to_its_directory_or_file_stem():
    from darkknowledge.errors import UserError
    from darkknowledge.experiments.spec import parse_spec

    base = {"student": {"model": "lm_d16_l1"}, "methods": [{"name": "kd"}], "diagnose": False}
    spec = parse_spec({**base, "teachers": [{"hf": "models/SmolLM2-135M/"}, {"gguf": "m/SmolLM2.Q4_1.gguf"}]})
    assert [t.label for t in spec.teachers] == ["SmolLM2-135M", "SmolLM2.Q4_1"]
    assert [t.pretrained for t in spec.teachers] == [("hf", "models/SmolLM2-135M/"), ("gguf", "m/SmolLM2.Q4_1.gguf")]
    with pytest.raises(UserError, match="TAKD .* need a teacher checkpoint"):
        parse_spec(
            {**base, "teachers": [{"hf": "x"}], "methods": [{"name": "kd", "assistant": {"model": "lm_d16_l1"}}]}
        )
