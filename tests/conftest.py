"""Shared fixtures: the digits splits and small trained teachers (trained once per test session
and shared). Helpers that test modules import live in ``support.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from support import TEACHER, fast_config

# The tests run tiny models on a small, often shared CPU: one intra-op thread is many times
# faster there than several (no OpenMP barrier stalls). DARKKNOWLEDGE_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("DARKKNOWLEDGE_TEST_THREADS", "1")))


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


# ---------------------------------------------------------------- golden method inputs (tests/methods)
# torch.manual_seed(0); randn(4, 5) * 2 (student), randn(4, 5) * 3 (teacher), rounded.
# ---------------------------------------------------------------- a small sweep spec (tests/experiments)


@pytest.fixture
def recorded_compiles(monkeypatch) -> list:
    """``torch.compile`` as the engine calls it, replaced by a recorder that returns the model
    unchanged: the list of ``(model, kwargs)`` it was asked to compile (the wiring, not inductor)."""
    from darkknowledge.engine import compile as compile_module

    compiled: list = []

    def fake_compile(model, **kwargs):
        compiled.append((model, kwargs))
        return model

    monkeypatch.setattr(compile_module.torch, "compile", fake_compile)
    return compiled
