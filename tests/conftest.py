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
import yaml

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


# ---------------------------------------------------------------- golden method inputs (tests/methods)
# torch.manual_seed(0); randn(4, 5) * 2 (student), randn(4, 5) * 3 (teacher), rounded.
GOLD_S = [
    [-2.252, -2.305, -0.501, -0.868, 1.198],
    [-3.11, -0.683, 3.706, 0.936, -0.315],
    [2.887, 0.532, 2.779, 3.173, 1.893],
    [-1.687, 1.864, 2.518, 4.01, 0.107],
]
GOLD_T = [
    [1.319, 0.337, 1.922, 1.323, 0.617],
    [-1.351, -1.719, -1.666, 1.783, 4.626],
    [1.522, -1.773, -3.976, 0.566, -0.207],
    [-1.485, -4.488, -0.582, 1.337, 3.976],
]
GOLD_Y = [2, 4, 0, 1]


def gold_inputs(dtype=torch.float32):
    return torch.tensor(GOLD_S, dtype=dtype), torch.tensor(GOLD_T, dtype=dtype), torch.tensor(GOLD_Y)


# ---------------------------------------------------------------- a small sweep spec (tests/experiments)
BASE = {
    "data": {"name": "digits", "batch_size": 32, "train_per_class": 20, "test_per_class": 10},
    "optim": {"epochs": 2, "lr": 0.05, "schedule": "cosine"},
    "engine": {"precision": "fp32", "channels_last": False},
}


def spec_dict(**changes) -> dict:
    spec = {
        "base": BASE,
        "teachers": [{"model": "mlp_h32"}, {"model": "mlp_h128"}],
        "student": {"model": "mlp_h16"},
        "methods": [
            {"label": "kd-T4", "name": "kd", "temperature": 4},
            {"label": "kd-T8", "name": "kd", "temperature": 8},
        ],
        "seeds": [0, 1],
        "diagnose": False,
    }
    spec.update(changes)
    return spec


def write_spec(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump(spec_dict(**changes)))
    return path


def quiet(*_):
    pass
