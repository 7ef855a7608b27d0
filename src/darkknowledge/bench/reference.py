"""A reference training loop written the way mdistiller / RepDistiller train.

This is the *baseline* the bench compares against, so it deliberately keeps their
structure (our own implementation of it; no code copied):

* a ``torch.utils.data.Dataset`` holding HWC uint8 numpy images and applying a
  per-sample random crop (zero padding 4) + horizontal flip + ``ToTensor`` +
  ``Normalize`` in Python, batched by a ``DataLoader`` with 2 worker processes;
* fp32 everywhere, contiguous (NCHW) memory format;
* the teacher's forward on every step under ``torch.no_grad()``, in eval mode;
* Hinton KD loss (``kd_loss``), SGD with momentum;
* on a GPU (``device="cuda"``), each batch copied to the device as those repositories do
  (``.cuda()`` of a pageable CPU tensor), models on the device.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from darkknowledge.data.base import ArrayDataset
from darkknowledge.methods.kd import kd_loss


class PerSampleAugmentDataset(Dataset):
    """Per-sample numpy augmentation, like torchvision's RandomCrop/Flip/ToTensor/Normalize."""

    def __init__(self, ds: ArrayDataset, train: bool = True):
        self.images = ds.images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, like CIFAR's .data
        self.targets = ds.targets.numpy()
        self.pad = ds.spec.augment.pad
        self.flip = ds.spec.augment.flip
        self.mean = np.asarray(ds.spec.mean, dtype=np.float32)
        self.std = np.asarray(ds.spec.std, dtype=np.float32)
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.train:
            h, w, _ = img.shape
            p = self.pad
            padded = np.pad(img, ((p, p), (p, p), (0, 0)))
            dy, dx = np.random.randint(0, 2 * p + 1, size=2)
            img = padded[dy : dy + h, dx : dx + w]
            if self.flip and np.random.rand() < 0.5:
                img = img[:, ::-1]
        x = (img.astype(np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), int(self.targets[i])


def _worker_init(worker_id: int) -> None:
    np.random.seed((torch.initial_seed() + worker_id) % 2**32)


def reference_loader(
    ds: ArrayDataset, batch_size: int, workers: int = 2, seed: int = 0, train: bool = True
) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        PerSampleAugmentDataset(ds, train=train),
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=workers,
        worker_init_fn=_worker_init,
        generator=g,
        persistent_workers=workers > 0,
    )


class ReferenceKDLoop:
    """KD training the mdistiller way. ``run(steps)`` returns images/s of those steps."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        loader: DataLoader,
        *,
        lr: float = 0.05,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.student = student.to(self.device)
        self.teacher = teacher.to(self.device) if teacher is not None else None
        self.loader = loader
        self.optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight
        self._it: Iterator | None = None

    def _next(self):
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            it = self._it = iter(self.loader)
            return next(it)

    def step(self) -> int:
        x, y = self._next()
        x, y = x.to(self.device), y.to(self.device)
        self.student.train()
        logits = self.student(x)
        if self.teacher is not None:
            self.teacher.eval()
            with torch.no_grad():
                t_logits = self.teacher(x)
            terms = kd_loss(
                logits,
                t_logits,
                y,
                temperature=self.temperature,
                ce_weight=self.ce_weight,
                kd_weight=self.kd_weight,
                logit_standardization=False,
            )
            loss = terms["ce"] + terms["kd"]
        else:
            loss = nn.functional.cross_entropy(logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return int(y.shape[0])

    def train_epoch(self) -> None:
        for _ in range(len(self.loader)):
            self.step()

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        n = sum(self.step() for _ in range(steps))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return n / (time.perf_counter() - t0)
