"""Evaluation: top-1, top-5, NLL and expected calibration error, streamed over batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darkknowledge.engine.precision import autocast


class ClassificationMeter:
    """Accumulates top-1/top-5 accuracy (%), NLL (nats) and ECE (%, 15 bins) on device."""

    def __init__(self, num_bins: int = 15):
        self.num_bins = num_bins
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._sums: dict[str, Tensor] = {}
        self._bins: Tensor | None = None

    def _add(self, key: str, value: Tensor) -> None:
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor) -> None:
        logits = logits.float()
        log_p = F.log_softmax(logits, dim=-1)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=-1).indices
        correct = topk.eq(targets[:, None])
        self._add("top1", correct[:, 0].sum().double())
        self._add("top5", correct.any(dim=1).sum().double())
        self._add("nll", -log_p.gather(1, targets[:, None]).sum().double())
        conf, pred = log_p.max(dim=1)
        conf = conf.exp()
        bins = (conf * self.num_bins).long().clamp_(max=self.num_bins - 1)
        acc = pred.eq(targets).double()
        stats = torch.zeros(self.num_bins, 3, dtype=torch.float64, device=logits.device)
        stats.index_add_(0, bins, torch.stack([torch.ones_like(acc), conf.double(), acc], dim=1))
        self._bins = stats if self._bins is None else self._bins + stats
        self.n += int(targets.shape[0])

    def compute(self) -> dict[str, float]:
        b = self._bins
        if self.n == 0 or b is None:
            return {}
        s = {k: v.item() for k, v in self._sums.items()}
        ece = ((b[:, 1] - b[:, 2]).abs().sum() / self.n).item()
        return {
            "top1": 100.0 * s["top1"] / self.n,
            "top5": 100.0 * s["top5"] / self.n,
            "nll": s["nll"] / self.n,
            "ece": 100.0 * ece,
            "n": self.n,
        }


@torch.no_grad()
def collect_logits(model: nn.Module, batches: Iterable, precision: str = "fp32") -> tuple[Tensor, Tensor]:
    """Run ``model`` over batches (objects with .images/.targets); returns float32 logits and targets."""
    was_training = model.training
    model.eval()
    outs, ys = [], []
    with torch.inference_mode():
        for batch in batches:
            with autocast(batch.images.device, precision):
                logits = model(batch.images)
            outs.append(logits.float())
            ys.append(batch.targets)
    model.train(was_training)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, batches: Iterable, precision: str = "fp32") -> dict[str, float]:
    logits, targets = collect_logits(model, batches, precision)
    meter = ClassificationMeter()
    meter.update(logits, targets)
    return meter.compute()
