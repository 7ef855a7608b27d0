"""Where the samples of a streaming dataset live: image files in class folders, or
members of tar shards in the webdataset layout. An index holds no decoded pixels and
no per-sample Python objects (paths are one fixed-width bytes array), so worker
processes share it copy-on-write and memory does not grow with the number of images
beyond a few tens of bytes each.
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from darkknowledge.data.folders import IMG_EXTENSIONS
from darkknowledge.errors import UserError

__all__ = ["BAD_FILES", "FileSource", "ShardSource", "Source", "index_class_folders", "index_shards"]

BAD_FILES = ("error", "skip")
_SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


@dataclass
class Source:
    """Common part: labels, class names, and what indexing skipped (with ``bad_files=skip``)."""

    targets: np.ndarray  # int64 (N,)
    class_names: tuple[str, ...]
    skipped: list[str] = field(default_factory=list)  # "path: reason" of what indexing left out

    def __len__(self) -> int:
        return len(self.targets)

    def read(self, i: int) -> bytes:
        raise NotImplementedError

    def describe(self, i: int) -> str:
        raise NotImplementedError

    def subset(self, rows: np.ndarray) -> Source:
        raise NotImplementedError


@dataclass
class FileSource(Source):
    """Sample ``i`` is the file ``root / paths[i]``."""

    root: Path = Path(".")
    paths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="S1"))  # bytes, relative to root

    def read(self, i: int) -> bytes:
        with open(self.describe(i), "rb") as f:
            return f.read()

    def describe(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[i]))

    def subset(self, rows: np.ndarray) -> FileSource:
        return FileSource(self.targets[rows], self.class_names, list(self.skipped), self.root, self.paths[rows])


@dataclass
class ShardSource(Source):
    """Sample ``i`` is ``sizes[i]`` bytes at ``offsets[i]`` of tar ``shards[shard_ids[i]]`` (member ``keys[i]``)."""

    shards: tuple[str, ...] = ()
    shard_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="S1"))
    max_open: int = 16
    _handles: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def read(self, i: int) -> bytes:
        shard = int(self.shard_ids[i])
        f = self._handles.pop(shard, None)
        if f is None:
            if len(self._handles) >= self.max_open:
                self._handles.popitem(last=False)[1].close()
            f = open(self.shards[shard], "rb")  # noqa: SIM115  kept open across reads, closed on eviction
        self._handles[shard] = f  # most recently used last
        # positional read: a descriptor inherited by forked workers shares its file offset, pread has none
        data = os.pread(f.fileno(), int(self.sizes[i]), int(self.offsets[i]))
        if len(data) != int(self.sizes[i]):
            raise OSError(f"shard ends {int(self.sizes[i]) - len(data)} bytes early")
        return data

    def describe(self, i: int) -> str:
        return f"{self.shards[int(self.shard_ids[i])]}:{os.fsdecode(self.keys[i])}"

    def subset(self, rows: np.ndarray) -> ShardSource:
        return ShardSource(
            self.targets[rows],
            self.class_names,
            list(self.skipped),
            self.shards,
            self.shard_ids[rows],
            self.offsets[rows],
            self.sizes[rows],
            self.keys[rows],
            self.max_open,
        )

    def __getstate__(self) -> dict:  # open files stay in their process
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state


def _check_bad_files(bad_files: str) -> None:
    if bad_files not in BAD_FILES:
        raise UserError(f"data.bad_files={bad_files!r} is not one of {', '.join(BAD_FILES)}")


def _scandir(path: Path, name: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except PermissionError:
        raise UserError(f"{name}: cannot read directory {path} (permission denied); fix its permissions") from None
    except FileNotFoundError:
        raise UserError(f"{name}: folder {path} not found; set data.root") from None
    except NotADirectoryError:
        raise UserError(f"{name}: {path} is not a folder; set data.root") from None


def _images_below(folder: Path, name: str, skip: Callable[[str], None] | None) -> list[str]:
    """Image files below ``folder``, recursively, in sorted order, relative to ``folder.parent``."""
    out: list[str] = []
    pending = [folder]
    while pending:
        d = pending.pop()
        try:
            entries = _scandir(d, name)
        except UserError as err:
            if skip is None:
                raise
            skip(str(err))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(Path(entry.path))
            elif os.path.splitext(entry.name)[1].lower() in IMG_EXTENSIONS:
                out.append(os.path.relpath(entry.path, folder.parent))
        pending.extend(reversed(subdirs))
    return sorted(out)


def index_class_folders(
    root: str | Path, split: str, class_split: str, *, name: str, bad_files: str = "error"
) -> FileSource:
    """``root/<split>/<class>/**/<image>``; class ids are the sorted folder names of ``root/<class_split>``.

    An unreadable folder or an empty class folder of the class split is an error (``bad_files=error``)
    or skipped and listed in ``skipped`` (the class keeps its id)."""
    _check_bad_files(bad_files)
    root = Path(root)
    split_dir, class_dir = root / split, root / class_split
    for d in {split_dir, class_dir}:
        if not d.is_dir():
            raise UserError(f"{name}: folder {d} not found; expected {root}/{class_split}/<class>/<image> (data.root)")
    classes = [e.name for e in _scandir(class_dir, name) if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        raise UserError(f"{name}: {class_dir} has no class sub-folders; sort the images into one folder per class")
    lookup = {c: i for i, c in enumerate(classes)}
    skipped: list[str] = []
    skip = skipped.append if bad_files == "skip" else None
    paths: list[str] = []
    targets: list[int] = []
    for entry in _scandir(split_dir, name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if entry.name not in lookup:
            raise UserError(
                f"{name}: class folder {entry.path} does not exist in {class_dir}; both splits must use the same classes"
            )
        files = _images_below(Path(entry.path), name, skip)
        if not files and split == class_split:
            msg = f"{name}: class folder {entry.path} contains no images; add images or remove it"
            if skip is None:
                raise UserError(msg)
            skip(msg)
        paths.extend(files)
        targets.extend([lookup[entry.name]] * len(files))
    if not paths:
        raise UserError(f"{name}: no images found under {split_dir}")
    rel = np.array([os.fsencode(p) for p in paths])
    return FileSource(np.array(targets, dtype=np.int64), tuple(classes), skipped, split_dir, rel)


def _shard_files(folder: Path, name: str) -> list[Path]:
    shards = [Path(e.path) for e in _scandir(folder, name) if e.name.endswith(".tar") and not e.name.startswith(".")]
    if not shards:
        raise UserError(f"{name}: no .tar shards in {folder}; expected {folder}/<name>-000000.tar, ...")
    return shards


def index_shards(folder: str | Path, *, name: str = "webdataset", bad_files: str = "error") -> ShardSource:
    """Tar shards ``folder/*.tar`` in the webdataset layout: members ``<key>.jpg`` (or .jpeg/.png/.webp/.bmp)
    and ``<key>.cls`` (the class id as text) next to each other. Only the tar headers are read."""
    _check_bad_files(bad_files)
    folder = Path(folder)
    shards = _shard_files(folder, name)
    skipped: list[str] = []
    shard_ids: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    keys: list[bytes] = []
    targets: list[int] = []
    for sid, shard in enumerate(shards):
        images: dict[str, tuple[int, int]] = {}
        labels: dict[str, int] = {}
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    ext = ext.lower()
                    if ext in _SHARD_IMAGE_EXTENSIONS:
                        images[key] = (member.offset_data, member.size)
                    elif ext == "cls":
                        f = tar.extractfile(member)
                        text = f.read().decode("utf-8", "replace").strip() if f is not None else ""
                        if not text.lstrip("-").isdigit() or int(text) < 0:
                            msg = f"{name}: label {shard}:{member.name} is {text[:20]!r}, not a class id >= 0"
                            if bad_files == "error":
                                raise UserError(msg + "; fix the shard")
                            skipped.append(msg)
                            continue
                        labels[key] = int(text)
        except (tarfile.TarError, OSError, EOFError) as e:
            msg = f"{name}: cannot read shard {shard}: {e}"
            if bad_files == "error":
                raise UserError(msg + "; re-create the shard or remove it") from None
            skipped.append(msg)
            continue
        for key in sorted(images):
            if key not in labels:
                msg = f"{name}: shard member {shard}:{key} has no label ({key}.cls)"
                if bad_files == "error":
                    raise UserError(msg + "; add the label or remove the image")
                skipped.append(msg)
                continue
            shard_ids.append(sid)
            offsets.append(images[key][0])
            sizes.append(images[key][1])
            keys.append(os.fsencode(key))
            targets.append(labels[key])
    if not targets:
        raise UserError(f"{name}: no labelled images in the shards of {folder}")
    num_classes = max(targets) + 1
    return ShardSource(
        np.array(targets, dtype=np.int64),
        tuple(str(c) for c in range(num_classes)),
        skipped,
        tuple(str(s) for s in shards),
        np.array(shard_ids, dtype=np.int32),
        np.array(offsets, dtype=np.int64),
        np.array(sizes, dtype=np.int64),
        np.array(keys),
    )
