"""benchmarks/gpu_check.sh cannot rot: its --smoke mode (CPU, tiny sizes) runs every step of `run`
except the installs and the CUDA tests, and its argument errors are one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    # a generous budget: in --smoke no step is cut by time, so a loaded machine only makes it slower
    full_env.setdefault("DK_GPU_BUDGET_S", "1500")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=1600)


def test_smoke_runs_every_step(tmp_path):
    out = tmp_path / "out"
    proc = _run("--smoke", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torch" in (out / "env.txt").read_text()
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert set(bench["achieved"]) == {"reference", "live", "cached", "student_only"}
    assert bench["setup"]["device"] == "cpu"
    runs = [json.loads(line) for line in (out / "capacity" / "runs.jsonl").read_text().splitlines()]
    assert [r["model"] for r in runs if r["role"] == "teacher"] == ["cnn_w4", "cnn_w8", "cnn_w16"]
    students = {(r["method"], r["teacher"]) for r in runs if r["role"] == "student"}
    assert students == {("ce", None)} | {(m, "cnn_w16") for m in ("kd", "isats", "dist", "ttm")}
    assert all(0 <= r["test_top1"] <= 100 for r in runs)
    workloads = [json.loads(line) for line in (out / "workloads" / "runs.jsonl").read_text().splitlines()]
    assert [w["name"] for w in workloads] == [
        "lm-teacher",
        "lm-student-kd-cached",
        "image-teacher",
        "image-student-kd-view-cache",
    ]
    assert all(0 < w["value"] < 12 for w in workloads[:2])  # bits per byte
    assert (out / "workloads" / "lm-cache" / "meta.json").is_file()
    summary = (out / "summary.md").read_text()
    assert "## language-model and full-resolution workloads" in summary
    assert "fraction of its matmul peak" in summary and "teachers at >= 90 % test top-1" in summary


def test_prepare_without_data_is_one_line(tmp_path):
    proc = _run("prepare", str(tmp_path / "bundle"), DK_CIFAR10_JPEG=str(tmp_path / "missing"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"gpu_check: no CIFAR-10 container at {tmp_path / 'missing'} (set DK_CIFAR10_JPEG)"
    ]
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("run",)])
def test_usage_errors(args):
    proc = _run(*args)
    assert proc.returncode != 0 and "gpu_check.sh" in proc.stderr
