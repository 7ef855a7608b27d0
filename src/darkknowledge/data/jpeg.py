"""Decode one image file straight to a view: Pillow (JPEG ``draft()``: a DCT-domain
downscale) or simplejpeg (libjpeg-turbo's scaled decode) where installed.

A decoder works in two steps, so that a worker can read every header of a batch, compute
all views at once and then decode: ``probe(data) -> Probed`` (the file's bytes -> its
original width and height, nothing decoded) and ``decode(probed, view, out_size)`` ->
uint8 (height, width, 3). Anything that is not a readable image raises :class:`BadImage`;
grayscale, palette, CMYK and PNG content (whatever the file's extension) are decoded and
converted to RGB.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from darkknowledge.data.views import apply_view, view_box
from darkknowledge.errors import UserError

__all__ = ["DECODERS", "BadImage", "Decoder", "Probed", "decode_one", "get_decoder", "have_simplejpeg"]


class BadImage(Exception):
    """The bytes are not a readable image (truncated, empty, unknown format)."""


_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError)


@dataclass
class Probed:
    """A file whose header was read: original ``width`` x ``height``; ``handle`` is the decoder's state."""

    width: int
    height: int
    handle: Any
    pil: bool  # decoded by Pillow (also simplejpeg's fallback for non-JPEG or CMYK content)


def _probe_pil(data: bytes) -> Probed:
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except _PIL_ERRORS as e:
        raise BadImage(str(e) or type(e).__name__) from None
    return Probed(image.width, image.height, image, True)


def _decode_pil(probed: Probed, view: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    try:
        return apply_view(probed.handle, view, out_size)
    except _PIL_ERRORS as e:
        raise BadImage(str(e) or type(e).__name__) from None


def have_simplejpeg() -> bool:
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _probe_simplejpeg(data: bytes) -> Probed:
    import simplejpeg

    if not data.startswith(b"\xff\xd8"):
        return _probe_pil(data)
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return _probe_pil(data)  # Pillow says what is wrong
    if colorspace not in ("YCbCr", "Gray"):
        return _probe_pil(data)
    return Probed(width, height, data, False)


def _decode_simplejpeg(probed: Probed, view: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """libjpeg-turbo decodes at the smallest n/8 scale that keeps the box >= ``out_size``; Pillow crops,
    resizes and flips (the box is relative to the picture, so it applies unchanged to the scaled decode)."""
    if probed.pil:
        return _decode_pil(probed, view, out_size)
    import simplejpeg

    width, height = probed.width, probed.height
    out_h, out_w = out_size
    left, top, right, bottom = view_box(view, width, height)
    min_w = math.ceil(out_w * width / max(right - left, 1e-6))
    min_h = math.ceil(out_h * height / max(bottom - top, 1e-6))
    try:
        pixels = simplejpeg.decode_jpeg(
            probed.handle, colorspace="RGB", min_width=min(min_w, width), min_height=min(min_h, height)
        )
    except ValueError as e:
        raise BadImage(str(e)) from None
    return apply_view(Image.fromarray(pixels), view, out_size, draft=False)


@dataclass(frozen=True)
class Decoder:
    probe: Callable[[bytes], Probed]
    decode: Callable[[Probed, np.ndarray, tuple[int, int]], np.ndarray]


DECODERS: dict[str, Decoder] = {
    "pil": Decoder(_probe_pil, _decode_pil),
    "simplejpeg": Decoder(_probe_simplejpeg, _decode_simplejpeg),
}


def decode_one(
    decoder: str, data: bytes, view_of: Callable[[int, int], np.ndarray], out_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One file: ``view_of(width, height)`` gives its view; returns (pixels, view)."""
    d = DECODERS[decoder]
    probed = d.probe(data)
    view = np.asarray(view_of(probed.width, probed.height), dtype=np.float32)
    return d.decode(probed, view, out_size), view


def get_decoder(name: str) -> str:
    """The decoder ``name`` resolves to here: ``auto`` -> simplejpeg where installed, else pil."""
    if name == "auto":
        return "simplejpeg" if have_simplejpeg() else "pil"
    if name not in DECODERS:
        raise UserError(f"data.decoder={name!r} is not one of auto, {', '.join(DECODERS)}")
    if name == "simplejpeg" and not have_simplejpeg():
        raise UserError("data.decoder=simplejpeg but simplejpeg is not installed; pip install simplejpeg, or use pil")
    return name
