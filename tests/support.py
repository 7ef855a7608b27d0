"""Shared test helpers: fast settings, config and metrics helpers, golden method inputs, a small
sweep spec. Imported by test modules as ``support`` (``conftest`` modules hold fixtures only: with one
per test folder, a module named ``conftest`` is not a stable import)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

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


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


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


def write_corpus(root: Path, documents: int = 80, size: int = 1500, source_files: int = 40) -> Path:
    """A directory of ``documents`` text files of ``size`` characters cut from the first
    ``source_files`` of the standard library's own sources (real text, on any machine)."""
    from darkknowledge.data.text import stdlib_files

    text = "".join(f.read_text(encoding="utf-8", errors="replace") for f in stdlib_files()[:source_files])
    root.mkdir()
    for i in range(documents):
        (root / f"doc{i:03d}.txt").write_text(text[i * size : (i + 1) * size])
    return root
