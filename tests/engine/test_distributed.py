"""Data-parallel training with torchrun: 2 CPU processes (gloo) give the result of one
process with the same global batch; only rank 0 writes; resume works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from darkknowledge.engine.checkpoint import load_checkpoint
from support import FAST, read_metrics

# mlp_h64 has no BatchNorm (whose statistics are per process under DDP), so one process
# with batch 64 and two with batch 32 each see the same samples per step and average the
# same gradients: only the order of float additions differs.
RUN = [
    "model.name=mlp_h64",
    "optim.epochs=3",
    "optim.lr=0.05",
    "data.train_per_class=60",
    "data.test_per_class=20",
    *FAST,
]


def _torchrun(args: list[str], tmp_path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "darkknowledge",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    from darkknowledge.cli.main import main

    assert main(["train", *RUN, "data.batch_size=64", f"output_dir={tmp_path}", "name=single"]) == 0
    proc = _torchrun(["train", *RUN, "data.batch_size=32", f"output_dir={tmp_path}", "name=ddp"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"run_dir"') == 1  # only rank 0 reports
    single, ddp = load_checkpoint(tmp_path / "single" / "last.pt"), load_checkpoint(tmp_path / "ddp" / "last.pt")
    for k in single["model"]:
        # tolerance: float32 sums in another order over 3 epochs of SGD with momentum
        torch.testing.assert_close(ddp["model"][k], single["model"][k], rtol=1e-3, atol=1e-4)
    m1, m2 = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    assert [m["epoch"] for m in m2] == [0, 1, 2]  # rank 0 alone wrote the metrics
    for a, b in zip(m1, m2):
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-3)
        assert abs(b["test/top1"] - a["test/top1"]) <= 100 / 200 + 1e-9  # at most one of 200 test images flips


def test_resume_under_torchrun(tmp_path):
    args = ["train", *RUN, "data.batch_size=32", f"output_dir={tmp_path}", "name=r"]
    first = _torchrun([*args, "optim.epochs=2"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _torchrun([*args, "optim.epochs=3", "--resume"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [m["epoch"] for m in read_metrics(tmp_path / "r")] == [0, 1, 2]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs"] == 3


def test_distill_under_torchrun_with_a_method_that_learns(tmp_path, teacher_ckpt):
    # CTKD learns its temperature; its gradients are averaged across ranks by hand (outside DDP).
    # With them averaged, two processes of batch 32 learn the temperature and the weights of one
    # process of batch 64 (a BatchNorm-free student); without, each rank learns its own.
    args = [
        "distill",
        f"teacher.checkpoint={teacher_ckpt}",
        *RUN,
        "optim.epochs=2",
        "method.name=ctkd",
        "method.curriculum_epochs=1",  # the gradient-reversal weight is 0 in epoch 0 and -1 from epoch 1
        f"output_dir={tmp_path}",
    ]
    from darkknowledge.cli.main import main

    assert main([*args, "data.batch_size=64", "name=single"]) == 0
    proc = _torchrun([*args, "data.batch_size=32", "name=ddp"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = load_checkpoint(tmp_path / "single" / "last.pt"), load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert not any(k.startswith("module.") for k in ddp["model"])  # the plain student's weights, not the wrapper's
    assert float(ddp["method"]["theta"]) != pytest.approx(1.0)  # the temperature was learned (init_theta 1)
    torch.testing.assert_close(ddp["method"]["theta"], single["method"]["theta"], rtol=1e-3, atol=1e-4)
    for k in single["model"]:
        torch.testing.assert_close(ddp["model"][k], single["model"][k], rtol=1e-3, atol=1e-4)
    record = read_metrics(tmp_path / "ddp")[-1]
    assert "test/teacher_agreement" in record
