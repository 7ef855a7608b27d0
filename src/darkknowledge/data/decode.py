"""Decode image files with Pillow into one in-memory uint8 ``(N, 3, H, W)`` tensor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from darkknowledge.data.transforms import normalize_size
from darkknowledge.errors import UserError

_DECODE_CHUNK = 4096


def _decode_one(path: Path, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    try:
        with Image.open(path) as source:
            source.draft("RGB", (w, h))  # JPEG only: decode at the smallest 1/2^k scale still >= (w, h)
            im = source.convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path}: {e}; delete or replace the file") from None
    return arr.transpose(2, 0, 1)


def decode_images(paths: Sequence[str | Path], size: int | Sequence[int], *, workers: int | None = None) -> Tensor:
    """Decode ``paths`` with Pillow into one uint8 ``(N, 3, H, W)`` tensor of ``size``.

    RGB conversion, then an antialiased resize of the whole image to ``(H, W)``.
    Decoding runs in ``workers`` threads (default: the number of CPUs); a file
    that cannot be decoded raises :class:`UserError` naming it.
    """
    h, w = normalize_size(size)
    out = np.empty((len(paths), 3, h, w), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode_one(Path(paths[i]), (h, w))

    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(paths) < 2:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(paths), _DECODE_CHUNK):
                # list() re-raises the first worker exception (e.g. the UserError above)
                list(pool.map(work, range(start, min(start + _DECODE_CHUNK, len(paths)))))
    return torch.from_numpy(out)
