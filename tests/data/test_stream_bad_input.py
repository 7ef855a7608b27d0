"""Bad input on the streaming path: one-line UserError naming the file, or skip-and-count."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from darkknowledge.data import sources
from darkknowledge.data.jpeg import have_simplejpeg
from darkknowledge.data.streaming import StreamingLoader, build_splits
from darkknowledge.errors import UserError


def _all(loader, epoch=0):
    return list(loader.epoch(epoch))


def _damage(folder, kind):
    """Replace train/c1/002.JPEG with a damaged file; return its path."""
    path = folder / "train" / "c1" / "002.JPEG"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 3], "empty": b"", "garbage": b"not an image at all"}[kind])
    return path


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_is_a_one_line_error_naming_the_file(stream_folders, stream_helpers, kind, workers):
    path = _damage(stream_folders, kind)
    train, _, _ = build_splits(stream_helpers.stream_config(stream_folders))
    loader = StreamingLoader(train, 8, train=True, drop_last=False, workers=workers)
    with pytest.raises(UserError) as err:
        _all(loader)
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "data.bad_files=skip" in message


@pytest.mark.parametrize("kind", ["truncated", "empty"])
def test_bad_image_is_skipped_and_counted(stream_folders, stream_helpers, kind):
    path = _damage(stream_folders, kind)
    train, _, test = build_splits(stream_helpers.stream_config(stream_folders, bad_files="skip"))
    loader = StreamingLoader(train, 8, train=True, drop_last=False, workers=2)
    batches = _all(loader)
    rows = torch.cat([b.indices for b in batches])
    assert len(rows) == 29 and len(loader.skipped) == 1 and str(path) in loader.skipped[0]
    bad_row = next(i for i in range(len(train)) if train.describe(i) == str(path))
    assert bad_row not in rows.tolist()
    for b in batches:  # the remaining samples keep their labels and views
        assert torch.equal(b.targets, train.targets[b.indices]) and len(b.aug_params) == len(b)
    _all(loader, 1)
    assert len(loader.skipped) == 1  # counted once per file, not per epoch


def test_png_cmyk_and_grayscale_named_jpeg_are_decoded(stream_folders, stream_helpers):
    folder = stream_folders / "train" / "c0"
    colour = stream_helpers.smooth_image(64, 48, 5)
    buf = io.BytesIO()
    colour.save(buf, "PNG")
    (folder / "000.JPEG").write_bytes(buf.getvalue())  # a PNG named .JPEG (ImageNet's train split has one)
    buf = io.BytesIO()
    colour.convert("CMYK").save(buf, "JPEG", quality=95)  # CMYK JPEG (22 in ImageNet's train split)
    (folder / "001.JPEG").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(np.full((50, 60), 90, dtype=np.uint8)).save(buf, "JPEG")
    (folder / "002.JPEG").write_bytes(buf.getvalue())
    decoders = ["pil"] + (["simplejpeg"] if have_simplejpeg() else [])
    for decoder in decoders:
        cfg = stream_helpers.stream_config(stream_folders, decoder=decoder, crop_size=16, resize_size=16)
        train, _, _ = build_splits(cfg)
        rows = [
            i for i in range(len(train)) if train.describe(i).endswith(("c0/000.JPEG", "c0/001.JPEG", "c0/002.JPEG"))
        ]
        ds = train.subset(np.array(rows))
        loader = StreamingLoader(ds, 3, train=False, workers=0)
        (batch,) = _all(loader)
        assert batch.images.shape == (3, 3, 16, 16) and not loader.skipped
        pixels = ds[_eval_work(rows)]["images"]
        png, cmyk, gray = (pixels[i].float() for i in range(3))
        want = torch.from_numpy(np.array(colour.resize((16, 16), Image.Resampling.BILINEAR))).float()
        assert (png - want).abs().mean() < 12 and (cmyk - want).abs().mean() < 12
        assert torch.equal(gray[..., 0], gray[..., 1]) and abs(float(gray.mean()) - 90) < 2


def _eval_work(rows):
    from darkknowledge.data.streaming import _Work

    return _Work(np.arange(len(rows)), np.tile(np.array([0, 0, 1, 1, 0], dtype=np.float32), (len(rows), 1)), -1, 0)


def test_empty_class_folder(stream_folders, stream_helpers):
    empty = stream_folders / "train" / "c3"
    empty.mkdir()
    (stream_folders / "val" / "c3").mkdir()
    with pytest.raises(UserError, match=f"class folder {empty} contains no images"):
        build_splits(stream_helpers.stream_config(stream_folders))
    train, _, test = build_splits(stream_helpers.stream_config(stream_folders, bad_files="skip"))
    assert train.spec.num_classes == 4 and len(train) == 30  # the class keeps its id, with no images
    assert any(str(empty) in s for s in train.source.skipped)


def test_unreadable_directory(stream_folders, stream_helpers, monkeypatch):
    locked = stream_folders / "train" / "c2"
    real = os.scandir

    def scandir(path):
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    with pytest.raises(UserError, match=f"cannot read directory {locked}"):
        build_splits(stream_helpers.stream_config(stream_folders))
    train, _, _ = build_splits(stream_helpers.stream_config(stream_folders, bad_files="skip"))
    assert len(train) == 20 and any(str(locked) in s for s in train.source.skipped)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")
def test_unreadable_directory_for_real(stream_folders, stream_helpers):
    locked = stream_folders / "train" / "c2"
    locked.chmod(0)
    try:
        with pytest.raises(UserError, match="permission denied"):
            build_splits(stream_helpers.stream_config(stream_folders))
    finally:
        locked.chmod(0o755)


def test_shard_member_without_label_and_bad_label(tmp_path, stream_helpers):
    h = stream_helpers
    good = [(f"k{k}.jpg", h.jpeg_bytes(40, 40, k)) for k in range(3)] + [(f"k{k}.cls", b"1") for k in range(3)]
    for split in ("train", "val"):
        h.write_shard(tmp_path / "s" / split / "a-000000.tar", good + [("nolabel.jpg", h.jpeg_bytes(40, 40, 9))])
    cfg = h.stream_config(tmp_path / "s", name="webdataset")
    with pytest.raises(UserError, match=r"a-000000.tar:nolabel has no label \(nolabel.cls\)"):
        build_splits(cfg)
    train, _, test = build_splits(h.stream_config(tmp_path / "s", name="webdataset", bad_files="skip"))
    assert len(train) == 3 and len(test) == 3 and len(train.source.skipped) == 1
    h.write_shard(tmp_path / "t" / "train" / "a.tar", [("x.jpg", h.jpeg_bytes(40, 40, 1)), ("x.cls", b"cat")])
    with pytest.raises(UserError, match="a.tar:x.cls is 'cat', not a class id"):
        build_splits(h.stream_config(tmp_path / "t", name="webdataset"))
    (tmp_path / "u" / "train").mkdir(parents=True)
    (tmp_path / "u" / "train" / "broken.tar").write_bytes(b"\0" * 100 + b"junk")
    with pytest.raises(UserError, match="broken.tar"):
        build_splits(h.stream_config(tmp_path / "u", name="webdataset"))


def test_bad_member_bytes_in_a_shard(tmp_path, stream_helpers):
    h = stream_helpers
    members = [
        ("a.jpg", h.jpeg_bytes(40, 40, 1)[:200]),
        ("a.cls", b"0"),
        ("b.jpg", h.jpeg_bytes(40, 40, 2)),
        ("b.cls", b"1"),
    ]
    for split in ("train", "val"):
        h.write_shard(tmp_path / split / "x.tar", members)
    train, _, _ = build_splits(h.stream_config(tmp_path, name="webdataset"))
    with pytest.raises(UserError, match=r"x.tar:a"):
        _all(StreamingLoader(train, 2, train=False, workers=0))
    train, _, _ = build_splits(h.stream_config(tmp_path, name="webdataset", bad_files="skip"))
    loader = StreamingLoader(train, 2, train=False, workers=0)
    assert sum(len(b) for b in _all(loader)) == 1 and len(loader.skipped) == 1


def test_settings_are_checked(stream_folders, stream_helpers):
    with pytest.raises(UserError, match="crop_size"):
        build_splits(stream_helpers.stream_config(stream_folders, crop_size=64, resize_size=32))
    with pytest.raises(UserError, match="bad_files"):
        build_splits(stream_helpers.stream_config(stream_folders, bad_files="ignore"))
    with pytest.raises(UserError, match="not a folder"):
        build_splits(stream_helpers.stream_config(stream_folders / "nowhere"))
    with pytest.raises(UserError, match="unknown streaming dataset"):
        build_splits(stream_helpers.stream_config(stream_folders, name="cifar10"))
