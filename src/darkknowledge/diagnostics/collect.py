"""Run a model over batches once and keep what the diagnostics need."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from darkknowledge.diagnostics.result import TeacherOutputs
from darkknowledge.errors import UserError


def collect_outputs(
    model: torch.nn.Module,
    batches: Iterable[Any],
    device: torch.device | str = "cpu",
    *,
    name: str | None = None,
    num_params: int | None = None,
    keep_features: bool = True,
    features_dtype: torch.dtype = torch.float32,
    num_classes: int | None = None,
    max_rows: int | None = None,
) -> TeacherOutputs:
    """Run ``model`` over ``batches`` once (eval mode, ``torch.inference_mode``) and keep
    its logits (float32, CPU), the targets and the penultimate features.

    ``model``: any ``nn.Module`` mapping the batches' ``.images`` (float, normalised) to
    ``(B, C)`` logits (``num_classes``: C, checked on every batch). Features are kept
    (``keep_features``) when the model splits into ``forward_features(x) -> (B, D)`` and
    ``classifier(features)`` like a darkknowledge model; otherwise there are none and
    the feature geometry is skipped. ``num_params`` defaults to the parameter count.

    Token batches (a language model: ``.inputs`` tokens, ``[B, T, V]`` logits, ``.mask``) give one
    row per predicted token, padding left out. ``max_rows``: stop after this many rows (the first
    ones, in batch order)."""
    forward_features: Any = getattr(model, "forward_features", None)
    classifier: Any = getattr(model, "classifier", None)
    split = callable(forward_features) and isinstance(classifier, torch.nn.Module)
    keep_features = keep_features and split
    label = name or type(model).__name__
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    logits_out, feats_out, targets_out = [], [], []
    try:
        with torch.inference_mode():
            rows = 0
            for batch in batches:
                x = (batch.inputs if hasattr(batch, "inputs") else batch.images).to(dev, non_blocking=True)
                if split:
                    f = forward_features(x)
                    z = classifier(f)
                else:
                    z = model(x)
                targets = torch.as_tensor(batch.targets)
                if isinstance(z, torch.Tensor) and z.dim() == 3:  # tokens: one row per predicted token
                    mask = batch.mask.to(z.device)
                    z, targets = z[mask], targets[mask.to(targets.device)]
                    if split:
                        f = f[mask.to(f.device)]
                if not isinstance(z, torch.Tensor) or z.dim() != 2 or (num_classes and z.shape[1] != num_classes):
                    shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                    raise UserError(
                        f"model {label!r} returns {shape}, expected (batch, {num_classes or 'classes'}) "
                        "logits; give a model for these classes or wrap it in TeacherAdapter"
                    )
                take = z.shape[0] if max_rows is None else min(z.shape[0], max_rows - rows)
                logits_out.append(z[:take].float().cpu())
                if keep_features:
                    feats_out.append(f[:take].reshape(take, -1).to(features_dtype).cpu())
                targets_out.append(targets[:take].long().cpu())
                rows += take
                if max_rows is not None and rows >= max_rows:
                    break
    finally:
        model.train(was_training)
    if not logits_out:
        raise UserError("no batches to evaluate the model on")
    if num_params is None:
        num_params = sum(p.numel() for p in model.parameters())
    return TeacherOutputs(
        name=label,
        num_params=num_params,
        logits=torch.cat(logits_out),
        targets=torch.cat(targets_out),
        features=torch.cat(feats_out) if keep_features else None,
    )
