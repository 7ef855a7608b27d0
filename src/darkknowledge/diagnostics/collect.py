"""Run a model over batches once and keep what the diagnostics need."""

from __future__ import annotations

from typing import Any, Iterable

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
) -> TeacherOutputs:
    """Run ``model`` over ``batches`` once (eval mode, ``torch.inference_mode``) and keep
    its logits (float32, CPU), the targets and, if ``keep_features``, the penultimate
    features. Contract: ``model.forward_features(x) -> (B, D)`` and
    ``model.classifier(features) -> (B, C)``; each batch has ``.images`` (float,
    normalised) and ``.targets``. ``num_params`` defaults to the model's parameter count."""
    if not hasattr(model, "forward_features") or not hasattr(model, "classifier"):
        raise UserError(
            f"model {type(model).__name__} lacks forward_features()/classifier; diagnostics need a "
            "darkknowledge model (features -> classifier split)"
        )
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    logits_out, feats_out, targets_out = [], [], []
    try:
        with torch.inference_mode():
            for batch in batches:
                x = batch.images.to(dev, non_blocking=True)
                f = model.forward_features(x)
                z = model.classifier(f)
                logits_out.append(z.float().cpu())
                if keep_features:
                    feats_out.append(f.reshape(f.shape[0], -1).to(features_dtype).cpu())
                targets_out.append(torch.as_tensor(batch.targets).long().cpu())
    finally:
        model.train(was_training)
    if not logits_out:
        raise UserError("no batches to evaluate the model on")
    if num_params is None:
        num_params = sum(p.numel() for p in model.parameters())
    return TeacherOutputs(
        name=name or type(model).__name__,
        num_params=num_params,
        logits=torch.cat(logits_out),
        targets=torch.cat(targets_out),
        features=torch.cat(feats_out) if keep_features else None,
    )
