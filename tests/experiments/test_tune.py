"""`darkknowledge tune`: a choice on the validation split within a budget, trials as stages,
resume after a kill without repeating finished trials, and bad specs refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from darkknowledge.cli.main import main
from darkknowledge.config import load_config
from support import write_corpus

optuna = pytest.importorskip("optuna")

SPEC = {
    "base": {
        "data": {"name": "digits", "batch_size": 64, "val_per_class": 8, "train_per_class": 40, "test_per_class": 10},
        "optim": {"epochs": 4, "lr": 0.05, "schedule": "cosine"},
        "engine": {"precision": "fp32", "channels_last": False},
    },
    "teachers": [{"model": "mlp_h32"}, {"model": "mlp_h128"}],
    "teacher_config": {"optim": {"epochs": 3}},
    "student": {"model": "mlp_h16"},
    "search": {
        "methods": [
            {"name": "kd", "params": {"temperature": {"low": 1, "high": 8, "log": True}}},
            {"name": "dist", "params": {"temperature": {"choices": [1, 4]}}},
        ],
        "min_epochs": 1,
        "reduction_factor": 2,
        "budget_epochs": 16,
    },
}


def write(path: Path, **search) -> Path:
    spec = json.loads(json.dumps(SPEC))
    spec["search"].update(search)
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(*argv: str, capsys=None) -> int:
    return main(["tune", *argv])


def stage_summaries(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}


def test_tune_chooses_on_validation_within_the_budget(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(str(write(tmp_path / "t.yaml")), "--out", str(out)) == 0
    result = json.loads((out / "tune.json").read_text())
    chosen, trials = result["chosen"], result["trials"]
    assert result["compute"]["rungs"] == [1, 2, 4] and result["compute"]["student_epochs"] <= 16
    full = [t for t in trials if t["state"] == "complete"]
    assert result["selection"] == {"metric": "top1", "higher_is_better": True}
    assert full and result["val"] == max(t["val"]["4"] for t in full)
    # the chosen run's own summary: its validation top-1 is the one reported, its test top-1 the one read
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
    assert summary["best"]["val/top1"] == result["val"] and summary["best"]["test/top1"] == result["test"]
    assert summary["epochs"] == 4 and summary["method"] == chosen["method"]
    # pruned trials stopped at a rung below the full length; runner-ups are other candidates
    assert all(t["epochs_reached"] < 4 for t in trials if t["state"] == "pruned")
    assert all({k: r[k] for k in ("teacher", "method", "params")} != chosen for r in result["runner_ups"])
    # the chosen configuration, runnable as it is
    cfg = load_config(str(out / "chosen.yaml"))
    assert cfg.method.name == chosen["method"] and Path(cfg.teacher.checkpoint_path).is_file()
    assert (out / "tune.png").is_file() and "Chosen for mlp_h16" in capsys.readouterr().out


def test_a_killed_tune_resumes_without_repeating_finished_trials(tmp_path):
    spec, out = write(tmp_path / "t.yaml"), tmp_path / "out"
    assert run_cli(str(spec), "--out", str(out)) == 0
    done = stage_summaries(out)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    study = optuna.load_study(study_name="darkknowledge-tune", storage=storage)
    finished = {t.number: t.state for t in study.trials}
    # a trial killed mid-run: asked with the parameters of a finished one, never told
    params = next(t.params for t in study.trials if t.state.name == "COMPLETE")
    study.enqueue_trial(params)
    killed = study.ask()
    assert run_cli(str(write(tmp_path / "t.yaml", budget_epochs=20)), "--out", str(out)) == 0
    study = optuna.load_study(study_name="darkknowledge-tune", storage=storage)
    assert {t.number: t.state for t in study.trials if t.number in finished} == finished  # kept as they were
    assert study.trials[killed.number].state.name == "FAIL"
    again = [t for t in study.trials if t.user_attrs.get("resumed_from") == killed.number]
    assert len(again) == 1 and again[0].params == params and again[0].state.name == "COMPLETE"
    assert again[0].user_attrs.get("epochs_spent", 0) == 0  # its rungs were stages already: reused, not trained
    assert {k: v for k, v in stage_summaries(out).items() if k in done} == done  # no finished stage ran again


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"search": {"methods": []}}, "search space is empty"),
        ({"search": {"teachers": []}}, "search space is empty"),
        ({"search": {"budget_epochs": 3}}, "smaller than one full trial"),
        ({"base": {"data": {"val_per_class": None}}}, "validation split"),
        (
            {"search": {"methods": [{"name": "kd", "params": {"temperature": {"low": 0, "high": 2, "log": True}}}]}},
            "log range",
        ),
        ({"search": {"methods": [{"name": "kd", "params": {"temperature": {"choices": [-1, 2]}}}]}}, "temperature"),
    ],
)
def test_bad_tune_specs_are_one_line_errors_and_write_nothing(tmp_path, capsys, change, message):
    spec = json.loads(json.dumps(SPEC))
    for section, values in change.items():
        spec[section] = {**spec[section], **values}
        if section == "base":
            spec["base"]["data"] = {**SPEC["base"]["data"], **values["data"]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    assert run_cli(str(tmp_path / "t.yaml"), "--out", str(tmp_path / "out")) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_candidate_teacher_of_other_classes_is_refused(tmp_path, capsys, teacher3_ckpt):
    spec = json.loads(json.dumps(SPEC))
    spec["teachers"].append({"checkpoint": str(teacher3_ckpt), "label": "three"})
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    assert run_cli(str(tmp_path / "t.yaml"), "--out", str(tmp_path / "out")) == 2
    assert "predicts 3 classes" in _one_line_error(capsys) and not (tmp_path / "out").exists()


def test_a_damaged_study_is_an_error_and_is_left_as_it_is(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"darkknowledge_sweep": 1}))
    (out / "study.journal").write_text("{not json\n")
    assert run_cli(str(write(tmp_path / "t.yaml")), "--out", str(out)) == 2
    assert "damaged" in _one_line_error(capsys)
    assert (out / "study.journal").read_text() == "{not json\n"


def test_the_card_of_the_chosen_teacher_recommends_the_tune_choice(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(str(write(tmp_path / "t.yaml")), "--out", str(out)) == 0
    result = json.loads((out / "tune.json").read_text())
    teachers = sorted(str(p) for p in (out / "runs").glob("teacher-*/last.pt"))
    assert result["teacher_checkpoint"] in teachers
    capsys.readouterr()
    argv = ["diagnose", *(a for t in teachers for a in ("-t", t)), "--out", str(tmp_path / "d"), "--no-plots"]
    assert main([*argv, "--tuned", str(out / "tune.json")]) == 0
    cards = json.loads((tmp_path / "d" / "diagnostics.json").read_text())["cards"]
    chosen = [c for c in cards if c["method"] is not None]
    assert len(chosen) == 1 and chosen[0]["method"] == result["chosen"]["method"]
    assert "chosen by `darkknowledge tune`" in chosen[0]["recommendation"]
    assert all("Run `darkknowledge tune`" in c["recommendation"] for c in cards if c is not chosen[0])


def test_tune_chooses_a_language_model_by_validation_nll(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")

    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "corpus", documents=40, size=1000, source_files=20)
    spec = {
        "base": {
            "data": {"name": "textfiles", "root": "corpus", "vocab_size": 260, "context": 16, "batch_size": 16},
            "optim": {"optimizer": "adamw", "lr": 0.003, "schedule": "cosine", "epochs": 2},
            "engine": {"precision": "fp32", "channels_last": False},
        },
        "teachers": [{"model": "lm_d32_l1"}],
        "teacher_config": {"optim": {"epochs": 1}},
        "student": {"model": "lm_d16_l1"},
        "search": {
            "methods": [{"name": "kd", "params": {"temperature": {"choices": [1, 4]}}}, {"name": "reverse_kl"}],
            "min_epochs": 1,
            "reduction_factor": 2,
            "budget_epochs": 8,
        },
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    assert main(["tune", "t.yaml", "--out", "out"]) == 0
    result = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert result["selection"] == {"metric": "nll", "higher_is_better": False}
    full = [t for t in result["trials"] if t["state"] == "complete"]
    assert full and result["val"] == min(t["val"]["2"] for t in full)  # lowest NLL, not highest top-1
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
    assert summary["selection_metric"] == result["selection"]
    assert summary["best"]["val/nll"] == result["val"] and summary["best"]["test/nll"] == result["test"]
    # run again over the finished study (nothing left to train): the same choice, still by NLL
    assert main(["tune", "t.yaml", "--out", "out"]) == 0
    again = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert again["selection"] == result["selection"] and again["val"] == result["val"]
    assert again["trials"] == result["trials"]
