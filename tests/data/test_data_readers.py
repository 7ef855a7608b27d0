"""Dataset readers: tiny files in each official format, written into tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from darkknowledge.data import DATASETS, ArrayDataset, DataSpec, build_dataset
from darkknowledge.data import cifar as cifar_mod
from darkknowledge.data.download import Archive, download_and_extract, download_url, extract_archive, md5sum
from darkknowledge.data.folders import decode_images
from darkknowledge.data.mnist import read_idx
from darkknowledge.data.transforms import resize_images, select_indices, subsample_per_class, subset_classes
from darkknowledge.errors import UserError

# --------------------------------------------------------------------------- writers of official formats

C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_rows(n: int, offset: int) -> np.ndarray:
    """N x 3072 uint8 rows whose R plane is (offset + i), G plane 100, B plane 200 - easy to check."""
    rows = np.zeros((n, 3, 1024), dtype=np.uint8)
    rows[:, 0] = (offset + np.arange(n))[:, None] % 256
    rows[:, 1] = 100
    rows[:, 2] = 200
    return rows.reshape(n, 3072)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> Path:
    """cifar-10-batches-py with str keys, pickle protocol 2 (like the originals)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for b in range(1, 6):
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        batch = {
            "batch_label": f"training batch {b} of 5",
            "labels": labels,
            "data": _cifar_rows(per_batch, b * per_batch),
            "filenames": [f"f{b}_{i}.png" for i in range(per_batch)],
        }
        (d / f"data_batch_{b}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {
        "batch_label": "testing batch 1 of 1",
        "labels": [i % 10 for i in range(n_test)],
        "data": _cifar_rows(n_test, 0),
        "filenames": [f"t{i}.png" for i in range(n_test)],
    }
    (d / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {"label_names": C10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return d


def write_cifar100(root: Path) -> Path:
    """cifar-100-python with bytes keys (and bytes label names), pickle protocol 2."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for split, n in (("train", 12), ("test", 5)):
        fine = [(7 * i) % 100 for i in range(n)]
        obj = {
            b"filenames": [b"x.png"] * n,
            b"batch_label": b"b",
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": _cifar_rows(n, 10),
        }
        (d / split).write_bytes(pickle.dumps(obj, protocol=2))
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return d


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = {3: 2051, 1: 2049}[arr.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_mnist(root: Path, *, gz: bool, n_train: int = 7, n_test: int = 3) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            data = idx_bytes(arr)
            if gz:
                (root / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (root / stem).write_bytes(data)
    np.save(root / "_train_x.npy", rng.integers(0, 1, 1))  # noise file: ignored by the reader


def save_image(path: Path, color, size=(20, 12), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def write_imagefolder(root: Path, classes=("cat", "dog", "eel"), per_class=(3, 2, 4), n_val=2) -> None:
    for c, (name, n) in enumerate(zip(classes, per_class)):
        for i in range(n):
            ext = ".png" if i % 2 else ".jpg"
            save_image(root / "train" / name / f"img{i}{ext}", COLORS[c], size=(30 + i, 17))
        for i in range(n_val):
            save_image(root / "val" / name / f"v{i}.png", COLORS[c])
    (root / "train" / classes[0] / "notes.txt").write_text("not an image")


# --------------------------------------------------------------------------- registry


def test_registered_names():
    expected = {
        "cifar10",
        "cifar100",
        "cifar100_coarse",
        "mnist",
        "fashion_mnist",
        "imagefolder",
        "imagenet",
        "cub200",
        "stanford_dogs",
        "tinyimagenet",
        "digits",
    }
    assert expected <= set(DATASETS.names())
    with pytest.raises(UserError, match="unknown dataset"):
        build_dataset("no_such_dataset")


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_str_keys(tmp_path):
    write_cifar10(tmp_path)
    tr = build_dataset("cifar10", tmp_path, train=True)
    assert isinstance(tr, ArrayDataset)
    assert tr.images.shape == (20, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert tr.targets.dtype == torch.int64
    assert tr.targets.tolist() == [(b * 4 + i) % 10 for b in range(1, 6) for i in range(4)]
    # CHW row order: R plane = running index, G = 100, B = 200
    assert tr.images[:, 0, 5, 7].tolist() == [(4 + i) % 256 for i in range(20)]
    assert (tr.images[:, 1] == 100).all() and (tr.images[:, 2] == 200).all()
    s = tr.spec
    assert s.name == "cifar10" and s.num_classes == 10 and s.in_channels == 3 and s.image_size == (32, 32)
    assert s.class_names == tuple(C10_NAMES)
    assert s.mean == (0.4914, 0.4822, 0.4465) and s.std == (0.2470, 0.2435, 0.2616)
    assert s.augment.pad == 4 and s.augment.flip is True
    te = build_dataset("cifar10", tmp_path, train=False)
    assert te.images.shape == (6, 3, 32, 32) and te.targets.tolist() == [0, 1, 2, 3, 4, 5]
    # root may also be the inner folder itself
    inner = build_dataset("cifar10", tmp_path / "cifar-10-batches-py", train=False)
    assert torch.equal(inner.images, te.images)


def test_cifar100_bytes_keys_fine_and_coarse(tmp_path):
    write_cifar100(tmp_path)
    fine = build_dataset("cifar100", tmp_path)
    assert fine.images.shape == (12, 3, 32, 32)
    assert fine.targets.tolist() == [(7 * i) % 100 for i in range(12)]
    assert fine.spec.num_classes == 100 and fine.spec.class_names[3] == "fine3"
    assert fine.spec.mean == (0.5071, 0.4867, 0.4408) and fine.spec.std == (0.2675, 0.2565, 0.2761)
    coarse = build_dataset("cifar100_coarse", tmp_path, train=False)
    assert coarse.images.shape == (5, 3, 32, 32)
    assert coarse.targets.tolist() == [((7 * i) % 100) // 5 for i in range(5)]
    assert coarse.spec.num_classes == 20 and coarse.spec.class_names[0] == "coarse0"
    assert coarse.spec.name == "cifar100_coarse"


def test_cifar_default_root(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "data" / "cifar100")
    write_cifar10(tmp_path / "data" / "cifar10")
    monkeypatch.chdir(tmp_path)
    assert len(build_dataset("cifar10")) == 20
    assert build_dataset("cifar100_coarse").spec.num_classes == 20  # shares ./data/cifar100


def test_cifar_missing_file_message(tmp_path):
    with pytest.raises(UserError) as e:
        build_dataset("cifar10", tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg and "data.download=true" in msg
    assert "same layout" in msg and "\n" not in msg
    d = write_cifar10(tmp_path / "partial")
    (d / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        build_dataset("cifar10", tmp_path / "partial")
    with pytest.raises(UserError, match="cifar-100-python"):
        build_dataset("cifar100", tmp_path / "partial")


def test_cifar_pickle_cannot_run_code(tmp_path):
    d = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": Evil()}, protocol=2))
    with pytest.raises(UserError, match="batches.meta"):
        build_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- downloads (offline, file:// URLs)


def _tar_gz(path: Path, src_dir: Path, arcname: str) -> str:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src_dir, arcname=arcname)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_and_extract_md5(tmp_path):
    src = write_cifar10(tmp_path / "src")
    archive = tmp_path / "srv" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    md5 = _tar_gz(archive, src, "cifar-10-batches-py")
    url = archive.as_uri()

    dest = tmp_path / "good"
    download_and_extract(url, dest, md5)
    assert (dest / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert md5sum(dest / "cifar-10-python.tar.gz") == md5
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]

    bad = tmp_path / "bad"
    with pytest.raises(UserError) as e:
        download_and_extract(url, bad, "0" * 32)
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and "0" * 32 in msg and md5 in msg and url in msg
    assert not bad.exists() or list(bad.iterdir()) == []  # no partial file left behind

    # a stale/corrupt file at the destination is replaced only by a verified download
    stale = tmp_path / "stale" / "a.tar.gz"
    stale.parent.mkdir()
    stale.write_bytes(b"junk")
    download_url(url, stale, md5)
    assert md5sum(stale) == md5


def test_cifar_reader_download(tmp_path, monkeypatch):
    src = write_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _tar_gz(archive, src, "cifar-10-batches-py")
    monkeypatch.setitem(cifar_mod.ARCHIVES, "cifar10", Archive(archive.as_uri(), md5, "cifar-10-python.tar.gz"))
    ds = build_dataset("cifar10", tmp_path / "root", download=True)
    assert len(ds) == 20
    monkeypatch.setitem(cifar_mod.ARCHIVES, "cifar10", Archive(archive.as_uri(), "f" * 32, "cifar-10-python.tar.gz"))
    with pytest.raises(UserError, match="MD5 mismatch"):
        build_dataset("cifar10", tmp_path / "root2", download=True)
    assert not (tmp_path / "root2" / "cifar-10-python.tar.gz").exists()


def test_extract_rejects_escaping_members(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        data = b"gotcha"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="escapes"):
        extract_archive(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("innocent")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UserError, match="outside"):
        extract_archive(link, tmp_path / "out2")


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    tr = build_dataset("mnist", tmp_path)
    assert tr.images.shape == (7, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert tr.targets.tolist() == [0, 1, 2, 3, 4, 5, 6]
    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    assert torch.equal(tr.images[:, 0], torch.from_numpy(x))
    assert tr.spec.mean == (0.1307,) and tr.spec.std == (0.3081,)
    assert tr.spec.augment.pad == 2 and tr.spec.augment.flip is False
    assert tr.spec.class_names == tuple("0123456789")
    te = build_dataset("fashion_mnist", tmp_path, train=False)
    assert te.images.shape == (3, 1, 28, 28)
    assert te.spec.mean == (0.2860,) and te.spec.std == (0.3530,) and te.spec.augment.flip is True
    assert te.spec.class_names[0] == "T-shirt/top" and te.spec.name == "fashion_mnist"


def test_mnist_bad_magic_and_missing(tmp_path):
    write_mnist(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    images = tmp_path / "train-images-idx3-ubyte"
    labels.write_bytes(images.read_bytes())  # an image file where labels belong
    with pytest.raises(UserError) as e:
        build_dataset("mnist", tmp_path)
    assert str(labels) in str(e.value) and "2051" in str(e.value) and "2049" in str(e.value)
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        read_idx(images, 2051)
    with pytest.raises(UserError) as e:
        build_dataset("mnist", tmp_path / "empty", train=False)
    assert str(tmp_path / "empty" / "t10k-images-idx3-ubyte") in str(e.value)


# --------------------------------------------------------------------------- folder datasets


def test_imagefolder(tmp_path):
    write_imagefolder(tmp_path)
    tr = build_dataset("imagefolder", tmp_path)
    assert tr.images.shape == (9, 3, 64, 64) and tr.images.dtype == torch.uint8
    assert tr.targets.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert tr.spec.class_names == ("cat", "dog", "eel") and tr.spec.num_classes == 3
    assert tr.spec.mean == (0.485, 0.456, 0.406) and tr.spec.std == (0.229, 0.224, 0.225)
    assert tr.spec.augment.pad == 8 and tr.spec.augment.flip
    # solid colours survive decoding (JPEG within a few levels)
    mean_rgb = tr.images.float().mean(dim=(2, 3))
    for row, y in zip(mean_rgb, tr.targets.tolist()):
        assert torch.allclose(row, torch.tensor(COLORS[y], dtype=torch.float32), atol=3)
    va = build_dataset("imagefolder", tmp_path, train=False, image_size=(12, 20))
    assert va.images.shape == (6, 3, 12, 20) and va.spec.image_size == (12, 20)
    assert va.targets.tolist() == [0, 0, 1, 1, 2, 2]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "none" / "train")):
        build_dataset("imagefolder", tmp_path / "none")
    write_imagefolder(tmp_path / "a")
    (tmp_path / "a" / "train" / "cat" / "img0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError) as e:
        build_dataset("imagefolder", tmp_path / "a")
    assert "cannot decode" in str(e.value) and str(tmp_path / "a" / "train" / "cat" / "img0.jpg") in str(e.value)
    write_imagefolder(tmp_path / "b")
    (tmp_path / "b" / "train" / "fox").mkdir()
    with pytest.raises(UserError, match="contains no images"):
        build_dataset("imagefolder", tmp_path / "b")
    write_imagefolder(tmp_path / "c")
    save_image(tmp_path / "c" / "val" / "zebra" / "z.png", (1, 2, 3))
    with pytest.raises(UserError, match="zebra"):
        build_dataset("imagefolder", tmp_path / "c", train=False)


def test_imagenet_layout(tmp_path):
    for c, wnid in enumerate(["n02", "n01"]):
        for i in range(2):
            save_image(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG", COLORS[c], fmt="JPEG")
        save_image(tmp_path / "val" / wnid / f"val_{c}.JPEG", COLORS[c], fmt="JPEG")
    tr = build_dataset("imagenet", tmp_path, image_size=16)
    assert tr.spec.class_names == ("n01", "n02")  # sorted wnids
    assert tr.targets.tolist() == [0, 0, 1, 1] and tr.images.shape == (4, 3, 16, 16)
    assert tr.spec.augment.pad == 2
    va = build_dataset("imagenet", tmp_path, train=False)
    assert va.targets.tolist() == [0, 1] and va.images.shape == (2, 3, 64, 64)
    # flat val/ (not sorted into wnid folders) is a clear error
    flat = tmp_path / "flat"
    save_image(flat / "train" / "n01" / "a.JPEG", COLORS[0], fmt="JPEG")
    save_image(flat / "val" / "ILSVRC2012_val_00000001.JPEG", COLORS[0], fmt="JPEG")
    with pytest.raises(UserError, match="wnid"):
        build_dataset("imagenet", flat, train=False, download=True)


def write_tinyimagenet(base: Path) -> Path:
    root = base / "tiny-imagenet-200"
    wnids = ["n09", "n03", "n05"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n03\tgoldfish, Carassius auratus\nn05\tbus\nn09\tteddy, teddy bear\nn99\tx\n")
    lines = []
    for c, w in enumerate(wnids):
        for i in range(2):
            save_image(root / "train" / w / "images" / f"{w}_{i}.JPEG", COLORS[c], size=(64, 64), fmt="JPEG")
        (root / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t10\t10\n")
    for i, w in enumerate(["n05", "n09", "n03", "n05"]):
        save_image(root / "val" / "images" / f"val_{i}.JPEG", COLORS[wnids.index(w)], size=(64, 64), fmt="JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t1\t60\t61")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tinyimagenet(tmp_path):
    write_tinyimagenet(tmp_path)
    tr = build_dataset("tinyimagenet", tmp_path)  # parent of tiny-imagenet-200/
    assert tr.images.shape == (6, 3, 64, 64) and tr.spec.num_classes == 3
    assert tr.spec.class_names == ("goldfish", "bus", "teddy")  # sorted wnids n03, n05, n09
    assert tr.targets.tolist() == [0, 0, 1, 1, 2, 2]
    va = build_dataset("tinyimagenet", tmp_path / "tiny-imagenet-200", train=False)
    assert va.targets.tolist() == [1, 2, 0, 1]
    means = va.images.float().mean(dim=(2, 3))
    assert torch.allclose(means[0], torch.tensor(COLORS[2], dtype=torch.float32), atol=3)  # n05 = colour 2
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(UserError, match="val_3.JPEG"):
        build_dataset("tinyimagenet", tmp_path, train=False)


def test_cub200(tmp_path):
    root = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    rows, split, labels = [], [], []
    img_id = 0
    for c, folder in enumerate(classes):
        for i in range(3):
            img_id += 1
            rel = f"{folder}/{folder[4:]}_{i}.jpg"
            save_image(root / "images" / rel, COLORS[c], fmt="JPEG")
            rows.append(f"{img_id} {rel}")
            split.append(f"{img_id} {1 if i < 2 else 0}")
            labels.append(f"{img_id} {c + 1}")
    (root / "images.txt").write_text("\n".join(rows) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i + 1} {c}" for i, c in enumerate(classes)) + "\n")
    tr = build_dataset("cub200", tmp_path, image_size=24)
    assert tr.images.shape == (4, 3, 24, 24) and tr.targets.tolist() == [0, 0, 1, 1]
    assert tr.spec.class_names == ("Black_footed_Albatross", "Laysan_Albatross")
    te = build_dataset("cub200", root, train=False)
    assert te.targets.tolist() == [0, 1] and te.images.shape[-1] == 64
    (root / "classes.txt").unlink()
    with pytest.raises(UserError, match="classes.txt"):
        build_dataset("cub200", root)


@pytest.mark.parametrize("lists", ["mat", "txt"])
def test_stanford_dogs(tmp_path, lists):
    folders = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    train_rel, test_rel = [], []
    for c, f in enumerate(folders):
        for i in range(3):
            rel = f"{f}/{f.split('-')[0]}_{i}.jpg"
            save_image(tmp_path / "Images" / rel, COLORS[c], fmt="JPEG")
            (train_rel if i < 2 else test_rel).append(rel)
    for split, rels in (("train", train_rel), ("test", test_rel)):
        if lists == "mat":
            from scipy.io import savemat

            cell = np.empty((len(rels), 1), dtype=object)
            for i, r in enumerate(rels):
                cell[i, 0] = np.array([r])
            labels = np.array([[folders.index(r.split("/")[0]) + 1] for r in rels], dtype=np.uint8)
            savemat(tmp_path / f"{split}_list.mat", {"file_list": cell, "annotation_list": cell, "labels": labels})
        else:
            (tmp_path / f"{split}_list.txt").write_text("# comment\n" + "\n".join(f"{r} 1" for r in rels) + "\n")
    tr = build_dataset("stanford_dogs", tmp_path, image_size=(16, 24))
    assert tr.images.shape == (4, 3, 16, 24) and tr.targets.tolist() == [0, 0, 1, 1]
    assert tr.spec.class_names == ("Chihuahua", "Japanese_spaniel")
    te = build_dataset("stanford_dogs", tmp_path, train=False)
    assert te.targets.tolist() == [0, 1]
    with pytest.raises(UserError, match="Images"):
        build_dataset("stanford_dogs", tmp_path / "nothing")


# --------------------------------------------------------------------------- digits


def test_digits_offline():
    tr = build_dataset("digits")
    te = build_dataset("digits", train=False)
    assert tr.images.shape[1:] == (1, 8, 8) and te.images.shape[1:] == (1, 8, 8)
    assert len(tr) + len(te) == 1797 and len(te) == 359
    assert tr.spec.num_classes == 10 and tr.spec.in_channels == 1 and tr.spec.image_size == (8, 8)
    assert tr.images.dtype == torch.uint8 and int(tr.images.max()) == 255 and int(tr.images.min()) == 0
    assert torch.bincount(te.targets).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    again = build_dataset("digits", root="/does/not/matter", train=False)
    assert torch.equal(again.images, te.images) and torch.equal(again.targets, te.targets)
    # the two splits do not share rows
    from sklearn.datasets import load_digits

    scaled = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    all_rows = {r.tobytes(): i for i, r in enumerate(scaled)}
    tr_ids = {all_rows[r.tobytes()] for r in tr.images[:, 0].numpy()}
    te_ids = {all_rows[r.tobytes()] for r in te.images[:, 0].numpy()}
    assert not tr_ids & te_ids


# --------------------------------------------------------------------------- build_dataset transforms


def test_per_class_subset_deterministic():
    torch.manual_seed(1)
    a = build_dataset("digits", train_per_class=10, seed=3)
    torch.manual_seed(999)  # torch's global RNG must not matter
    b = build_dataset("digits", train_per_class=10, seed=3)
    c = build_dataset("digits", train_per_class=10, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)
    assert torch.bincount(a.targets).tolist() == [10] * 10
    te = build_dataset("digits", train=False, train_per_class=5, seed=3)  # thins whichever split is read
    assert torch.bincount(te.targets).tolist() == [5] * 10
    big = build_dataset("digits", train_per_class=10_000)
    assert len(big) == len(build_dataset("digits"))


def test_select_indices_properties():
    targets = torch.tensor([0, 1, 2] * 20 + [1] * 5)
    rows = select_indices(targets, None, per_class=4, seed=7)
    assert torch.bincount(targets[rows]).tolist() == [4, 4, 4]
    assert torch.equal(rows, torch.sort(rows).values)
    # rows kept for a class do not depend on which other classes are selected
    only1 = select_indices(targets, [1], per_class=4, seed=7)
    assert torch.equal(only1, rows[targets[rows] == 1])
    with pytest.raises(UserError):
        select_indices(targets, None, per_class=0)
    with pytest.raises(UserError):
        select_indices(targets, None, per_class=3, seed=-1)


def test_class_subset_remap():
    full = build_dataset("digits", train=False)
    sub = build_dataset("digits", train=False, classes=[7, 2, 5])
    assert sub.spec.num_classes == 3 and sub.spec.class_names == ("7", "2", "5")
    assert set(sub.targets.tolist()) == {0, 1, 2}
    for new, old in enumerate([7, 2, 5]):
        assert torch.equal(sub.images[sub.targets == new], full.images[full.targets == old])
    assert len(build_dataset("digits", train=False, classes=["3"])) == int((full.targets == 3).sum())
    with pytest.raises(UserError, match="out of range"):
        build_dataset("digits", classes=[10])
    with pytest.raises(UserError, match="twice"):
        build_dataset("digits", classes=[1, 1])
    with pytest.raises(UserError):
        build_dataset("digits", classes=[])
    direct = subset_classes(full, [7, 2, 5])
    assert torch.equal(direct.targets, sub.targets)


def test_resize_through_build_dataset():
    ds = build_dataset("digits", image_size=16, classes=[0, 1], train_per_class=3, seed=0)
    assert ds.images.shape == (6, 1, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.spec.image_size == (16, 16) and ds.spec.num_classes == 2 and ds.spec.augment.pad == 2
    rect = build_dataset("digits", train=False, image_size=(4, 6))
    assert rect.images.shape[1:] == (1, 4, 6) and rect.spec.image_size == (4, 6)


def test_resize_images_values():
    const = torch.full((2, 3, 10, 14), 77, dtype=torch.uint8)
    assert (resize_images(const, (5, 7)) == 77).all() and (resize_images(const, 31) == 77).all()
    checker = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    checker[..., ::2, ::2] = 255
    checker[..., 1::2, 1::2] = 255
    half = resize_images(checker, 4)
    assert ((half.int() - 128).abs() <= 4).all()  # antialiased: averages (no 0/255 aliasing)


def test_folder_lazy_selection_matches_eager(tmp_path):
    write_imagefolder(tmp_path, per_class=(5, 4, 6))
    lazy = build_dataset("imagefolder", tmp_path, classes=[2, 0], train_per_class=3, seed=5, image_size=8)
    full = build_dataset("imagefolder", tmp_path, image_size=8)
    eager = subset_classes(subsample_per_class(full, 3, seed=5), [2, 0])
    assert torch.equal(lazy.images, eager.images) and torch.equal(lazy.targets, eager.targets)
    assert lazy.spec == eager.spec and lazy.spec.class_names == ("eel", "cat")
    assert torch.bincount(lazy.targets).tolist() == [3, 3]


def test_decode_at_requested_size(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (800, 600), (10, 200, 30)).save(big, "JPEG")
    x = decode_images([big, big], (6, 8), workers=2)
    assert x.shape == (2, 3, 6, 8) and x.dtype == torch.uint8
    assert (x[:, 1].int() - 200).abs().max() <= 3


# --------------------------------------------------------------------------- real data (opt-in)

_CONVERTER = Path("/work/shared/data/cifar10_jpeg/to_cifar_python.py")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DK_REAL_DATA") != "1" or not _CONVERTER.is_file(),
    reason="real CIFAR-10 copy: set DK_REAL_DATA=1 (needs the local JPEG copy)",
)
def test_real_cifar10_copy(tmp_path):
    subprocess.run([sys.executable, str(_CONVERTER), str(tmp_path)], check=True, capture_output=True)
    tr = build_dataset("cifar10", tmp_path)
    te = build_dataset("cifar10", tmp_path, train=False)
    assert tr.images.shape == (50000, 3, 32, 32) and te.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(tr.targets).tolist() == [5000] * 10
    assert tr.spec.class_names[0] == "airplane"
    mean = (tr.images.float() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(tr.spec.mean), atol=0.01)
    assert isinstance(tr.spec, DataSpec)
