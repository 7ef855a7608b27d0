"""Decode one image file straight to a view: Pillow (JPEG ``draft()``: a DCT-domain
downscale) or simplejpeg (libjpeg-turbo's scaled decode) where installed.

A decoder is ``decode(data, view_of, out_size) -> (pixels, view)``: ``data`` the file's
bytes, ``view_of(width, height)`` returns the view (float32 (5,)) for an image of that
original size, ``pixels`` uint8 (height, width, 3). Anything that is not a readable
image raises :class:`BadImage`; grayscale, palette, CMYK and PNG content (whatever the
file's extension) are decoded and converted to RGB.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from darkknowledge.data.views import apply_view, view_box
from darkknowledge.errors import UserError

__all__ = ["DECODERS", "BadImage", "decode_pil", "decode_simplejpeg", "get_decoder", "have_simplejpeg"]

ViewOf = Callable[[int, int], np.ndarray]


class BadImage(Exception):
    """The bytes are not a readable image (truncated, empty, unknown format)."""


_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError)


def _open(data: bytes) -> Image.Image:
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except _PIL_ERRORS as e:
        raise BadImage(str(e) or type(e).__name__) from None


def decode_pil(data: bytes, view_of: ViewOf, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    image = _open(data)
    view = view_of(*image.size)
    try:
        return apply_view(image, view, out_size), view
    except _PIL_ERRORS as e:
        raise BadImage(str(e) or type(e).__name__) from None


def have_simplejpeg() -> bool:
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


def decode_simplejpeg(data: bytes, view_of: ViewOf, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg-turbo decodes at the smallest n/8 scale that keeps the box >= ``out_size``; Pillow crops,
    resizes and flips. Not-JPEG or CMYK content goes through :func:`decode_pil`."""
    import simplejpeg

    if not data.startswith(b"\xff\xd8"):
        return decode_pil(data, view_of, out_size)
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return decode_pil(data, view_of, out_size)  # Pillow gives the error message
    if colorspace not in ("YCbCr", "Gray"):
        return decode_pil(data, view_of, out_size)
    view = view_of(width, height)
    out_h, out_w = out_size
    left, top, right, bottom = view_box(view, width, height)
    min_w = math.ceil(out_w * width / max(right - left, 1e-6))
    min_h = math.ceil(out_h * height / max(bottom - top, 1e-6))
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=min(min_w, width), min_height=min(min_h, height)
        )
    except ValueError as e:
        raise BadImage(str(e)) from None
    image = Image.fromarray(pixels)
    scaled = view.copy()  # the box is relative to the picture, so it applies unchanged to the scaled decode
    return apply_view(image, scaled, out_size, draft=False), view


DECODERS: dict[str, Callable[[bytes, ViewOf, tuple[int, int]], tuple[np.ndarray, np.ndarray]]] = {
    "pil": decode_pil,
    "simplejpeg": decode_simplejpeg,
}


def get_decoder(name: str) -> str:
    """The decoder ``name`` resolves to here: ``auto`` -> simplejpeg where installed, else pil."""
    if name == "auto":
        return "simplejpeg" if have_simplejpeg() else "pil"
    if name not in DECODERS:
        raise UserError(f"data.decoder={name!r} is not one of auto, {', '.join(DECODERS)}")
    if name == "simplejpeg" and not have_simplejpeg():
        raise UserError("data.decoder=simplejpeg but simplejpeg is not installed; pip install simplejpeg, or use pil")
    return name
