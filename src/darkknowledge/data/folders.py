"""Datasets stored as image files: generic class folders, ImageNet, CUB-200-2011,
Stanford Dogs and Tiny ImageNet, decoded once (Pillow, a thread pool, resized while
decoding) into one in-memory uint8 ``(N, 3, H, W)`` tensor; classes sorted by folder
name; ImageNet normalisation; pad ``H // 8`` + flip augmentation. The on-disk layouts,
sizes and memory: docs/data.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from darkknowledge.data.base import ArrayDataset, AugmentSpec, DataSpec
from darkknowledge.data.decode import decode_images
from darkknowledge.data.registry import DATASETS
from darkknowledge.data.transforms import normalize_size
from darkknowledge.errors import UserError

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "FileList",
    "FolderReader",
    "decode_images",
    "index_imagefolder",
    "index_imagenet",
    "index_tinyimagenet",
    "index_cub200",
    "index_stanford_dogs",
]

DEFAULT_IMAGE_SIZE = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass
class FileList:
    """The files of one split before decoding: ``paths[i]`` has label ``targets[i]``."""

    paths: list[Path]
    targets: np.ndarray  # int64
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if len(self.paths) != len(self.targets):
            raise ValueError("one label per path")


# --------------------------------------------------------------------------- helpers


def _missing(what: str, path: Path, name: str, hint: str) -> UserError:
    return UserError(f"{name}: {what} {path} not found; {hint}")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively), in sorted, reproducible order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f) and not f.startswith("."))
    return found


def _read_lines(path: Path, name: str, hint: str) -> list[str]:
    if not path.is_file():
        raise _missing("file", path, name, hint)
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def _class_folder_index(root: Path, split: str, class_split: str, name: str, hint: str) -> FileList:
    """``root/<split>/<class>/**/image`` with classes from ``root/<class_split>/``."""
    split_dir, class_dir = root / split, root / class_split
    if not split_dir.is_dir():
        raise _missing("folder", split_dir, name, hint)
    if not class_dir.is_dir():
        raise _missing("folder", class_dir, name, hint)
    classes = _subdirs(class_dir)
    if not classes:
        loose = any(_is_image(e.name) for e in os.scandir(class_dir))
        raise UserError(
            f"{name}: {class_dir} has no class sub-folders"
            + ("; it holds images directly - sort them into one folder per class" if loose else "; " + hint)
        )
    lookup = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    targets: list[int] = []
    for c in _subdirs(split_dir):
        if c not in lookup:
            raise UserError(
                f"{name}: class folder {split_dir / c} does not exist in {class_dir}; both splits must use "
                f"the same class folders"
            )
        files = _images_under(split_dir / c)
        if not files and split == class_split:
            raise UserError(f"{name}: class folder {split_dir / c} contains no images; add images or remove it")
        paths.extend(files)
        targets.extend([lookup[c]] * len(files))
    if not paths:
        raise UserError(f"{name}: no images found under {split_dir}; {hint}")
    return FileList(paths, np.array(targets, dtype=np.int64), tuple(classes))


def _nested(root: Path, inner: str, probe: str) -> Path:
    """``root/inner`` if the dataset sits in that sub-folder, else ``root``."""
    return root / inner if not (root / probe).exists() and (root / inner / probe).exists() else root


# --------------------------------------------------------------------------- indexers


def index_imagefolder(root: str | Path, train: bool) -> FileList:
    """Files of ``root/train/<class>`` or ``root/val/<class>`` (``root/test`` if no ``val``)."""
    root = Path(root)
    hint = "expected root/train/<class>/<image> and root/val/<class>/<image> (set data.root)"
    split = "train" if train else ("val" if (root / "val").is_dir() or not (root / "test").is_dir() else "test")
    class_split = "train" if (root / "train").is_dir() else split
    return _class_folder_index(root, split, class_split, "imagefolder", hint)


def index_imagenet(root: str | Path, train: bool) -> FileList:
    """Files of ``root/train/<wnid>`` or ``root/val/<wnid>``; classes are the sorted wnids of ``train/``."""
    root = Path(root)
    hint = (
        "expected the ILSVRC-2012 layout root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG "
        "(validation images sorted into wnid folders); set data.root"
    )
    split = "train" if train else "val"
    class_split = "train" if (root / "train").is_dir() else split
    return _class_folder_index(root, split, class_split, "imagenet", hint)


def index_tinyimagenet(root: str | Path, train: bool) -> FileList:
    """Tiny ImageNet training images, or the labelled validation images for ``train=False``."""
    root = _nested(Path(root), "tiny-imagenet-200", "wnids.txt")
    hint = (
        f"expected tiny-imagenet-200 (wnids.txt, train/<wnid>/images/, val/images/, val/val_annotations.txt) "
        f"at {root} (set data.root)"
    )
    wnids = sorted(line.split()[0] for line in _read_lines(root / "wnids.txt", "tinyimagenet", hint))
    if not wnids:
        raise UserError(f"tinyimagenet: {root / 'wnids.txt'} lists no classes; {hint}")
    lookup = {w: i for i, w in enumerate(wnids)}
    words: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for line in _read_lines(root / "words.txt", "tinyimagenet", hint):
            wnid, _, text = line.partition("\t")
            if wnid in lookup and text:
                words[wnid] = text.split(",")[0].strip()
    names = tuple(words.get(w, w) for w in wnids)
    paths: list[Path] = []
    targets: list[int] = []
    if train:
        for w in wnids:
            folder = root / "train" / w / "images"
            if not folder.is_dir():
                raise _missing("folder", folder, "tinyimagenet", hint)
            files = _images_under(folder)
            if not files:
                raise UserError(f"tinyimagenet: {folder} contains no images; {hint}")
            paths.extend(files)
            targets.extend([lookup[w]] * len(files))
    else:
        ann = root / "val" / "val_annotations.txt"
        for lineno, line in enumerate(_read_lines(ann, "tinyimagenet", hint), 1):
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2 or parts[1] not in lookup:
                raise UserError(
                    f"tinyimagenet: {ann} line {lineno} ({line[:60]!r}) does not name an image and a wnid "
                    f"from wnids.txt; replace the file with the official one"
                )
            paths.append(root / "val" / "images" / parts[0])
            targets.append(lookup[parts[1]])
        if not paths:
            raise UserError(f"tinyimagenet: {ann} lists no images; {hint}")
        for p in paths:
            if not p.is_file():
                raise _missing("image", p, "tinyimagenet", f"it is listed in {ann}; {hint}")
    return FileList(paths, np.array(targets, dtype=np.int64), names)


def _id_table(path: Path, hint: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for lineno, line in enumerate(_read_lines(path, "cub200", hint), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise UserError(f"cub200: {path} line {lineno} is not '<id> <value>': {line[:60]!r}; use the official file")
        table[parts[0]] = parts[1].strip()
    return table


def index_cub200(root: str | Path, train: bool) -> FileList:
    """CUB-200-2011 images of the official train or test split (``train_test_split.txt``)."""
    root = _nested(Path(root), "CUB_200_2011", "images.txt")
    hint = (
        f"expected CUB_200_2011 (images/, images.txt, train_test_split.txt, image_class_labels.txt, "
        f"classes.txt) at {root} (set data.root)"
    )
    images = _id_table(root / "images.txt", hint)
    split = _id_table(root / "train_test_split.txt", hint)
    labels = _id_table(root / "image_class_labels.txt", hint)
    classes = _id_table(root / "classes.txt", hint)
    folders = sorted(classes.values())
    by_folder = {f: i for i, f in enumerate(folders)}
    class_of_id = {cid: by_folder[f] for cid, f in classes.items()}
    want = "1" if train else "0"
    paths: list[Path] = []
    targets: list[int] = []
    for img_id, rel in sorted(images.items(), key=lambda kv: (0, int(kv[0]), "") if kv[0].isdigit() else (1, 0, kv[0])):
        if img_id not in split or img_id not in labels or labels[img_id] not in class_of_id:
            raise UserError(
                f"cub200: image id {img_id} of {root / 'images.txt'} has no split or class entry in "
                f"train_test_split.txt / image_class_labels.txt / classes.txt; use the official files"
            )
        if split[img_id] != want:
            continue
        paths.append(root / "images" / rel)
        targets.append(class_of_id[labels[img_id]])
    if not paths:
        which = "training" if train else "test"
        raise UserError(f"cub200: no {which} images listed in {root / 'train_test_split.txt'}; use the official file")
    for p in paths:
        if not p.is_file():
            raise _missing("image", p, "cub200", f"it is listed in {root / 'images.txt'}; {hint}")
    names = tuple(f.split(".", 1)[1] if "." in f and f.split(".", 1)[0].isdigit() else f for f in folders)
    return FileList(paths, np.array(targets, dtype=np.int64), names)


def _mat_strings(obj) -> list[str]:
    """Flatten a MATLAB cell array of strings as returned by ``scipy.io.loadmat``."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, bytes):
        return [obj.decode("utf-8")]
    arr = np.asarray(obj)
    if arr.dtype.kind in "US":
        return [str(s) for s in arr.ravel()]
    out: list[str] = []
    for item in arr.ravel():
        out.extend(_mat_strings(item))
    return out


def _dogs_list(root: Path, split: str, hint: str) -> tuple[Path, list[str]]:
    mat, txt = root / f"{split}_list.mat", root / f"{split}_list.txt"
    if mat.is_file():
        from scipy.io import loadmat

        try:
            content = loadmat(str(mat))
        except Exception as e:  # scipy raises several types for corrupt files
            raise UserError(f"stanford_dogs: cannot read {mat}: {e}; replace it with the official file") from None
        if "file_list" not in content:
            raise UserError(f"stanford_dogs: {mat} has no 'file_list' entry; replace it with the official file")
        return mat, _mat_strings(content["file_list"])
    if txt.is_file():
        return txt, [line.split()[0] for line in _read_lines(txt, "stanford_dogs", hint)]
    raise UserError(f"stanford_dogs: neither {mat} nor {txt} found; {hint}")


def index_stanford_dogs(root: str | Path, train: bool) -> FileList:
    """Stanford Dogs images of the official train or test list (``.mat``, or ``.txt`` fallback)."""
    root = Path(root)
    hint = (
        f"expected Images/<wnid>-<breed>/*.jpg and train_list.mat/test_list.mat (or train_list.txt/"
        f"test_list.txt with one Images/-relative path per line) at {root} (set data.root)"
    )
    images = root / "Images"
    if not images.is_dir():
        raise _missing("folder", images, "stanford_dogs", hint)
    folders = _subdirs(images)
    if not folders:
        raise UserError(f"stanford_dogs: {images} has no breed folders; {hint}")
    lookup = {f: i for i, f in enumerate(folders)}
    list_file, rels = _dogs_list(root, "train" if train else "test", hint)
    if not rels:
        raise UserError(f"stanford_dogs: {list_file} lists no images; {hint}")
    paths: list[Path] = []
    targets: list[int] = []
    for rel in rels:
        rel = rel.replace("\\", "/").strip()
        folder = rel.split("/", 1)[0]
        if "/" not in rel or folder not in lookup:
            raise UserError(
                f"stanford_dogs: {list_file} entry {rel!r} is not '<breed folder>/<file>' with a folder of {images}"
            )
        p = images / rel
        if not p.is_file():
            raise _missing("image", p, "stanford_dogs", f"it is listed in {list_file}")
        paths.append(p)
        targets.append(lookup[folder])
    names = tuple(f.split("-", 1)[1] if "-" in f else f for f in folders)
    return FileList(paths, np.array(targets, dtype=np.int64), names)


# --------------------------------------------------------------------------- readers


class FolderReader:
    """A registered reader: ``indexer`` lists the files and labels, then only the
    selected files are decoded at the requested size (see :mod:`darkknowledge.data.registry`)."""

    def __init__(
        self,
        name: str,
        indexer: Callable[[str | Path, bool], FileList],
        *,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        default_size: int = DEFAULT_IMAGE_SIZE,
        summary: str = "",
    ):
        self.name = name
        self.indexer = indexer
        self.mean, self.std = mean, std
        self.default_size = default_size
        first = summary or (indexer.__doc__ or name).strip().splitlines()[0]
        self.__doc__ = f"{first}; decoded to {default_size}x{default_size} unless data.image_size is set."

    def spec(self, class_names: Sequence[str], size: tuple[int, int]) -> DataSpec:
        return DataSpec(
            name=self.name,
            num_classes=len(class_names),
            in_channels=3,
            image_size=size,
            mean=self.mean,
            std=self.std,
            augment=AugmentSpec(pad=max(1, size[0] // 8), flip=True),
            class_names=tuple(class_names),
        )

    def __call__(
        self,
        root: str | Path,
        train: bool,
        download: bool = False,
        *,
        image_size: int | Sequence[int] | None = None,
        select: Callable[[Tensor, DataSpec], Tensor] | None = None,
    ) -> ArrayDataset:
        try:
            files = self.indexer(Path(root), train)
        except UserError as e:
            if download:
                raise UserError(f"{e} (data.download does not apply: {self.name} has no automatic download)") from None
            raise
        size = normalize_size(image_size if image_size is not None else self.default_size)
        spec = self.spec(files.class_names, size)
        targets = torch.from_numpy(files.targets)
        rows = select(targets, spec) if select is not None else torch.arange(len(targets))
        images = decode_images([files.paths[i] for i in rows.tolist()], size)
        return ArrayDataset(images, targets[rows].clone(), spec)


for _name, _indexer, _summary in [
    ("imagefolder", index_imagefolder, "generic class folders: train/<class>/*, val/<class>/*"),
    ("imagenet", index_imagenet, "ImageNet layout: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG"),
    ("tinyimagenet", index_tinyimagenet, "Tiny ImageNet (tiny-imagenet-200): 200 classes, 100,000 / 10,000 (val)"),
    ("cub200", index_cub200, "CUB-200-2011 birds: 200 classes, official train/test split"),
    ("stanford_dogs", index_stanford_dogs, "Stanford Dogs: 120 breeds, train_list.mat/test_list.mat (or .txt)"),
]:
    DATASETS.add(_name, FolderReader(_name, _indexer, summary=_summary))
del _name, _indexer, _summary
