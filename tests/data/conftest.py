"""Fixtures of the streaming data tests: small generated JPEG class folders and webdataset shards."""

from __future__ import annotations

import io
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def smooth_image(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random RGB picture (JPEG-friendly) of the given size."""
    rng = np.random.default_rng(seed)
    small = (rng.random((5, 7, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def jpeg_bytes(width: int, height: int, seed: int) -> bytes:
    buf = io.BytesIO()
    smooth_image(width, height, seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_class_folders(root: Path, per_class: dict[str, int], classes: int = 3, seed: int = 0) -> Path:
    """``root/<split>/c<k>/<i>.JPEG`` with ``per_class[split]`` images per class, sizes 40..140 px."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(40, 140, 2))
                (folder / f"{i:03d}.JPEG").write_bytes(jpeg_bytes(w, h, int(rng.integers(1 << 30))))
    return root


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of (name, bytes) members in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def stream_config(root: Path, name: str = "imagefolder", **changes) -> types.SimpleNamespace:
    """The data-section fields the streaming path reads, with small defaults."""
    cfg = dict(
        name=name,
        root=str(root),
        classes=None,
        train_per_class=None,
        test_per_class=None,
        val_per_class=None,
        subset_seed=0,
        crop_size=24,
        resize_size=28,
        decoder="pil",
        bad_files="error",
        workers=0,
    )
    cfg.update(changes)
    return types.SimpleNamespace(**cfg)


@pytest.fixture
def stream_folders(tmp_path) -> Path:
    """train: 3 classes x 10 JPEGs, val: 3 x 3."""
    return make_class_folders(tmp_path / "imgs", {"train": 10, "val": 3})


@pytest.fixture
def stream_helpers():
    """The generator functions above, for tests that build their own variants."""
    return types.SimpleNamespace(
        smooth_image=smooth_image,
        jpeg_bytes=jpeg_bytes,
        make_class_folders=make_class_folders,
        write_shard=write_shard,
        stream_config=stream_config,
    )
