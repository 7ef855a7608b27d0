"""The command line, run in-process (``main([...])``) plus one real console-script run."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from darkknowledge.cli.main import COMMANDS, main
from support import FAST

TINY = [
    "model.name=cnn_w4",
    "data.train_per_class=10",
    "data.test_per_class=5",
    "data.batch_size=32",
    "optim.epochs=1",
    *FAST,
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output_dir "runs" lands in tmp


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, *argv: str, contains: tuple[str, ...] = ()) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in contains:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- help and listings


def _commands() -> list[str]:
    return sorted(COMMANDS)


@pytest.mark.parametrize("name", _commands())
def test_help_shows_an_example(capsys, name):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "darkknowledge " + name in out


def test_core_commands_are_registered():
    assert {"train", "distill", "evaluate", "methods", "models", "datasets", "configs", "demo", "cache"} <= set(
        _commands()
    )


def test_top_level_help_and_version(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "example" in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "darkknowledge 0." in capsys.readouterr().out


def test_listings(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    assert "kd:" in out and "ce:" in out and "method.temperature" in out and "[no teacher]" in out
    code, out, _ = run(capsys, "methods", "kd")
    assert code == 0 and out.startswith("kd:") and "ce:" not in out
    code, out, _ = run(capsys, "datasets")
    assert code == 0 and "digits" in out and "cifar100" in out
    code, out, _ = run(capsys, "configs")
    assert code == 0 and out.split() == ["cifar100_kd", "cifar100_teacher"]


def test_models_listing_states_its_sizes_and_the_name_families(capsys):
    from darkknowledge.experiments import load_spec, resolve_spec_path
    from darkknowledge.models import build_model, count_parameters, model_patterns

    demo = load_spec(resolve_spec_path("demo"))

    code, out, _ = run(capsys, "models", "--num-classes", "10", "--in-channels", "1")
    assert code == 0
    assert out.startswith("Parameter counts for 10 classes and 1 input channel (--num-classes, --in-channels)")
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.endswith("M")}
    assert {"cnn_w4", "resnet8", "wrn_16_2"} <= set(rows)
    assert rows["cnn_w4"] == f"{count_parameters(build_model('cnn_w4', 10, 1)) / 1e6:.3f}M"
    for family in model_patterns():  # e.g. "mlp_hN": any N, not only the registered sizes
        assert f"  {family}\n" in out
    assert "any name of these forms" in out
    for name in [
        demo.student.model,
        *(t.model for t in demo.teachers),
    ]:  # the demo's models (mlp_h16, mlp_h1024 are not registered)
        assert name in rows, name
    code, out, _ = run(capsys, "models")
    assert out.startswith("Parameter counts for 100 classes and 3 input channels ")


def test_unknown_method_listing(capsys):
    assert_user_error(capsys, "methods", "nosuch", contains=("nosuch", "kd"))


# ----------------------------------------------------------------------------- bad input -> exit 2, one line


def test_unknown_model(capsys):
    assert_user_error(capsys, "train", *TINY, "model.name=nonet", contains=("nonet", "cnn_w4", "resnet20"))
    # a known family with an impossible size says why
    assert_user_error(capsys, "train", *TINY, "model.name=resnet9000", contains=("resnet9000", "6n+2"))


def test_unknown_method(capsys):
    assert_user_error(capsys, "train", *TINY, "method.name=kdd", contains=("kdd", "dkd"))


def test_unknown_dataset(capsys):
    assert_user_error(capsys, "train", *TINY, "data.name=cifar1000", contains=("cifar1000", "digits"))


def test_unknown_config_key(capsys):
    assert_user_error(capsys, "train", *TINY, "optim.lrr=0.1", contains=("optim.lrr", "unknown key"))


def test_bad_value(capsys):
    assert_user_error(capsys, "train", *TINY, "optim.lr=fast", contains=("optim.lr",))


def test_bad_method_parameter(capsys):
    assert_user_error(capsys, "distill", *TINY, "method.bogus=1", contains=("method.bogus",))


def test_malformed_override(capsys):
    assert_user_error(capsys, "train", *TINY, "optim.lr", contains=("optim.lr", "key.sub=value"))


def test_unknown_config_file(capsys):
    assert_user_error(capsys, "train", "--config", "nope.yaml", contains=("nope.yaml", "cifar100_kd"))


def test_batch_larger_than_dataset(capsys):
    assert_user_error(capsys, "train", *TINY, "data.batch_size=1000", contains=("batch_size", "100 samples"))


def test_missing_teacher_checkpoint(capsys):
    assert_user_error(
        capsys,
        "distill",
        *TINY,
        "teacher.checkpoint=runs/nope/best.pt",
        contains=("runs/nope/best.pt", "does not exist"),
    )


def test_distill_without_teacher(capsys):
    assert_user_error(capsys, "distill", *TINY, contains=("teacher.checkpoint",))


def test_corrupted_checkpoint(capsys, tmp_path, teacher_ckpt):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(teacher_ckpt.read_bytes()[:5000])
    assert_user_error(capsys, "distill", *TINY, f"teacher.checkpoint={bad}", contains=(str(bad),))
    assert_user_error(capsys, "evaluate", str(bad), contains=(str(bad),))


def test_teacher_for_other_classes(capsys, teacher3_ckpt):
    # the teacher's classes are the default (inherited); other classes must be refused
    assert_user_error(
        capsys,
        "distill",
        *TINY,
        "data.classes=[0,1,2,3]",
        f"teacher.checkpoint={teacher3_ckpt}",
        contains=("3 classes",),
    )


def test_existing_run_without_resume(capsys, tmp_path):
    code, out, _ = run(capsys, "train", *TINY, "name=r")
    assert code == 0 and json.loads(out)["run_dir"] == "runs/r"
    assert_user_error(capsys, "train", *TINY, "name=r", contains=("--resume",))
    # overrides before and after an option
    code, out, _ = run(capsys, "train", *TINY, "--resume", "name=r", "optim.epochs=2")
    assert code == 0
    assert len((tmp_path / "runs/r/metrics.jsonl").read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- train / distill / evaluate


def test_distill_and_evaluate(capsys, tmp_path, teacher_run):
    teacher = teacher_run["best"]
    code, out, err = run(capsys, "distill", *TINY, f"teacher.checkpoint={teacher}", "method.temperature=2", "name=s")
    assert code == 0, err
    result = json.loads(out)
    assert result["run_dir"] == "runs/s" and "test/top1" in result["final"]
    saved = (tmp_path / "runs/s/config.yaml").read_text()
    assert "name: kd" in saved and "temperature: 2.0" in saved

    code, out, err = run(capsys, "evaluate", str(teacher))
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["split"] == "test" and metrics["dataset"] == "digits" and metrics["n"] == 359
    best = json.loads((teacher_run["run_dir"] / "summary.json").read_text())["best"]
    assert metrics["top1"] == pytest.approx(best["test/top1"])
    assert {"top5", "nll", "ece"} <= metrics.keys()

    code, out, _ = run(capsys, "evaluate", str(teacher), "--split", "train", "data.train_per_class=3")
    assert code == 0 and json.loads(out)["n"] == 30
    assert_user_error(capsys, "evaluate", str(teacher), "optim.lr=1", contains=("data.*",))
    assert_user_error(capsys, "evaluate", str(teacher), "data.classes=[0,1]", contains=("classes",))


def test_console_script(tmp_path):
    exe = Path(sys.executable).parent / "darkknowledge"
    if not exe.exists():
        pytest.skip("console script not installed next to this interpreter")
    ok = subprocess.run([str(exe), "configs"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and "cifar100_kd" in ok.stdout
    bad = subprocess.run([str(exe), "train", "optim.lrr=1"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and bad.stderr.startswith("error: ")
    assert "optim.lrr" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "runs").exists()


def test_overrides_after_options_and_unknown_options(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 0.02\n")
    code, out, err = run(capsys, "train", "model.name=cnn_w4", "--config", str(cfg), *TINY[1:], "name=o")
    assert code == 0, err
    assert "lr: 0.02" in (tmp_path / "runs/o/config.yaml").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY, "--bogus", "name=o2"])
    assert exc.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_demo_small(capsys, tmp_path, monkeypatch):
    code, out, err = run(capsys, "demo", "--out", "d", "--epochs", "1")
    assert code == 0, err
    table = (tmp_path / "d/results.md").read_text()
    assert "| mlp_h1024 |" in table and "Student alone (CE)" in table and "| kd | isats |" in table
    rows = list(csv.DictReader((tmp_path / "d/results.csv").open()))
    assert len(rows) == 3 * 3 * 2 + 3  # teachers x seeds x methods + CE per seed
    assert (tmp_path / "d/student_vs_teacher.png").is_file() and (tmp_path / "d/diagnostics/report.html").is_file()
    # the cards, named by the spec's labels, checked against the measured KD students
    checks = list(csv.DictReader((tmp_path / "d/card_check.csv").open()))
    assert [(c["teacher"], c["reference"], c["seeds"]) for c in checks] == [
        ("mlp_h256", "mlp_h64", "3"),
        ("mlp_h1024", "mlp_h256", "3"),
    ]
    assert "## The report card against the measurements" in table and "Verdicts agreeing with the measurement" in table
    # run again: every stage is reused, nothing retrained
    code, out, err = run(capsys, "demo", "--out", "d", "--epochs", "1")
    assert code == 0 and "stage(s) to run" not in out
    # --overwrite removes only what the demo wrote
    (tmp_path / "d/notes.txt").write_text("mine")
    code, out, err = run(capsys, "demo", "--out", "d", "--epochs", "1", "--overwrite")
    assert code == 0 and "removed" in out and "wave 1: 6 stage(s) to run" in out
    assert (tmp_path / "d/notes.txt").read_text() == "mine"


def test_demo_validates_before_deleting(capsys, tmp_path, monkeypatch):
    (tmp_path / "y").mkdir()
    (tmp_path / "y/keep.txt").write_text("mine")
    assert_user_error(capsys, "demo", "--out", "y", "--epochs", "-1", "--overwrite", contains=("--epochs",))
    assert_user_error(capsys, "demo", "--out", "y", "--overwrite", contains=("no sweep.json", "another --out"))
    assert (tmp_path / "y/keep.txt").read_text() == "mine"


def _teacher_methods() -> list[str]:
    from darkknowledge.methods import METHODS

    return [m for m in METHODS.names() if METHODS.get(m).needs_teacher]


@pytest.mark.parametrize("method", _teacher_methods())
def test_distill_works_for_every_method(capsys, tmp_path, teacher_ckpt, method):
    """`darkknowledge distill method.name=<name>` trains and logs every registered method."""
    code, out, err = run(
        capsys,
        "distill",
        *TINY,
        f"method.name={method}",
        f"teacher.checkpoint={teacher_ckpt}",
        f"output_dir={tmp_path}",
        f"name={method}",
    )
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    losses = {k: v for k, v in lines[-1].items() if k.startswith("loss/")}
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses.values()), losses
    assert "test/top1" in lines[-1]
