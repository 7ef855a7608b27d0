"""Evaluate a checkpoint on a split of its dataset (or of another one given by data.* overrides)."""

from __future__ import annotations

from typing import Any

from darkknowledge.data.loader import eval_batches
from darkknowledge.data.splits import load_split
from darkknowledge.engine.checkpoint import load_model
from darkknowledge.engine.factory import check_teacher_fits, checkpoint_data_config, resolve_device
from darkknowledge.engine.metrics import evaluate


def evaluate_checkpoint(
    checkpoint: str, data_overrides: list[str], *, split: str = "test", precision: str = "fp32", device: str = "cpu"
) -> dict[str, Any]:
    """Top-1, top-5, NLL and ECE of ``checkpoint`` on ``split``."""
    torch_device = resolve_device(device)
    model, ckpt = load_model(checkpoint, torch_device)
    data = checkpoint_data_config(ckpt, data_overrides, "evaluate")
    dataset = load_split(data, split)
    check_teacher_fits(ckpt, dataset.spec, checkpoint)
    metrics = evaluate(model, eval_batches(dataset, data.eval_batch_size, torch_device), precision)
    return {"checkpoint": checkpoint, "model": ckpt["model_name"], "dataset": data.name, "split": split, **metrics}
