"""``darkknowledge diagnose`` end to end on digits checkpoints, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from darkknowledge.cli.main import main
from support import fast_config


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory) -> Path:
    """A second, smaller digits teacher (cnn_w4, 2 epochs) to form a ladder with the shared one."""
    from darkknowledge.engine.trainer import train

    out = tmp_path_factory.mktemp("small_teacher")
    summary = train(
        fast_config(
            out,
            "model.name=cnn_w4",
            "method.name=ce",
            "optim.epochs=2",
            "optim.lr=0.1",
            "data.batch_size=32",
            "name=t4",
        )
    )
    return Path(summary["run_dir"]) / "last.pt"


@pytest.fixture(scope="module")
def kd_student(tmp_path_factory, teacher_ckpt) -> Path:
    """A student distilled (KD, a few steps) from the shared teacher; it stays almost untrained."""
    from darkknowledge.engine.trainer import train

    out = tmp_path_factory.mktemp("kd_student")
    summary = train(
        fast_config(
            out,
            "model.name=cnn_w4",
            "method.name=kd",
            "optim.epochs=1",
            "data.train_per_class=20",
            f"teacher.checkpoint={teacher_ckpt}",
            "name=kd4",
        )
    )
    return Path(summary["run_dir"]) / "last.pt"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_diagnose_ladder_with_student(capsys, tmp_path, teacher_ckpt, small_teacher):
    out_dir = tmp_path / "diag"
    # the larger teacher first: the CLI sorts the ladder by parameter count
    code, out, err = run(
        capsys,
        "diagnose",
        "-t",
        str(teacher_ckpt),
        "-t",
        str(small_teacher),
        "-s",
        str(small_teacher),
        "--temperatures",
        "1,4",
        "--out",
        str(out_dir),
        "data.test_per_class=5",
    )
    assert code == 0, err
    result = json.loads((out_dir / "diagnostics.json").read_text())
    names = [t["name"] for t in result["teachers"]]
    assert names == ["t4", "t16"]  # sorted by size
    assert [t["num_params"] for t in result["teachers"]] == sorted(t["num_params"] for t in result["teachers"])
    assert result["students"] and result["students"][0]["name"] == "t4-student2"
    html = (out_dir / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "MEASUREMENTS, NOT A PREDICTION" in out
    # the train split is diagnosed by default: 1,438 digits training images
    assert result["teachers"][0]["num_samples"] == 1438
    assert result["data"] == {
        "dataset": "digits",
        "root": None,
        "split": "train",
        "num_samples": 1438,
        "num_classes": 10,
        "classes": None,
        "per_class": None,
        "subset_seed": 0,
        "image_size": None,
        "image_shape": [1, 8, 8],
    }  # data.test_per_class does not touch the train split
    assert "Data: digits, train split, 1,438 samples; images 8x8 (native size); no per-class subset." in html


def test_diagnose_test_split_subset(capsys, tmp_path, teacher_ckpt, small_teacher):
    out_dir = tmp_path / "diag"
    code, _, err = run(
        capsys,
        "diagnose",
        "-t",
        str(small_teacher),
        "-t",
        str(teacher_ckpt),
        "--split",
        "test",
        "data.test_per_class=3",
        "--no-plots",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    result = json.loads((out_dir / "diagnostics.json").read_text())
    assert result["teachers"][0]["num_samples"] == 30
    assert (
        result["data"]["split"] == "test" and result["data"]["per_class"] == 3 and result["data"]["num_samples"] == 30
    )
    assert not list(out_dir.glob("*.png"))


def test_diagnose_from_logits_file(capsys, tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, size=200)
    path = tmp_path / "logits.npz"
    np.savez(
        path,
        targets=targets,
        logits_small=rng.normal(size=(200, 5)).astype(np.float32),
        logits_large=(3 * rng.normal(size=(200, 5))).astype(np.float32),
    )
    code, _, err = run(capsys, "diagnose", "--logits", str(path), "--no-plots", "--out", str(tmp_path / "d"))
    assert code == 0, err
    assert (tmp_path / "d" / "diagnostics.json").is_file()


def test_cards_only_for_a_students_own_teacher_or_a_ce_baseline(
    capsys, tmp_path, teacher_ckpt, small_teacher, kd_student
):
    out_dir = tmp_path / "diag"
    # kd4 was distilled from t16; the t4 run (method ce, no teacher) doubles as a CE baseline student
    code, out, err = run(
        capsys,
        "diagnose",
        "-t",
        str(teacher_ckpt),
        "-t",
        str(small_teacher),
        "-s",
        str(kd_student),
        "-s",
        str(small_teacher),
        "--temperatures",
        "4",
        "--no-plots",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    result = json.loads((out_dir / "diagnostics.json").read_text())
    pairs = [(c["teacher"], c["student"]) for c in result["cards"]]
    assert pairs == [("t4", "t4-student3"), ("t16", "kd4"), ("t16", "t4-student3")]  # no t4 -> kd4 card
    assert "t4 -> kd4" not in out and "t16 -> kd4" in out
    # a barely trained student is so unsure that variance rises as tau falls below 0.5 for all its
    # samples: its tau* sits on the lower search bound, which is warned about on stderr and on file
    assert any(w.startswith("kd4: ") and "lower search bound 0.5" in w for w in result["warnings"])
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == [
        f"warning: {w}" for w in result["warnings"]
    ]
    assert "Warnings" in (out_dir / "report.html").read_text()


def test_student_teacher_match_by_weights_when_the_teacher_was_copied(capsys, tmp_path, teacher_ckpt, kd_student):
    copy = tmp_path / "t16-copy" / "last.pt"
    copy.parent.mkdir()
    copy.write_bytes(teacher_ckpt.read_bytes())
    code, _, err = run(
        capsys,
        "diagnose",
        "-t",
        str(copy),
        "-s",
        str(kd_student),
        "--temperatures",
        "4",
        "--no-plots",
        "--out",
        str(tmp_path / "diag"),
    )
    assert code == 0, err
    result = json.loads((tmp_path / "diag" / "diagnostics.json").read_text())
    assert [(c["teacher"], c["student"]) for c in result["cards"]] == [("t16-copy", "kd4")]


def test_taught_by_reads_method_teacher_path_and_cache_digest(tmp_path):
    import yaml

    from darkknowledge.runs.diagnose import taught_by

    def student(method, checkpoint=None, cache=None):
        return {
            "config": yaml.safe_dump(
                {"method": {"name": method}, "teacher": {"checkpoint": checkpoint, "cache": cache}}
            )
        }

    teacher = tmp_path / "t" / "last.pt"
    assert taught_by(student("ce"), teacher, "d1")  # no teacher: comparable with every teacher
    assert taught_by(student("kd", checkpoint=str(tmp_path / "t" / ".." / "t" / "last.pt")), teacher, "d1")
    assert not taught_by(student("kd", checkpoint=str(tmp_path / "other.pt")), teacher, "d1")  # gone: no match
    assert not taught_by(student("kd"), teacher, "d1")  # no record of a teacher
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "meta.json").write_text(json.dumps({"key": {"teacher_digest": "d1"}}))
    assert taught_by(student("kd", cache=str(cache)), teacher, "d1")
    assert not taught_by(student("kd", cache=str(cache)), teacher, "d2")
    assert taught_by({"config": yaml.safe_dump({"method": {"name": "ce"}})}, teacher, "d1")


@pytest.mark.parametrize(
    "argv, needle",
    [
        ((), "--teacher"),
        (("-t", "/nonexistent/best.pt"), "does not exist"),
        (("-t", "{t}", "--temperatures", "1,x"), "--temperatures"),
        (("-t", "{t}", "--temperatures", "0,1"), "positive"),
        (("-t", "{t}", "optim.lr=0.1"), "data.*"),
        (("-t", "{t}", "data.name=nope"), "unknown dataset"),
        (("-t", "{t}", "-t", "{t3}"), "classes"),
    ],
)
def test_diagnose_bad_input(capsys, tmp_path, teacher_ckpt, teacher3_ckpt, argv, needle):
    argv = [a.format(t=teacher_ckpt, t3=teacher3_ckpt) for a in argv]
    out_dir = tmp_path / "diag"
    code, _, err = run(capsys, "diagnose", *argv, "--out", str(out_dir))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out_dir.exists()
