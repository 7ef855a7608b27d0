"""The experiments layer: sweep specs, stage identity, reuse, resume after a kill,
failure isolation, executors, results files."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from darkknowledge.cli.main import main
from darkknowledge.errors import UserError
from darkknowledge.experiments import open_sweep
from darkknowledge.experiments.identity import identity_config, stage_key
from darkknowledge.experiments.results import write_results
from darkknowledge.experiments.spec import parse_spec
from support import BASE, quiet, spec_dict, write_spec


def stage_log_lines(sweep) -> dict[str, str]:
    return {s.name: sweep.store.log(s).read_text() for s in sweep.stages() if sweep.store.log(s).is_file()}


# ----------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"teachers": [{"model": "mlp_h32", "checkpoint": "x.pt"}]}, "teachers.0: give exactly one of model"),
        ({"methods": [{"name": "kd"}, {"name": "kd"}]}, "method labels must be unique, 'kd' appears twice"),
        ({"methods": [{"name": "ce"}]}, "the CE baseline (label 'ce') is always run"),
        ({"methods": [{"name": "kd", "temprature": 4}]}, "methods[0]: method 'kd': bad parameter method.temprature"),
        ({"methods": [{"name": "nosuch"}]}, "nosuch"),
        ({"base": {"optim": {"lrr": 1}}}, "optim.lrr: unknown key"),
        ({"seeds": [0, 0]}, "seeds must be distinct"),
        ({"teachers": []}, "teachers"),
        ({"students": {}}, "students: unknown key"),
        ({"methods": [{"name": "kd", "label": "a/b"}]}, "must be letters"),
        (
            {"teachers": [{"model": "mlp_h32", "methods": ["kd"]}]},
            "teacher 'mlp_h32': methods names 'kd', which is not a method label",
        ),
        (
            {"methods": [{"name": "kd", "teachers": ["big"]}]},
            "method 'kd': teachers names 'big', which is not a teacher label",
        ),
    ],
)
def test_spec_errors_name_the_key(change, message):
    with pytest.raises(UserError, match=None) as exc:
        parse_spec(spec_dict(**change), "s.yaml")
    assert message in str(exc.value) and str(exc.value).startswith("sweep spec s.yaml")
    assert "\n" not in str(exc.value)


def test_one_method_twice_with_labels_and_always_ce(tmp_path):
    sweep = open_sweep(parse_spec(spec_dict()), tmp_path / "sw", log=quiet)
    names = [s.name for s in sweep.stages()]
    assert names[:4] == ["teacher-mlp_h32", "teacher-mlp_h128", "student-mlp_h16-ce-s0", "student-mlp_h16-ce-s1"]
    assert len(names) == 2 + 2 + 2 * 2 * 2
    assert "student-mlp_h16-kd-T8-from-mlp_h128-s1" in names


def test_teacher_and_method_filters_choose_the_pairs(tmp_path):
    spec = spec_dict(
        teachers=[{"model": "mlp_h32"}, {"model": "mlp_h128"}, {"model": "mlp_h128", "epoch": 2, "methods": ["kd-T4"]}],
        methods=[
            {"label": "kd-T4", "name": "kd"},
            {"label": "kd-T8", "name": "kd", "temperature": 8, "teachers": ["mlp_h128"]},
        ],
        seeds=[0],
    )
    names = {
        s.name
        for s in open_sweep(parse_spec(spec), tmp_path / "sw", log=quiet).stages()
        if s.name.startswith("student") and "-ce-" not in s.name
    }
    assert names == {
        "student-mlp_h16-kd-T4-from-mlp_h32-s0",
        "student-mlp_h16-kd-T4-from-mlp_h128-s0",
        "student-mlp_h16-kd-T4-from-mlp_h128-e2-s0",
        "student-mlp_h16-kd-T8-from-mlp_h128-s0",
    }


# ----------------------------------------------------------------------------- stage identity


def test_stage_key_ignores_paths_and_display_settings_but_not_results():
    cfg = {
        "data": {"name": "digits"},
        "optim": {"epochs": 2},
        "engine": {"progress": False, "threads": 1},
        "teacher": {"checkpoint": "/a/t.pt"},
        "output_dir": "x",
        "name": "n",
    }
    moved = {
        **cfg,
        "output_dir": "y",
        "name": "m",
        "engine": {"progress": True, "threads": 4},
        "teacher": {"checkpoint": "/b/t.pt"},
    }
    ident = identity_config(cfg)
    assert ident == identity_config(moved)
    assert stage_key("student", ident, {"teacher": "d1"}) != stage_key("student", ident, {"teacher": "d2"})
    assert ident != identity_config({**cfg, "optim": {"epochs": 3}})
    assert identity_config({"teacher": {"cache": "/c", "checkpoint": "/t"}}) != identity_config({"teacher": {}})


def test_sweep_runs_reuses_and_writes_results(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", diagnose=True)
    code = main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "run      student   student-mlp_h16-kd-T4-from-mlp_h32-s0" in out
    assert "new, after its inputs" in out and '"run": 13' in out
    assert not (tmp_path / "sw").exists()  # a dry run writes nothing

    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw")]) == 0
    out = capsys.readouterr().out
    sw = tmp_path / "sw"
    rows = list(csv.DictReader((sw / "results.csv").open()))
    assert len(rows) == (2 * 2 + 1) * 2
    kd = [r for r in rows if r["method"] == "kd-T8" and r["teacher"] == "mlp_h128"]
    assert len(kd) == 2 and all(json.loads(r["method_params"]) == {"name": "kd", "temperature": 8} for r in kd)
    for r in rows:  # each row is its own run's summary, last and best epoch in their own columns
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert float(r["last_top1"]) == summary["final"]["test/top1"]
        assert (
            float(r["best_top1"]) == summary["best"]["test/top1"]
            and int(r["best_epoch"]) == summary["best"]["epoch"] + 1
        )
        assert summary["seed"] == int(r["seed"]) and summary["method"] == json.loads(r["method_params"]).get(
            "name", "ce"
        )
    assert len({r["run_dir"] for r in rows}) == len(rows)
    assert all(r["last_rank_fidelity"] for r in rows if r["method"] != "ce")
    teachers = list(csv.DictReader((sw / "teachers.csv").open()))
    assert [t["teacher"] for t in teachers] == ["mlp_h32", "mlp_h128"] and int(teachers[0]["params"]) < int(
        teachers[1]["params"]
    )
    table = (sw / "results.md").read_text()
    assert "## Last epoch" in table and "## Best epoch" in table and "Student alone (CE)" in table
    assert "| mlp_h128 |" in table and "| kd-T4 | kd-T8 |" in table
    assert "[diagnostics/report.html](diagnostics/report.html)" in table and (sw / "diagnostics/report.html").is_file()
    assert (sw / "diagnostics/diagnostics.json").read_bytes() == next(
        sw.glob("runs/diagnose-*/diagnostics.json")
    ).read_bytes()
    assert "## Paired with the student alone" in table and len(re.findall(r" \([0-2]/2\) \|", table)) == 4
    assert (sw / "student_vs_teacher.png").stat().st_size > 1000

    # everything is reused: no stage runs again
    sweep = open_sweep(str(spec), sw, log=quiet)
    logs = stage_log_lines(sweep)
    assert sweep.run() == {"done": 13}
    assert stage_log_lines(sweep) == logs
    code = main(["sweep", str(spec), "--out", str(sw), "--status"])
    assert code == 0 and '{"done": 13}' in capsys.readouterr().out
    assert main(["sweep", str(spec), "--out", str(sw), "--dry-run"]) == 0
    assert '{"reuse": 13}' in capsys.readouterr().out


def test_changed_input_is_never_reused(tmp_path):
    sw = tmp_path / "sw"
    small = spec_dict(teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0])
    assert open_sweep(parse_spec(small), sw, log=quiet).run() == {"done": 3}
    # a teacher trained longer: a new teacher stage, and its students are planned anew
    longer = spec_dict(
        teachers=[{"model": "mlp_h32", "config": {"optim": {"epochs": 3}}}], methods=[{"name": "kd"}], seeds=[0]
    )
    sweep = open_sweep(parse_spec(longer), sw, log=quiet)
    states = {s.name: sweep.state(s) for s in sweep.stages() if "kd" not in s.name}
    assert states == {"teacher-mlp_h32": "pending", "student-mlp_h16-ce-s0": "done"}
    assert sweep.run() == {"done": 3}
    assert len([d for d in (sw / "runs").iterdir() if d.name.startswith("student-mlp_h16-kd-from")]) == 2


def test_given_teacher_checkpoint_replaced_is_not_reused(tmp_path):
    from darkknowledge.engine.checkpoint import atomic_torch_save, load_checkpoint

    sw = tmp_path / "sw"
    open_sweep(
        parse_spec(spec_dict(teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0])), sw, log=quiet
    ).run()
    ckpt_path = next((sw / "runs").glob("teacher-mlp_h32-*")) / "last.pt"
    given = tmp_path / "given.pt"
    ckpt = load_checkpoint(ckpt_path)
    atomic_torch_save(ckpt, given)
    spec = parse_spec(
        spec_dict(teachers=[{"checkpoint": str(given), "label": "given"}], methods=[{"name": "kd"}], seeds=[0])
    )
    sweep = open_sweep(spec, sw, log=quiet)
    assert sweep.run() == {"done": 2}
    first = [sweep.store.dir(s) for s in sweep.stages() if s.name.startswith("student-mlp_h16-kd-from-given")]
    ckpt["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    atomic_torch_save(ckpt, given)
    sweep = open_sweep(spec, sw, log=quiet)
    student = [s for s in sweep.stages() if s.name.startswith("student-mlp_h16-kd-from-given")][0]
    assert sweep.state(student) == "pending" and sweep.store.dir(student) not in first


def test_failed_stage_is_reported_and_does_not_stop_the_others(tmp_path, capsys):
    # a teacher whose batch is larger than the training set fails at run time
    spec = write_spec(
        tmp_path / "s.yaml",
        teachers=[{"model": "mlp_h32", "config": {"data": {"batch_size": 100000}}}, {"model": "mlp_h64"}],
        methods=[{"name": "kd"}],
        seeds=[0],
    )
    code = main(["sweep", str(spec), "--out", str(tmp_path / "sw")])
    out = capsys.readouterr().out
    assert code == 1
    assert "failed  teacher-mlp_h32" in out and "larger than the training set" in out and "log.txt" in out
    main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--status", "--no-retry-failed"])
    status = capsys.readouterr().out
    assert "blocked  student   student-mlp_h16-kd-from-mlp_h32-s0" in status
    assert "done     student   student-mlp_h16-kd-from-mlp_h64-s0" in status
    rows = list(csv.DictReader((tmp_path / "sw/results.csv").open()))
    assert sorted(r["method"] + ":" + r["teacher"] for r in rows) == ["ce:", "kd:mlp_h64"]
    main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--dry-run", "--no-retry-failed"])
    plan = capsys.readouterr().out
    assert "skip     student   student-mlp_h16-kd-from-mlp_h32-s0  blocked: needs teacher-mlp_h32 (failed)" in plan
    main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--dry-run"])
    plan = capsys.readouterr().out
    assert "run      teacher   teacher-mlp_h32                     run again (it failed)" in plan
    assert "run      student   student-mlp_h16-kd-from-mlp_h32-s0  new, after its inputs" in plan


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        teachers=[{"model": "mlp_h32"}],
        methods=[{"name": "kd"}],
        seeds=[0, 1],
        base={**BASE, "optim": {"epochs": 40, "lr": 0.05, "schedule": "cosine"}},
    )
    sw = tmp_path / "sw"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "darkknowledge", "sweep", str(spec), "--out", str(sw)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    # kill as soon as the first stage is done and the second has written a checkpoint
    deadline = time.time() + 120
    killed_in = None
    while time.time() < deadline and proc.poll() is None:
        done = [d for d in sw.glob("runs/*") if (d / "result.json").is_file()]
        partial = [d for d in sw.glob("runs/*") if (d / "last.pt").is_file() and not (d / "result.json").is_file()]
        if done and partial:
            killed_in = partial[0]
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_in is not None, "the sweep finished before it could be killed"
    finished_before = {
        d.name: (d / "result.json").read_text() for d in sw.glob("runs/*") if (d / "result.json").is_file()
    }

    sweep = open_sweep(str(spec), sw, log=quiet)
    killed_stage = next(s for s in sweep.stages() if sweep.store.dir(s) == killed_in)
    assert sweep.state(killed_stage) == "partial"
    detail = next(r["detail"] for r in sweep.status_rows() if r["stage"] == killed_stage.name)
    done_epochs = len((killed_in / "metrics.jsonl").read_text().splitlines())
    assert f"started, resumable ({done_epochs} of 40 epochs done)" in detail
    assert sweep.run() == {"done": 5}  # teacher, 2 CE, 2 KD
    for name, result in finished_before.items():  # finished stages were not run again
        assert (sw / "runs" / name / "result.json").read_text() == result
    assert "resuming" in (killed_in / "log.txt").read_text()
    epochs = [json.loads(line)["epoch"] for line in (killed_in / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(40))


def test_local_processes_match_inline(tmp_path):
    # with a validation split: best.pt is chosen on it, the test split is read once per run
    base = {**BASE, "data": {**BASE["data"], "val_per_class": 5}}
    small = parse_spec(spec_dict(base=base, teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0]))
    inline = open_sweep(small, tmp_path / "a", log=quiet)
    local = open_sweep(small, tmp_path / "b", executor="local", jobs=2, log=quiet)
    assert inline.run() == {"done": 3} and local.run() == {"done": 3}
    for a, b in zip(inline.stages(), local.stages()):
        assert a.key == b.key
        summary_a, summary_b = inline.store.summary(a), local.store.summary(b)
        assert summary_a["final"] == summary_b["final"], a.name
        assert summary_a["selection"] == "val" and "val/top1" in summary_a["best"]
    write_results(inline)
    rows = list(csv.DictReader((tmp_path / "a" / "results.csv").open()))
    assert rows and all(float(r["best_val_top1"]) >= float(r["last_val_top1"]) for r in rows)  # chosen on val
    threads = yaml.safe_load((local.store.dir(local.stages()[0]) / "config.yaml").read_text())["engine"]["threads"]
    assert threads == max(1, (os.cpu_count() or 1) // 2)  # cores split between the jobs


def test_parallel_jobs_never_oversubscribe_the_spec_threads(tmp_path):
    # a spec written for one inline run (engine.threads = every core) must not give each of
    # N local jobs that many threads: N x threads on the same cores collapses
    base = {**BASE, "engine": {**BASE["engine"], "threads": 64}}
    spec = parse_spec(spec_dict(base=base, teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0]))
    inline = open_sweep(spec, tmp_path / "a", log=quiet)
    local = open_sweep(spec, tmp_path / "b", executor="local", jobs=2, log=quiet)
    per_job = max(1, (os.cpu_count() or 1) // 2)
    planned = [sweep.stages() for sweep in (inline, local)]
    assert len(planned[0]) == 3  # the teacher, the CE student and the KD student
    assert {s.config["engine"]["threads"] for s in planned[0]} == {64}  # inline: the spec's choice
    assert {s.config["engine"]["threads"] for s in planned[1]} == {per_job}
    assert [s.key for s in planned[0]] == [s.key for s in planned[1]]  # threads are not identity


def test_submitit_local_cluster_runs_the_same_stages(tmp_path):
    pytest.importorskip("submitit")
    small = parse_spec(spec_dict(teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0]))
    sweep = open_sweep(
        small, tmp_path / "c", executor="submitit", cluster="local", submitit_params={"timeout_min": 10}, log=quiet
    )
    assert sweep.run() == {"done": 3}
    assert (tmp_path / "c/submitit").is_dir()
    assert all(sweep.store.result(s)["status"] == "done" for s in sweep.stages())


def test_sweep_refuses_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/f.txt").write_text("x")
    spec = write_spec(tmp_path / "s.yaml")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "mine")]) == 2
    assert "no sweep.json" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["f.txt"]


def test_job_that_died_is_recorded_as_failed(tmp_path):
    from darkknowledge.experiments.stage import main as stage_main
    from darkknowledge.experiments.stage import record_failure

    sweep = open_sweep(
        parse_spec(spec_dict(teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0])), tmp_path, log=quiet
    )
    stage = sweep.stages()[0]
    store = sweep.store
    stage_dir = store.write_request(stage)
    record_failure(stage_dir, "node lost")
    store.refresh()
    assert store.state(stage) == "failed" and store.result(stage)["error"] == "node lost"
    assert "error: node lost" in store.log(stage).read_text()
    # the command-line job runs it again and succeeds
    assert stage_main([str(stage_dir)]) == 0
    store.refresh()
    assert store.state(stage) == "done"
    record_failure(stage_dir, "late report")  # a finished job's own result is kept
    store.refresh()
    assert store.state(stage) == "done"


def test_records_make_a_sweep_resumable_on_a_fresh_machine(tmp_path):
    specdir = tmp_path / "spec"
    specdir.mkdir()
    spec = write_spec(
        specdir / "s.yaml", teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0], records="rec"
    )
    first = open_sweep(str(spec), tmp_path / "a", log=quiet)
    assert first.run() == {"done": 3}
    records = sorted(p.name for p in (specdir / "rec").iterdir())
    assert len(records) == 3 and all(r.endswith(".json") for r in records)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "a"), "--report"]) == 0
    rows_a = (tmp_path / "a" / "results.csv").read_text()

    # a fresh machine: no run directories, only the committed spec and records
    lines = []
    fresh = open_sweep(str(spec), tmp_path / "b", log=lines.append)
    assert fresh.counts() == {"recorded": 3}
    assert fresh.run() == {"recorded": 3} and not any("stage(s) to run" in line for line in lines)
    write_results(fresh)
    strip = lambda text: [line.rsplit(",", 2)[0] for line in text.splitlines()]  # wall time and run dir differ  # noqa: E731
    assert strip((tmp_path / "b" / "results.csv").read_text()) == strip(rows_a)

    # one more seed there: the recorded teacher is retrained (it is needed), the old student is not
    more = write_spec(
        specdir / "s.yaml", teachers=[{"model": "mlp_h32"}], methods=[{"name": "kd"}], seeds=[0, 1], records="rec"
    )
    lines.clear()
    grown = open_sweep(str(more), tmp_path / "b", log=lines.append)
    assert grown.run() == {"done": 3, "recorded": 2}
    ran = [line.split()[1] for line in lines if line.startswith("  done")]
    assert sorted(ran) == ["student-mlp_h16-ce-s1", "student-mlp_h16-kd-from-mlp_h32-s1", "teacher-mlp_h32"]
    assert len(list((specdir / "rec").iterdir())) == 5


def test_the_same_run_under_two_labels_runs_once(tmp_path):
    # "kd" at its default temperature and an explicit "kd-T4" are one run: trained once, both reported
    specdir = tmp_path / "spec"
    specdir.mkdir()
    methods = [{"name": "kd"}, {"label": "kd-T4", "name": "kd", "temperature": 4.0}]
    spec = write_spec(specdir / "s.yaml", teachers=[{"model": "mlp_h32"}], methods=methods, seeds=[0], records="rec")
    lines = []
    sweep = open_sweep(str(spec), tmp_path / "a", log=lines.append)
    assert sweep.run() == {"done": 4}
    ran = [line.split()[1] for line in lines if line.startswith("  done") and "the same run as" not in line]
    assert sorted(ran) == ["student-mlp_h16-ce-s0", "student-mlp_h16-kd-from-mlp_h32-s0", "teacher-mlp_h32"]
    assert sorted(p.name.split("-from")[0] for p in (tmp_path / "a" / "runs").iterdir() if "kd" in p.name) == [
        "student-mlp_h16-kd"
    ]
    write_results(sweep)
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "a" / "results.csv").open())}
    assert rows["kd-T4"]["last_top1"] == rows["kd"]["last_top1"] and rows["kd-T4"]["run_dir"] == rows["kd"]["run_dir"]
    assert len(list((specdir / "rec").iterdir())) == 4  # each label keeps its own record

    fresh = open_sweep(str(spec), tmp_path / "b", log=quiet)  # a fresh machine: both come from the records
    assert fresh.counts() == {"recorded": 4}
    twin = [r for r in fresh.status_rows() if "kd-T4" in r["stage"]][0]
    assert "the same run as student-mlp_h16-kd-from-mlp_h32-s0" in twin["detail"]

    # relabelled on a fresh machine: the record of the same key under the old label serves
    renamed = write_spec(
        specdir / "s.yaml",
        teachers=[{"model": "mlp_h32"}],
        records="rec",
        seeds=[0],
        methods=[{"label": "kd-renamed", "name": "kd"}],
    )
    relabelled = open_sweep(str(renamed), tmp_path / "c", log=quiet)
    assert relabelled.counts() == {"recorded": 3}
    row = [r for r in relabelled.status_rows() if "kd-renamed" in r["stage"]][0]
    assert row["detail"].endswith(".json") and Path(row["detail"].split(": ", 1)[1]).is_file()

    # an entry added in front that equals a finished one reads it instead of running again
    ahead = write_spec(
        specdir / "s.yaml",
        teachers=[{"model": "mlp_h32"}],
        records="rec",
        seeds=[0],
        methods=[{"label": "kd-default", "name": "kd"}, *methods],
    )
    lines.clear()
    grown = open_sweep(str(ahead), tmp_path / "a", log=lines.append)
    assert grown.run() == {"done": 5} and not any("stage(s) to run" in line for line in lines[:-1])


def test_the_plot_draws_methods_across_teachers_and_leaves_ablations_to_the_tables():
    from darkknowledge.experiments.results import plotted_methods

    spec = parse_spec(
        spec_dict(
            teachers=[{"model": "mlp_h32"}, {"model": "mlp_h64"}],
            methods=[
                {"name": "kd"},
                {"label": "kd-T2", "name": "kd", "temperature": 2.0, "teachers": ["mlp_h64"]},
                {"name": "dist", "teachers": ["mlp_h64"]},
                {"label": "takd", "name": "kd", "assistant": {"model": "mlp_h16"}, "teachers": ["mlp_h64"]},
                {"name": "dkd"},
            ],
        )
    )
    teachers = [{"teacher": "mlp_h32", "params": 10}, {"teacher": "mlp_h64", "params": 20}]
    row = lambda teacher, method: {"teacher": teacher, "method": method, "last_top1": 50.0}  # noqa: E731
    students = [
        row("mlp_h32", "kd"),
        row("mlp_h64", "kd"),
        row("mlp_h64", "kd-T2"),
        row("mlp_h64", "dist"),
        row("mlp_h64", "takd"),
    ]
    # kd spans both teachers; kd-T2 is a one-teacher variant of it; dist is the only dist entry;
    # takd has a teacher-side step; dkd has no results
    assert plotted_methods(spec.methods, teachers, students) == ["kd", "dist", "takd"]


def test_local_executor_starts_a_stage_as_soon_as_its_inputs_are_done(tmp_path):
    # a slow teacher must not hold back the students of a fast one (no waves)
    spec = parse_spec(
        spec_dict(
            teachers=[{"model": "mlp_h32"}, {"model": "mlp_h128", "config": {"optim": {"epochs": 150}}}],
            methods=[{"name": "kd", "teachers": ["mlp_h32"]}],
            seeds=[0],
        )
    )
    lines: list[str] = []
    sweep = open_sweep(spec, tmp_path / "sw", executor="local", jobs=2, log=lines.append)
    assert sweep.run() == {"done": 4}  # two teachers, the CE student, the KD student
    finished = [line.split()[1] for line in lines if line.startswith("  done")]
    assert finished.index("student-mlp_h16-kd-from-mlp_h32-s0") < finished.index("teacher-mlp_h128")
    assert len(finished) == 4 and not any(line.startswith("wave") for line in lines)


def _die() -> None:
    os._exit(1)


def test_the_local_pool_replaces_itself_after_a_worker_died():
    # a worker killed (out of memory, say) breaks a process pool: its job fails, the next ones
    # run in fresh workers instead of the sweep stopping with BrokenProcessPool
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from darkknowledge.experiments.executors import WorkerPool

    pool = WorkerPool(lambda: ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(_die).result(timeout=120)
        assert pool.submit(pow, 2, 5).result(timeout=120) == 32
    finally:
        pool.close()
