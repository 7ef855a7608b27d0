"""The teacher signal: one seam, live teacher or cached outputs.

The trainer and the methods only ever call ``signal(batch) -> logits`` (float32,
``(B, C)``, no autograd history). :class:`LiveTeacher` runs a frozen model in eval
mode under ``torch.inference_mode``; :class:`darkknowledge.engine.cache.CachedTeacher`
replays stored outputs for the exact augmentation views the loader produced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from darkknowledge.data.loader import Batch
from darkknowledge.engine.metrics import autocast


class TeacherSignal:
    """Interface: ``__call__(batch) -> float32 logits``; ``num_classes``; ``describe()``."""

    num_classes: int

    def __call__(self, batch: Batch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": type(self).__name__}


class LiveTeacher(TeacherSignal):
    """A frozen teacher model evaluated on every batch."""

    def __init__(self, model: nn.Module, *, precision: str = "bf16", channels_last: bool = True, name: str = "teacher"):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.precision = precision
        self.name = name
        self.num_classes = int(model.classifier.out_features)

    def __call__(self, batch: Batch) -> Tensor:
        self.model.eval()  # guard: nothing may switch the teacher to train mode
        with torch.inference_mode(), autocast(batch.images.device, self.precision):
            logits = self.model(batch.images)
        # clone outside inference mode: a normal tensor that autograd may save for backward
        return logits.float().clone()

    def describe(self) -> dict[str, Any]:
        return {"kind": "live", "name": self.name, "precision": self.precision}
