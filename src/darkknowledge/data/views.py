"""Views of full-resolution images: augmentation *parameters*, not RNG seeds.

A view is one float32 row ``[x0, y0, w, h, flip]``: the crop box as fractions of the
original image (``x0``, ``w`` of its width; ``y0``, ``h`` of its height) and a
horizontal-flip bit applied after the crop. Because the box is relative to the
original image, replaying a stored view gives the same crop whatever resolution the
file is decoded at (a DCT-domain ``draft()`` downscale, or a re-encoded copy of the
dataset).

* :func:`sample_crop_views` draws RandomResizedCrop views (area fraction ``scale``,
  aspect ratio ``ratio`` log-uniform, up to 10 tries, else the centre crop clamped to
  the ratio range) from a ``torch.Generator``, vectorised over images and views.
* :func:`center_view` is the evaluation view: resize the shorter side to
  ``resize_size``, take the centre ``crop_size`` square - as one box.
* :func:`apply_view` crops, resizes and flips a Pillow image to uint8 ``(H, W, 3)``,
  decoding a JPEG at the smallest ``1/2^k`` scale that still leaves the box at least
  the output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "ATTEMPTS",
    "VIEW_DIM",
    "UNIFORMS_PER_VIEW",
    "apply_view",
    "center_view",
    "center_views",
    "crop_views_from_uniforms",
    "identity_view",
    "sample_crop_views",
    "view_box",
]

VIEW_DIM = 5  # x0, y0, w, h, flip
ATTEMPTS = 10
UNIFORMS_PER_VIEW = 4 * ATTEMPTS + 1  # (area, log-ratio, top, left) per attempt + flip
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def crop_views_from_uniforms(
    widths: np.ndarray | float,
    heights: np.ndarray | float,
    uniforms: np.ndarray,
    *,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
    flip: bool = True,
) -> np.ndarray:
    """RandomResizedCrop views from uniforms in [0, 1): ``uniforms`` (..., UNIFORMS_PER_VIEW),
    ``widths``/``heights`` broadcastable to ``uniforms.shape[:-1]``; float32 (..., 5).

    Each attempt draws an area fraction in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; the first attempt whose rounded box fits the image wins and its top-left
    corner is uniform over the valid integer positions. If none fits, the whole image
    clamped to the ratio range, centred.
    """
    u = np.asarray(uniforms, dtype=np.float64)
    shape = u.shape[:-1]
    if u.shape[-1] != UNIFORMS_PER_VIEW:
        raise ValueError(f"need {UNIFORMS_PER_VIEW} uniforms per view, got {u.shape[-1]}")
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"scale {scale} and ratio {ratio} must be increasing positive ranges")
    width = np.broadcast_to(np.asarray(widths, dtype=np.float64), shape)[..., None]
    height = np.broadcast_to(np.asarray(heights, dtype=np.float64), shape)[..., None]
    tries = u[..., : 4 * ATTEMPTS].reshape(*shape, ATTEMPTS, 4)
    area = width * height * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = np.floor(tries[..., 2] * (height - h + 1))
    left = np.floor(tries[..., 3] * (width - w + 1))
    first = np.argmax(fits, axis=-1)[..., None]
    found = np.take_along_axis(fits, first, -1)[..., 0]

    # fallback: centre crop of the whole image, clamped to the ratio range
    wf, hf = width[..., 0], height[..., 0]
    in_ratio = wf / hf
    fw = np.where(in_ratio < ratio[0], wf, np.where(in_ratio > ratio[1], np.round(hf * ratio[1]), wf))
    fh = np.where(in_ratio < ratio[0], np.round(wf / ratio[0]), hf)
    fw, fh = np.minimum(fw, wf), np.minimum(fh, hf)
    ftop, fleft = np.floor((hf - fh) / 2), np.floor((wf - fw) / 2)

    def pick(a: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        return np.where(found, np.take_along_axis(a, first, -1)[..., 0], fallback)

    out = np.empty((*shape, VIEW_DIM), dtype=np.float32)
    out[..., 0] = pick(left, fleft) / wf
    out[..., 1] = pick(top, ftop) / hf
    out[..., 2] = pick(w, fw) / wf
    out[..., 3] = pick(h, fh) / hf
    out[..., 4] = (u[..., -1] < 0.5) if flip else 0.0
    return out


def sample_crop_views(
    sizes: Tensor | np.ndarray | Sequence[Sequence[int]],
    k: int,
    generator: torch.Generator,
    *,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
    flip: bool = True,
) -> Tensor:
    """``k`` RandomResizedCrop views of each image: float32 (n, k, 5); ``sizes`` (n, 2) = (width, height)
    of the original images."""
    wh = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    u = torch.rand((len(wh), k, UNIFORMS_PER_VIEW), generator=generator, dtype=torch.float64).numpy()
    views = crop_views_from_uniforms(wh[:, None, 0], wh[:, None, 1], u, scale=scale, ratio=ratio, flip=flip)
    return torch.from_numpy(views)


def center_view(width: int, height: int, resize_size: int = 256, crop_size: int = 224) -> Tensor:
    """The evaluation view: shorter side resized to ``resize_size``, centre ``crop_size`` square (float32 (5,))."""
    return center_views([(width, height)], resize_size, crop_size)[0]


def center_views(
    sizes: Tensor | np.ndarray | Sequence[Sequence[int]], resize_size: int = 256, crop_size: int = 224
) -> Tensor:
    """:func:`center_view` of each (width, height) in ``sizes``: float32 (n, 5)."""
    wh = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    short = np.minimum(wh[:, 0], wh[:, 1])
    # the resized image: shorter side resize_size, longer side truncated as torchvision's Resize does
    rw = np.where(wh[:, 0] <= wh[:, 1], resize_size, np.floor(resize_size * wh[:, 0] / short))
    rh = np.where(wh[:, 1] < wh[:, 0], resize_size, np.floor(resize_size * wh[:, 1] / short))
    cw, ch = np.minimum(crop_size, rw), np.minimum(crop_size, rh)
    out = np.zeros((len(wh), VIEW_DIM), dtype=np.float32)
    out[:, 0] = np.round((rw - cw) / 2) / rw
    out[:, 1] = np.round((rh - ch) / 2) / rh
    out[:, 2] = cw / rw
    out[:, 3] = ch / rh
    return torch.from_numpy(out)


def identity_view() -> Tensor:
    """The whole image, unflipped."""
    return torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])


def view_box(view: Sequence[float] | np.ndarray | Tensor, width: int, height: int) -> tuple[float, float, float, float]:
    """The view's crop box (left, top, right, bottom) in pixels of a ``width`` x ``height`` image."""
    x0, y0, w, h = (float(v) for v in list(view)[:4])
    return x0 * width, y0 * height, (x0 + w) * width, (y0 + h) * height


def apply_view(
    image: Image.Image,
    view: Sequence[float] | np.ndarray | Tensor,
    out_size: tuple[int, int],
    *,
    draft: bool = True,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> np.ndarray:
    """Crop ``image`` (opened, not yet loaded) to ``view``, resize to ``out_size`` = (height, width)
    and flip: uint8 (height, width, 3), C-contiguous.

    With ``draft`` a JPEG is decoded at the smallest ``1/2^k`` scale (DCT domain) at which the
    box still covers at least ``out_size`` pixels; the box is mapped by the scale actually used,
    so the crop is the same region of the picture at every decode scale.
    """
    v = [float(x) for x in list(view)[:VIEW_DIM]]
    out_h, out_w = out_size
    width, height = image.size
    s = 1.0  # decode scale: pixel i of the decoded image covers original pixels [i*s, (i+1)*s)
    if draft and image.format == "JPEG":
        reduce = min(v[2] * width / out_w, v[3] * height / out_h)
        if reduce >= 2:
            drafted = image.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
            if drafted is not None:
                s = width / drafted[1][2]
    dw, dh = image.size
    sx, sy = (s, s) if s != 1.0 else (width / dw, height / dh)
    left, top, right, bottom = view_box(v, width, height)
    # float32 views of whole-pixel boxes land within ~1e-4 px of an integer: snap them back exactly
    box = tuple(
        float(round(c)) if abs(c - round(c)) < 1e-3 else c
        for c in (left / sx, top / sy, min(right / sx, dw), min(bottom / sy, dh))
    )
    # crop to the enclosing whole pixels first, so the filter never reads outside the box (as crop-then-resize)
    outer = (math.floor(box[0] + 1e-6), math.floor(box[1] + 1e-6), math.ceil(box[2] - 1e-6), math.ceil(box[3] - 1e-6))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    cw, ch = outer[2] - outer[0], outer[3] - outer[1]
    inner = (
        max(0.0, box[0] - outer[0]),
        max(0.0, box[1] - outer[1]),
        min(float(cw), box[2] - outer[0]),
        min(float(ch), box[3] - outer[1]),
    )
    out = image.crop(outer).resize((out_w, out_h), resample, box=inner)
    if v[4] >= 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if out.mode != "RGB":
        out = out.convert("RGB")
    return np.asarray(out, dtype=np.uint8)
