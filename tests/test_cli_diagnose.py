"""``darkknowledge diagnose`` end to end on digits checkpoints, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import fast_config
from darkknowledge.cli.main import main


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory) -> Path:
    """A second, smaller digits teacher (cnn_w4, 2 epochs) to form a ladder with the shared one."""
    from darkknowledge.engine.trainer import train

    out = tmp_path_factory.mktemp("small_teacher")
    summary = train(fast_config(out, "model.name=cnn_w4", "method.name=ce", "optim.epochs=2", "optim.lr=0.1",
                                "data.batch_size=32", "name=t4"))
    return Path(summary["run_dir"]) / "last.pt"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_diagnose_ladder_with_student(capsys, tmp_path, teacher_ckpt, small_teacher):
    out_dir = tmp_path / "diag"
    # the larger teacher first: the CLI sorts the ladder by parameter count
    code, out, err = run(capsys, "diagnose", "-t", str(teacher_ckpt), "-t", str(small_teacher), "-s", str(small_teacher),
                         "--temperatures", "1,4", "--out", str(out_dir), "data.test_per_class=5")
    assert code == 0, err
    result = json.loads((out_dir / "diagnostics.json").read_text())
    names = [t["name"] for t in result["teachers"]]
    assert names == ["t4", "t16"]  # sorted by size
    assert [t["num_params"] for t in result["teachers"]] == sorted(t["num_params"] for t in result["teachers"])
    assert result["students"] and result["students"][0]["name"] == "t4-student2"
    html = (out_dir / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "HEURISTIC" in out or "heuristic" in out.lower()
    # the train split is diagnosed by default: 1,438 digits training images
    assert result["teachers"][0]["num_samples"] == 1438


def test_diagnose_test_split_subset(capsys, tmp_path, teacher_ckpt, small_teacher):
    out_dir = tmp_path / "diag"
    code, _, err = run(capsys, "diagnose", "-t", str(small_teacher), "-t", str(teacher_ckpt), "--split", "test",
                       "data.test_per_class=3", "--no-plots", "--out", str(out_dir))
    assert code == 0, err
    result = json.loads((out_dir / "diagnostics.json").read_text())
    assert result["teachers"][0]["num_samples"] == 30
    assert not list(out_dir.glob("*.png"))


def test_diagnose_from_logits_file(capsys, tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, size=200)
    path = tmp_path / "logits.npz"
    np.savez(path, targets=targets, logits_small=rng.normal(size=(200, 5)).astype(np.float32),
             logits_large=(3 * rng.normal(size=(200, 5))).astype(np.float32))
    code, _, err = run(capsys, "diagnose", "--logits", str(path), "--no-plots", "--out", str(tmp_path / "d"))
    assert code == 0, err
    assert (tmp_path / "d" / "diagnostics.json").is_file()


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
