"""Teacher-side remedies as stages: early-stopped teachers (ESKD), TAKD chains (sweep and
CLI), AID-adapted teachers, regularised teachers (RegT) inside sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from darkknowledge.cli.main import main
from darkknowledge.engine.checkpoint import load_checkpoint
from darkknowledge.experiments import open_sweep
from darkknowledge.experiments.spec import parse_spec
from support import FAST, quiet, spec_dict, write_spec


def stages_of(sweep, kind):
    return [s for s in sweep.stages() if s.kind == kind]


def test_early_stopped_teacher_shares_the_full_teachers_run(tmp_path):
    spec = parse_spec(
        spec_dict(
            teachers=[{"model": "mlp_h32"}, {"model": "mlp_h32", "epoch": 1}], methods=[{"name": "kd"}], seeds=[0]
        )
    )
    sweep = open_sweep(spec, tmp_path, log=quiet)
    assert sweep.run() == {"done": 4}  # one teacher run, CE, two students
    (teacher,) = stages_of(sweep, "teacher")
    assert teacher.config["engine"]["keep_epochs"] == [1]
    students = {s.meta["teacher"]: s for s in stages_of(sweep, "student") if s.meta["method"] == "kd"}
    assert set(students) == {"mlp_h32", "mlp_h32-e1"}
    early = sweep.store.input_paths(students["mlp_h32-e1"])["teacher"]
    assert early.endswith("epoch-1.pt") and load_checkpoint(early)["epoch"] == 1
    assert sweep.store.input_paths(students["mlp_h32"])["teacher"].endswith("last.pt")
    used = yaml.safe_load((sweep.store.dir(students["mlp_h32-e1"]) / "config.yaml").read_text())
    assert used["teacher"]["checkpoint"] == early  # the job received the snapshot's path


def test_takd_chain_trains_the_assistant_once_and_reuses_it(tmp_path):
    spec = parse_spec(
        spec_dict(
            teachers=[{"model": "mlp_h128"}],
            methods=[{"label": "takd", "name": "kd", "temperature": 4, "assistant": {"model": "mlp_h32"}}],
            seeds=[0, 1],
        )
    )
    sweep = open_sweep(spec, tmp_path, log=quiet)
    assert sweep.run() == {"done": 1 + 2 + 1 + 2}
    (assistant,) = stages_of(sweep, "assistant")
    assert assistant.config["model"]["name"] == "mlp_h32" and assistant.config["method"]["temperature"] == 4
    teacher_path = sweep.store.input_paths(assistant)["teacher"]
    assert teacher_path.endswith("last.pt") and "teacher-mlp_h128" in teacher_path
    assistant_dir = sweep.store.dir(assistant)
    for s in stages_of(sweep, "student"):
        if s.meta["method"] == "takd":
            assert sweep.store.input_paths(s)["teacher"] == str((assistant_dir / "last.pt").resolve())
    finished = (assistant_dir / "result.json").read_text()
    assert open_sweep(spec, tmp_path, log=quiet).run() == {"done": 6}
    assert (assistant_dir / "result.json").read_text() == finished  # reused, not retrained
    from darkknowledge.experiments.results import write_results

    written = write_results(open_sweep(spec, tmp_path, log=quiet))
    assert {r["method"] for r in written["students"]} == {"ce", "takd"}
    roles = (tmp_path / "teachers.csv").read_text()
    assert ",teacher,," in roles and ",assistant,mlp_h128,takd,mlp_h32," in roles


def test_takd_from_the_cli_reuses_the_assistant(tmp_path, teacher_ckpt, capsys):
    args = [
        "distill",
        f"teacher.checkpoint={teacher_ckpt}",
        "model.name=cnn_w4",
        "optim.epochs=1",
        "data.train_per_class=20",
        "data.test_per_class=10",
        "data.batch_size=32",
        f"output_dir={tmp_path}",
        "--assistant",
        "cnn_w8",
        *FAST,
    ]
    assert main([*args, "name=s1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assistant = Path(out["assistant"])
    assert load_checkpoint(assistant)["model_name"] == "cnn_w8"
    saved = yaml.safe_load((tmp_path / "s1" / "config.yaml").read_text())
    assert saved["teacher"]["checkpoint"] == str(assistant)
    assert main([*args, "name=s2", "seed=0"]) == 0
    captured = capsys.readouterr()
    assert "reusing the assistant" in captured.err and json.loads(captured.out)["assistant"] == str(assistant)


def test_aid_adapts_the_teacher_to_the_ce_student_before_distilling(tmp_path):
    adapt = {"method": {"name": "aid"}, "config": {"optim": {"epochs": 1, "lr": 0.01}}}
    spec = parse_spec(
        spec_dict(
            teachers=[{"model": "mlp_h64"}], methods=[{"label": "aid-kd", "name": "kd", "adapt": adapt}], seeds=[0]
        )
    )
    sweep = open_sweep(spec, tmp_path, log=quiet)
    assert sweep.run() == {"done": 4}  # teacher, CE, adapted teacher, student
    (adapted,) = stages_of(sweep, "adapted")
    (teacher,) = stages_of(sweep, "teacher")
    (ce,) = [s for s in stages_of(sweep, "student") if s.meta["method"] == "ce"]
    paths = sweep.store.input_paths(adapted)
    assert adapted.config["model"]["name"] == "mlp_h64"
    assert paths["init"] == str((sweep.store.dir(teacher) / "last.pt").resolve())
    assert paths["teacher"] == str((sweep.store.dir(ce) / "last.pt").resolve())
    (student,) = [s for s in stages_of(sweep, "student") if s.meta["method"] == "aid-kd"]
    assert sweep.store.input_paths(student)["teacher"] == str((sweep.store.dir(adapted) / "last.pt").resolve())


def test_regularised_teacher_in_a_sweep(tmp_path):
    spec = parse_spec(
        spec_dict(
            teachers=[
                {"model": "mlp_h32", "label": "plain"},
                {"model": "mlp_h32", "label": "regt", "config": {"method": {"name": "regt"}}},
            ],
            methods=[{"name": "kd"}],
            seeds=[0],
        )
    )
    sweep = open_sweep(spec, tmp_path, log=quiet)
    teachers = stages_of(sweep, "teacher")
    assert [t.config["method"]["name"] for t in teachers] == ["ce", "regt"]
    assert sweep.run() == {"done": 5}


def test_remedy_spec_errors():
    from darkknowledge.errors import UserError

    with pytest.raises(UserError, match="not both"):
        parse_spec(spec_dict(methods=[{"name": "kd", "assistant": {"model": "mlp_h32"}, "adapt": {}}]))
    with pytest.raises(UserError, match="epoch applies to a teacher the sweep trains"):
        parse_spec(spec_dict(teachers=[{"checkpoint": "x.pt", "epoch": 3}]))
    with pytest.raises(UserError, match="methods\\[0\\].assistant"):
        parse_spec(
            spec_dict(methods=[{"name": "kd", "assistant": {"model": "nosuch_model", "config": {"optim": {"lrr": 1}}}}])
        )


def test_recorded_remedy_stages_plan_on_a_fresh_directory(tmp_path):
    adapt = {"method": {"name": "aid"}, "config": {"optim": {"epochs": 1, "lr": 0.01}}}
    (tmp_path / "spec").mkdir()
    spec = write_spec(
        tmp_path / "spec" / "s.yaml",
        teachers=[{"model": "mlp_h64"}],
        seeds=[0],
        records="rec",
        methods=[{"label": "aid-kd", "name": "kd", "adapt": adapt}],
    )
    assert open_sweep(str(spec), tmp_path / "a", log=quiet).run() == {"done": 4}
    # no teacher file here: the adapted teacher is still planned (architecture from the spec) and recorded
    assert open_sweep(str(spec), tmp_path / "b", log=quiet).counts() == {"recorded": 4}
