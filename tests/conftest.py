"""Shared fixtures: fast settings, the digits splits, and small trained teachers.

Everything runs on CPU in fp32 with contiguous tensors and no progress bar
(``FAST``). The teachers are trained once per test session and shared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# The tests run tiny models on a small, often shared CPU: one intra-op thread is many times
# faster there than several (no OpenMP barrier stalls). DARKKNOWLEDGE_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("DARKKNOWLEDGE_TEST_THREADS", "1")))

# Settings that make a run fast and bit-reproducible on a CPU.
FAST = ["engine.precision=fp32", "engine.channels_last=false", "engine.progress=false"]

# The shared teacher: cnn_w16, 3 epochs at a constant lr 0.1, batch 32 (~88 % top-1 on digits).
TEACHER = [
    "model.name=cnn_w16",
    "method.name=ce",
    "optim.epochs=3",
    "optim.lr=0.1",
    "optim.schedule=constant",
    "data.batch_size=32",
    "seed=0",
]


def fast_config(output_dir, *overrides: str):
    """A validated RunConfig writing under ``output_dir`` with the FAST settings."""
    from darkknowledge.config import load_config

    return load_config(overrides=[f"output_dir={output_dir}", *FAST, *overrides])


@pytest.fixture(scope="session")
def digits_splits():
    from darkknowledge.data import build_dataset

    return build_dataset("digits", train=True), build_dataset("digits", train=False)


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory) -> dict:
    """A trained cnn_w16 teacher on the full digits set: its run dir and summary.

    Tests must treat the run directory as read-only (other tests share it).
    """
    from darkknowledge.engine.trainer import train

    out = tmp_path_factory.mktemp("teacher")
    summary = train(fast_config(out, *TEACHER, "name=t16"))
    run_dir = Path(summary["run_dir"])
    return {"run_dir": run_dir, "summary": summary, "best": run_dir / "best.pt", "last": run_dir / "last.pt"}


@pytest.fixture(scope="session")
def teacher_ckpt(teacher_run) -> Path:
    return teacher_run["last"]


@pytest.fixture(scope="session")
def teacher3_ckpt(tmp_path_factory) -> Path:
    """A (barely trained) teacher of digits classes 0, 1, 2 only: 3 outputs."""
    from darkknowledge.engine.trainer import train

    out = tmp_path_factory.mktemp("teacher3")
    summary = train(
        fast_config(
            out,
            "model.name=cnn_w4",
            "method.name=ce",
            "optim.epochs=1",
            "data.classes=[0,1,2]",
            "data.train_per_class=20",
            "data.batch_size=16",
            "name=t3",
        )
    )
    return Path(summary["run_dir"]) / "last.pt"


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
