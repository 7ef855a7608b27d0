"""Batched augmentation on the training device.

A batch of uint8 images is cropped (zero padding ``pad`` on each side, then a random
``H x W`` window) and optionally flipped in ONE gather: the flip is folded into the
column index, so there is no per-sample Python and no extra pass. Normalisation is one
fused multiply-add into float.

Augmentations are described by explicit integer parameters ``(dy, dx, flip)`` per
sample. The random path samples them from a seeded generator; the teacher-output
cache (:mod:`darkknowledge.engine.cache`) stores them per (sample, view) and replays
exactly those views, so a cached teacher logit always belongs to the image the student
sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from darkknowledge.data.base import AugmentSpec


def sample_augment_params(n: int, spec: AugmentSpec, generator: torch.Generator) -> Tensor:
    """(n, 3) int64 tensor of (dy, dx, flip) drawn uniformly: dy, dx in [0, 2*pad]."""
    offsets = torch.randint(0, 2 * spec.pad + 1, (n, 2), generator=generator)
    if spec.flip:
        flips = torch.randint(0, 2, (n, 1), generator=generator)
    else:
        flips = torch.zeros(n, 1, dtype=torch.int64)
    return torch.cat([offsets, flips], dim=1)


def identity_params(n: int, spec: AugmentSpec) -> Tensor:
    """Parameters of the un-augmented view (centre crop, no flip)."""
    params = torch.zeros(n, 3, dtype=torch.int64)
    params[:, :2] = spec.pad
    return params


def apply_augment(images: Tensor, params: Tensor, pad: int) -> Tensor:
    """Crop-with-padding and flip a uint8 batch (B, C, H, W) by ``params`` (B, 3)."""
    if pad == 0 and params.device.type == "cpu" and not bool(params[:, 2].any()):  # (no device sync)
        return images
    b, c, h, w = images.shape
    device = images.device
    params = params.to(device)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    ar_h = torch.arange(h, device=device)
    ar_w = torch.arange(w, device=device)
    rows = params[:, 0:1] + ar_h  # (B, H)
    flip = params[:, 2:3].bool()
    cols = params[:, 1:2] + torch.where(flip, (w - 1) - ar_w, ar_w)  # (B, W)
    bidx = torch.arange(b, device=device).view(b, 1, 1, 1)
    cidx = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[bidx, cidx, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class Normalizer:
    """uint8 (B, C, H, W) -> float32 normalised, optionally channels_last."""

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str, channels_last: bool
    ):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.channels_last = channels_last

    def __call__(self, images: Tensor) -> Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.to(dtype=torch.float32, memory_format=memory_format)
        return torch.addcmul(self.shift, x, self.scale)
