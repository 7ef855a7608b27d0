"""The engine under faults: a catalogue of bad inputs (each a one-line `error:`, exit 2,
and the workspace left exactly as it was), divergence, concurrent writers, damaged run
files on resume, Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from darkknowledge.cli.main import main
from darkknowledge.engine.checkpoint import atomic_torch_save, load_checkpoint
from support import FAST, read_metrics

TINY = [
    "model.name=cnn_w4",
    "data.train_per_class=20",
    "data.test_per_class=10",
    "data.batch_size=32",
    "optim.epochs=1",
    *FAST,
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, teacher_run) -> Path:
    """A directory holding a teacher, damaged checkpoints, user files and a cache."""
    ws = tmp_path_factory.mktemp("faults")
    shutil.copytree(teacher_run["run_dir"], ws / "runs" / "teacher")
    teacher = ws / "T.pt"
    shutil.copy(teacher_run["last"], teacher)
    ckpt = load_checkpoint(teacher)
    atomic_torch_save({k: v for k, v in ckpt.items() if k != "model_name"}, ws / "no_model_name.pt")
    atomic_torch_save({**ckpt, "num_classes": "ten"}, ws / "bad_classes.pt")
    atomic_torch_save({**ckpt, "config": "data: [unclosed"}, ws / "bad_yaml.pt")
    (ws / "garbage.pt").write_bytes(os.urandom(2048))
    (ws / "file.txt").write_text("a user's file\n")
    (ws / "mine" / "sub").mkdir(parents=True)
    (ws / "mine" / "sub" / "f").write_text("hi\n")
    (ws / "bad_spec.yaml").write_text(
        yaml.safe_dump(
            {
                "teachers": [{"model": "mlp_h32"}],
                "student": {"model": "mlp_h16"},
                "methods": [{"name": "kd"}, {"name": "kd"}],
            }
        )
    )
    (ws / "good_spec.yaml").write_text(
        yaml.safe_dump(
            {"teachers": [{"model": "mlp_h32"}], "student": {"model": "mlp_h16"}, "methods": [{"name": "kd"}]}
        )
    )
    assert main(["cache", "build", str(ws / "cache"), f"teacher.checkpoint={teacher}", "--views", "1", *FAST]) == 0
    torch.save({"payload": _Pickled()}, ws / "evil.pt")  # a pickle that would call a function when unpickled
    (ws / "listmeta").mkdir()
    (ws / "listmeta" / "meta.json").write_text("[1, 2]")
    (ws / "userdiag").mkdir()
    (ws / "userdiag" / "diagnostics.json").write_text('{"mine": true}')
    spec = {"teachers": [{"model": "mlp_h32"}], "student": {"model": "mlp_h16"}}
    search = {"methods": [{"name": "kd"}], "min_epochs": 1, "budget_epochs": 300}
    (ws / "tune_no_val.yaml").write_text(yaml.safe_dump({**spec, "search": search}))
    return ws


class _Pickled:
    def __reduce__(self):
        return (print, ("unpickled",))


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its bytes, and every directory."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")

# (argv, substrings the one error line must contain)
CATALOGUE = [
    # non-finite and nonsensical settings
    (["train", *TINY, "optim.lr=inf"], ["optim.lr", "finite"]),
    (["train", *TINY, "optim.weight_decay=.nan"], ["optim.weight_decay", "finite"]),
    (["train", *TINY, "optim.gamma=inf"], ["optim.gamma", "finite"]),
    (["train", *TINY, "optim.warmup_epochs=inf"], ["optim.warmup_epochs", "finite"]),
    (["distill", *TINY, "teacher.checkpoint=T.pt", "method.temperature=inf"], ["method.temperature", "finite"]),
    (["distill", *TINY, "teacher.checkpoint=T.pt", "method.kd_weight=.nan"], ["method.kd_weight", "finite"]),
    (
        ["distill", *TINY, "teacher.checkpoint=T.pt", "method.name=isats", "method.tau_max=inf"],
        ["method.tau_max", "finite"],
    ),
    (["train", *TINY, "optim.epochs=0"], ["optim.epochs"]),
    (["train", *TINY, "optim.lrr=1"], ["optim.lrr: unknown key"]),
    (["train", *TINY, "engine.precision=fp16"], ["engine.precision"]),
    # names, paths, devices
    (["train", *TINY, "name=../../escape"], ["plain directory name"]),
    (["train", *TINY, "name=a/b"], ["plain directory name"]),
    (["train", *TINY, "engine.device=banana"], ["'banana' is not a torch device"]),
    pytest.param(["train", *TINY, "engine.device=cuda"], ["no CUDA device"], marks=NO_CUDA),
    (["train", *TINY, "model.name=nosuch"], ["nosuch"]),
    (["train", *TINY, "data.name=nosuch"], ["nosuch"]),
    (["train", *TINY, "data.classes=[3]"], ["at least 2"]),
    (["train", *TINY, "--config", "missing.yaml"], ["missing.yaml", "not found"]),
    (["train", *TINY, "output_dir=file.txt"], ["file.txt"]),
    # runs and resume
    (["train", *TINY, "name=nothing", "--resume"], ["no checkpoint", "without --resume"]),
    (["train", *TINY, "output_dir=runs", "name=teacher"], ["already holds a run", "--resume"]),
    (
        ["train", "model.name=cnn_w16", "output_dir=runs", "name=teacher", "optim.lr=0.5", "--resume", *FAST],
        ["configuration differs"],
    ),
    (["train", *TINY, "model.init=missing.pt"], ["missing.pt", "does not exist"]),
    (["train", *TINY, "model.init=T.pt"], ["holds a 'cnn_w16' but model.name is 'cnn_w4'"]),
    # teachers and checkpoints
    (["distill", *TINY], ["needs a teacher", "teacher.checkpoint"]),
    (["distill", *TINY, "teacher.checkpoint=missing.pt"], ["missing.pt", "does not exist"]),
    (["distill", *TINY, "teacher.checkpoint=no_model_name.pt"], ["no model_name"]),
    (["distill", *TINY, "teacher.checkpoint=bad_classes.pt"], ["num_classes must be a positive integer", "'ten'"]),
    (["distill", *TINY, "teacher.checkpoint=garbage.pt"], ["corrupted or not a torch checkpoint"]),
    (["distill", *TINY, "teacher.checkpoint=T.pt", "data.classes=[0,1,2]"], ["predicts 10 classes", "has 3"]),
    (["evaluate", "bad_yaml.pt"], ["configuration stored in the checkpoint is damaged"]),
    (["evaluate", "T.pt", "--device", "banana"], ["'banana' is not a torch device"]),
    pytest.param(["evaluate", "T.pt", "--device", "cuda"], ["no CUDA device"], marks=NO_CUDA),
    (["evaluate", "T.pt", "model.name=x"], ["only takes data.* overrides"]),
    (["evaluate", "no_model_name.pt"], ["no model_name"]),
    # caches
    (
        ["cache", "build", "mine", "--overwrite", "teacher.checkpoint=T.pt", *FAST],
        ["not a teacher cache", "left as it is"],
    ),
    (
        ["cache", "build", "runs/teacher", "--overwrite", "teacher.checkpoint=runs/teacher/best.pt", *FAST],
        ["not a teacher cache"],
    ),
    (["cache", "build", "new", "--views", "-3", "teacher.checkpoint=T.pt"], ["--views must be at least 1"]),
    (["cache", "build", "new", "--views", "0", "teacher.checkpoint=T.pt"], ["--views must be at least 1"]),
    (["cache", "build", "file.txt", "teacher.checkpoint=T.pt", *FAST], ["is a file"]),
    (["cache", "build", "cache", "teacher.checkpoint=T.pt", *FAST], ["exists", "--overwrite"]),
    (["cache", "build", "new", *FAST], ["teacher.checkpoint"]),
    (["cache", "info", "missing"], ["not found"]),
    # diagnostics
    (["diagnose", "-t", "T.pt", "--temperatures", "inf,nan"], ["positive finite"]),
    (["diagnose", "-t", "T.pt", "--temperatures", "0,1"], ["positive finite"]),
    (["diagnose", "-t", "T.pt", "--temperatures", "a,b"], ["comma-separated numbers"]),
    (["diagnose", "-t", "T.pt", "--out", "file.txt"], ["is a file"]),
    (["diagnose"], ["at least one --teacher"]),
    (["diagnose", "--cache", "no-such-cache"], ["is not a teacher cache"]),
    (["diagnose", "--cache", "no-such-cache", "-t", "T.pt"], ["one kind of source at a time"]),
    (["diagnose", "-t", "T.pt", "--device", "banana"], ["'banana' is not a torch device"]),
    (["diagnose", "-t", "garbage.pt"], ["corrupted"]),
    (["diagnose", "-t", "T.pt", "--out", "userdiag"], ["not written by darkknowledge diagnose", "left as it is"]),
    # the upper-half audit: teachers, caches, settings, files not ours
    (
        ["distill", *TINY, "teacher.checkpoint=T.pt", "data.image_size=16"],
        ["trained on 8x8 images", "data.image_size=8"],
    ),
    (["distill", *TINY, "teacher.checkpoint=T.pt", "teacher.cache=nocache"], ["does not exist", "teacher.build=true"]),
    (["distill", *TINY, "teacher.module=no_such_module:make"], ["cannot import"]),
    (["distill", *TINY, "teacher.module=nocolon"], ["package.module:factory"]),
    (["train", *TINY, "engine.keep_epochs=[0]"], ["engine.keep_epochs", "not an epoch of this run"]),
    (["train", *TINY, "engine.keep_epochs=[-1]"], ["engine.keep_epochs", "not an epoch of this run"]),
    (["train", *TINY, "engine.keep_epochs=[99]"], ["engine.keep_epochs", "not an epoch of this run"]),
    (["evaluate", "evil.pt"], ["refused", "could run code"]),
    (["cache", "info", "listmeta"], ["not a darkknowledge teacher cache"]),
    (
        ["cache", "build", "listmeta", "--overwrite", "teacher.checkpoint=T.pt", *FAST],
        ["not a darkknowledge teacher cache"],
    ),
    (["--plugin", "", "methods"], ["not a Python module name"]),
    (["tune", "tune_no_val.yaml", "--out", "newtune"], ["validation split"]),
    (["tune", "missing.yaml"], ["missing.yaml", "does not exist"]),
    # benchmark and catalogues
    (["bench", "--teacher", "nosuch", "--quick"], ["unknown model 'nosuch'"]),
    (["bench", "--quick", "--set", "engine.fused_bn_relu=maybe"], ["engine.fused_bn_relu"]),
    (["methods", "nosuch"], ["unknown method 'nosuch'"]),
    (["models", "--num-classes", "0"], ["num_classes must be a positive integer"]),
    # demo and sweeps
    (["demo", "--out", "mine", "--overwrite", "--epochs", "-1"], ["--epochs must be at least 1"]),
    (["demo", "--out", "mine", "--epochs", "0"], ["--epochs must be at least 1"]),
    (["demo", "--out", "mine", "--overwrite"], ["no sweep.json", "another --out"]),
    (["demo", "--out", "file.txt"], ["is a file"]),
    (["sweep", "missing.yaml"], ["missing.yaml", "does not exist"]),
    (["sweep", "bad_spec.yaml"], ["labels must be unique"]),
    (["sweep", "good_spec.yaml", "--out", "mine"], ["no sweep.json"]),
    (["sweep", "good_spec.yaml", "--jobs", "0", "--out", "new"], ["--jobs must be at least 1"]),
    (["sweep", "good_spec.yaml", "--executor", "inline", "--jobs", "2", "--out", "new"], ["--executor local"]),
]


@pytest.mark.parametrize("argv, contains", CATALOGUE)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(workspace, monkeypatch, capsys, argv, contains):
    monkeypatch.chdir(workspace)
    before = tree(workspace)
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in contains:
        assert text in lines[0], (text, lines[0])
    assert tree(workspace) == before


ENV_CATALOGUE = [
    ({"DARKKNOWLEDGE_PLUGINS": ".."}, ["methods"], ["'..'", "not a Python module name"]),
    ({"RANK": "0", "WORLD_SIZE": "2"}, ["train", *TINY], ["MASTER_ADDR", "torchrun"]),
]


@pytest.mark.parametrize("env, argv, contains", ENV_CATALOGUE)
def test_bad_environment_is_one_line_exit_2_and_changes_nothing(workspace, monkeypatch, capsys, env, argv, contains):
    import darkknowledge.plugins

    monkeypatch.chdir(workspace)
    monkeypatch.setattr(darkknowledge.plugins, "_discovered", False)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = tree(workspace)
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(t in lines[0] for t in contains), lines
    assert tree(workspace) == before


def test_catalogue_covers_every_command_that_takes_input():
    from darkknowledge.cli.command import no_args
    from darkknowledge.cli.main import COMMANDS

    argvs = [getattr(case, "values", case)[0] for case in CATALOGUE]  # a case or a pytest.param
    commands = [next((word for word in argv if word in COMMANDS), None) for argv in argvs]
    takes_input = {name for name, command in COMMANDS.items() if command.add_args is not no_args}
    assert None not in commands
    assert sorted(takes_input - set(commands)) == []
    assert len({tuple(argv) for argv in argvs}) == len(argvs)  # no case twice


@pytest.mark.parametrize(
    "argv",
    [
        ["train", *TINY, "output_dir=/proc/darkknowledge-test"],
        ["cache", "build", "/proc/darkknowledge-test", "teacher.checkpoint=T.pt", *FAST],
        ["diagnose", "-t", "T.pt", "--out", "/proc/darkknowledge-test"],
        ["demo", "--out", "/proc/darkknowledge-test", "--epochs", "1"],
        ["sweep", "good_spec.yaml", "--out", "/proc/darkknowledge-test"],
    ],
)
def test_unwritable_output_is_one_line(workspace, monkeypatch, capsys, argv):
    # root may write anywhere on a normal file system; /proc refuses everyone
    monkeypatch.chdir(workspace)
    before = tree(workspace)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot use /proc/"), err
    assert tree(workspace) == before


# ----------------------------------------------------------------------------- divergence


def test_divergence_stops_naming_epoch_step_and_terms(tmp_path, capsys):
    code = main(
        ["train", "model.name=mlp_h32", "optim.epochs=4", "optim.lr=1e6", f"output_dir={tmp_path}", "name=d", *FAST]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ")
    assert "non-finite" in err[-1] and "epoch 1" in err[-1] and ("step" in err[-1] or "evaluation" in err[-1])
    run = tmp_path / "d"
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # valid JSON: no bare NaN tokens


def test_divergence_skip_mode_counts_batches(tmp_path, capsys):
    from darkknowledge.config import load_config
    from darkknowledge.engine.trainer import build_trainer

    cfg = load_config(overrides=[*TINY, "optim.epochs=1", f"output_dir={tmp_path}", "engine.nonfinite=skip"])
    trainer = build_trainer(cfg)
    calls = {"n": 0}
    real = trainer.method.forward

    def poisoned(student_logits, teacher_logits, targets, ctx):  # every other batch gives a NaN loss
        calls["n"] += 1
        terms = real(student_logits, teacher_logits, targets, ctx)
        return {k: v * float("nan") for k, v in terms.items()} if calls["n"] % 2 else terms

    trainer.method.forward = poisoned
    summary = trainer.fit()
    record = read_metrics(summary["run_dir"])[0]
    assert record["nonfinite_skipped"] == 3 and all(v == v for v in record.values() if isinstance(v, float))


# ----------------------------------------------------------------------------- one writer per run


def test_second_writer_gets_an_error_naming_the_holder(tmp_path, capsys):
    from darkknowledge.engine.runlock import RunLock

    with RunLock(tmp_path / "same"):
        code = main(["train", *TINY, f"output_dir={tmp_path}", "name=same"])
        err = capsys.readouterr().err
        assert code == 2 and f"process {os.getpid()}" in err and "in use" in err
    assert main(["train", *TINY, f"output_dir={tmp_path}", "name=same"]) == 0  # released


# ----------------------------------------------------------------------------- damaged run files on resume


def test_resume_repairs_metrics_and_removes_stale_temporaries(tmp_path, capsys):
    base = ["train", *TINY, f"output_dir={tmp_path}", "name=r"]
    assert main([*base, "optim.epochs=2"]) == 0
    run = tmp_path / "r"
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "loss/tot')  # a crash mid-write
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + "\ngarbage\n{}\n")
    (run / ".last.pt.abc123.tmp").write_bytes(b"x" * 100)
    (run / "config.yaml").write_text(": : not yaml [")
    capsys.readouterr()
    assert main([*base, "optim.epochs=3", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "dropped 3 unreadable line(s)" in err and "config.yaml is damaged" in err
    assert [m["epoch"] for m in read_metrics(run)] == [0, 1, 2]
    assert not list(run.glob(".*.tmp"))
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["epochs"] == 3


def test_resume_from_best_when_last_is_missing(tmp_path, capsys):
    base = ["train", *TINY, f"output_dir={tmp_path}", "name=b"]
    assert main([*base, "optim.epochs=2"]) == 0
    (tmp_path / "b" / "last.pt").unlink()
    capsys.readouterr()
    assert main([*base, "optim.epochs=3", "--resume"]) == 0
    assert "resuming from best.pt" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 3


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "darkknowledge",
            "train",
            "model.name=mlp_h32",
            "optim.epochs=200",
            f"output_dir={tmp_path}",
            "name=c",
            *FAST,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "c" / "last.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")
    assert load_checkpoint(tmp_path / "c" / "last.pt")["epoch"] >= 1
