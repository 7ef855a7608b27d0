"""Evaluate a checkpoint on a split of its dataset (or of another one given by data.* overrides), or a
pretrained language-model teacher on the validation and test splits of a text dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from darkknowledge.config import RunConfig
from darkknowledge.data.loader import eval_batches
from darkknowledge.data.splits import Splits, load_split, load_splits
from darkknowledge.engine.checkpoint import load_model
from darkknowledge.engine.factory import check_teacher_fits, checkpoint_data_config, resolve_device
from darkknowledge.engine.metrics import evaluate
from darkknowledge.errors import UserError


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


def evaluate_language_model_teacher(cfg: RunConfig, splits: Splits | None = None) -> dict[str, Any]:
    """A pretrained language-model teacher (``teacher.hf`` / ``teacher.gguf``, whose tokenizer is
    ``data.tokenizer``'s) measured once on the validation and test splits: NLL, perplexity, bits per
    byte and next-token top-1 (``final``, keys ``val/...`` and ``test/...``, as a run's summary), its
    parameters (``num_params``: all of them, shared tensors once, as a trained model's count;
    ``non_embedding_params``) and the digest of its weight files."""
    from darkknowledge.engine.evaluation import TokenEvaluator
    from darkknowledge.engine.factory import load_language_model_teacher
    from darkknowledge.engine.precision import resolve_precision
    from darkknowledge.models.lm import lm_parameter_counts, weights_digest

    source = cfg.teacher.pretrained_source
    if source is None:
        raise UserError("evaluating a pretrained teacher needs teacher.hf=DIR or teacher.gguf=FILE")
    kind, path = source
    t0 = time.perf_counter()
    device = resolve_device(cfg.engine.device)
    model = load_language_model_teacher(cfg.data, kind, path).to(device)
    splits = splits if splits is not None else load_splits(cfg.data)
    evaluator = TokenEvaluator(
        {"val": splits.val, "test": splits.test},
        None,
        cfg.data.eval_batch_size,
        device,
        resolve_precision(cfg.engine.precision, device),
    )
    final = {**(evaluator(model, "val") if splits.val is not None else {}), **evaluator(model, "test")}
    counts = lm_parameter_counts(model)
    return {
        "model": Path(path).name,
        "kind": kind,
        "path": str(path),
        "weights_digest": weights_digest(path),
        "num_params": counts["total"],
        "non_embedding_params": counts["non_embedding"],
        "embedding_params": counts["embedding"],
        "final": final,
        "wall_time_s": time.perf_counter() - t0,
    }
