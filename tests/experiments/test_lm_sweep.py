"""A language-model sweep: LM teachers, a top-k teacher cache per teacher and distilled students
are stages like the image ones."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from darkknowledge.cli.main import main
from support import write_corpus

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


def text_spec(teacher: str, vocab_size: int, context: int, **options) -> dict:
    """A sweep spec: KD from one language-model teacher over the test corpus in ./corpus."""
    data = {"name": "textfiles", "root": "corpus", "vocab_size": vocab_size, "context": context, "batch_size": 16}
    return {
        "base": {
            "data": data,
            "optim": {"optimizer": "adamw", "lr": 0.003, "schedule": "cosine", "grad_clip": 1.0, "epochs": 1},
            "engine": {"precision": "fp32", "channels_last": False},
        },
        "teachers": [{"model": teacher}],
        "student": {"model": "lm_d16_l1"},
        "methods": [{"name": "kd"}],
        "diagnose": False,
        **options,
    }


def test_a_language_model_sweep_with_teacher_caches_runs_and_resumes(tmp_path, monkeypatch, capsys):

    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "corpus", documents=60, size=1200, source_files=30)
    spec = text_spec("lm_d32_l1", vocab_size=300, context=24, teacher_cache=True, teacher_checkpoint="best")
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", "lm.yaml", "--out", "out"]) == 0
    logged = capsys.readouterr().out  # each finished stage's line: bits per byte, not next-token top-1
    assert "bits per byte" in logged and "top-1" not in logged
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"ce", "kd"} and all(float(r["last_nll"]) > 0 for r in rows)
    # a language-model sweep reports bits per byte (lower is better), paired with CE by seed
    assert all(0 < float(r["last_bpb"]) < 8 for r in rows)
    assert all(float(r["teacher_bpb"]) > 0 for r in rows if r["method"] == "kd")
    table = (tmp_path / "out" / "results.md").read_text()
    assert "bits per byte (lower is better)" in table and "| params | non-embedding | teacher bpb |" in table
    with open(tmp_path / "out" / "teachers.csv", newline="") as f:
        teacher_row = next(csv.DictReader(f))
    assert f"| lm_d32_l1 | {int(teacher_row['params']):,d} | {int(teacher_row['non_embedding_params']):,d} |" in table
    kd_row = next(r for r in rows if r["method"] == "kd")
    ce_row = next(r for r in rows if r["method"] == "ce")
    difference = float(kd_row["last_bpb"]) - float(ce_row["last_bpb"])
    wins = int(difference < 0)
    assert f"| lm_d32_l1 | {difference:+.3f} ({wins}/1) |" in table
    assert (tmp_path / "out" / "student_vs_teacher.png").is_file()
    assert any(p.name.startswith("cache-lm_d32_l1") for p in (tmp_path / "out" / "runs").iterdir())
    assert main(["sweep", "lm.yaml", "--out", "out", "--status"]) == 0  # everything done, nothing to run
    # a best.pt from before the last epoch holds no test metrics (the test split is read once, after
    # training): the teacher's test bits per byte come from its summary, which evaluated best.pt then
    (teacher_dir,) = (tmp_path / "out" / "runs").glob("teacher-lm_d32_l1-*")
    best = torch.load(teacher_dir / "best.pt", weights_only=True)
    best["metrics"] = {k: v for k, v in best["metrics"].items() if not k.startswith("test/")}
    torch.save(best, teacher_dir / "best.pt")
    assert main(["sweep", "lm.yaml", "--out", "out", "--report"]) == 0
    with open(tmp_path / "out" / "teachers.csv", newline="") as f:
        teacher_row = next(csv.DictReader(f))
    summary = json.loads((teacher_dir / "summary.json").read_text())
    assert float(teacher_row["bpb"]) == pytest.approx(summary["best"]["test/bpb"])


def test_headline_is_bits_per_byte_as_soon_as_a_teacher_has_it():
    from darkknowledge.experiments.results import BITS_PER_BYTE, TOP1, headline_of

    # only teachers finished yet (students pending): teachers.csv must still carry bpb columns
    assert headline_of([], [{"teacher": "lm_d64_l2", "bpb": 1.37}]) is BITS_PER_BYTE
    assert headline_of([{"last_bpb": ""}], [{"teacher": "resnet8", "bpb": None}]) is TOP1
    assert headline_of([{"last_bpb": 1.5}]) is BITS_PER_BYTE


def test_language_model_teachers_are_plotted_by_non_embedding_parameters():
    from darkknowledge.experiments.results import BITS_PER_BYTE, TOP1, capacity_axis

    lms = [{"params": 362_816, "non_embedding_params": 100_672}, {"params": 725_664, "non_embedding_params": 332_448}]
    assert capacity_axis(lms, BITS_PER_BYTE) == ("non_embedding_params", "teacher non-embedding parameters")
    assert capacity_axis(lms, TOP1)[0] == "params"
    assert capacity_axis([*lms, {"params": 5, "non_embedding_params": ""}], BITS_PER_BYTE)[0] == "params"


def test_records_of_another_corpus_are_refused(tmp_path, monkeypatch, capsys):
    """A record names the corpus its run read (summary.data_provenance); a sweep on a machine whose
    corpus differs (another Python's standard library, an edited directory) refuses to reuse it."""
    import shutil

    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "corpus", documents=40, size=1000, source_files=20)
    spec = text_spec("lm_d16_l1", vocab_size=260, context=16, records="lm.records")
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", "lm.yaml", "--out", "out"]) == 0
    (record,) = (tmp_path / "lm.records").glob("student-lm_d16_l1-ce-s0-*.json")
    data = json.loads(record.read_text())
    assert set(data["summary"]["data_provenance"]) == {"corpus_digest", "tokenizer_digest"}
    shutil.rmtree(tmp_path / "out")  # a fresh clone: the records only
    assert main(["sweep", "lm.yaml", "--out", "out"]) == 0  # the same corpus: reused
    data["summary"]["data_provenance"]["corpus_digest"] = "0" * 64
    record.write_text(json.dumps(data))
    shutil.rmtree(tmp_path / "out")
    capsys.readouterr()
    assert main(["sweep", "lm.yaml", "--out", "out"]) == 2
    assert "was made on another corpus" in capsys.readouterr().err
