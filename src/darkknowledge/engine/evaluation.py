"""Evaluating the student during training: accuracy, NLL and calibration on the
validation or test split, with agreement and rank fidelity to the teacher signal."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from darkknowledge.data.base import ArrayDataset
from darkknowledge.data.loaders import evaluation_batches
from darkknowledge.engine.metrics import ClassificationMeter, collect_logits
from darkknowledge.engine.teacher import TeacherSignal
from darkknowledge.errors import UserError


class Evaluator:
    """``evaluator(model, split) -> {"<split>/top1": ..., ...}`` for the splits it was given."""

    def __init__(
        self,
        datasets: dict[str, ArrayDataset | None],
        teacher: TeacherSignal | None,
        batch_size: int,
        device: torch.device,
        precision: str,
        channels_last: bool,
    ):
        self.datasets = {k: v for k, v in datasets.items() if v is not None}
        self.teacher = teacher
        self.batch_size, self.device, self.precision, self.channels_last = batch_size, device, precision, channels_last
        self._teacher_logits: dict[str, Tensor | None] = {}

    def _batches(self, split: str):
        return evaluation_batches(self.datasets[split], self.batch_size, self.device, self.channels_last)

    def __call__(self, model: nn.Module, split: str) -> dict[str, float]:
        logits, targets = collect_logits(model, self._batches(split), self.precision)
        if not bool(torch.isfinite(logits).all()):
            raise UserError(
                f"the model's outputs on the {split} split are non-finite: training diverged; "
                "lower optim.lr (nothing of this epoch was saved)"
            )
        meter = ClassificationMeter()
        meter.update(logits, targets)
        out = {f"{split}/{k}": v for k, v in meter.compute().items()}
        teacher_logits = self.teacher_logits(split)
        if teacher_logits is not None:
            out[f"{split}/teacher_agreement"] = (
                100.0 * logits.argmax(1).eq(teacher_logits.argmax(1)).float().mean().item()
            )
            if logits.shape[1] > 2:  # with one non-target class there is no ranking
                from darkknowledge.diagnostics.ranks import rank_fidelity

                out[f"{split}/rank_fidelity"] = float(rank_fidelity(logits, teacher_logits, targets))
        return out

    def teacher_logits(self, split: str) -> Tensor | None:
        """The teacher signal's logits on a split (asked once; None when it has none, e.g. a cache without them)."""
        if self.teacher is None:
            return None
        if split not in self._teacher_logits:
            self._teacher_logits[split] = self.teacher.eval_logits(self.datasets[split], self._batches(split))
        return self._teacher_logits[split]
