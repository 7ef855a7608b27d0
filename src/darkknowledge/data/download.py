"""Opt-in downloads of official dataset archives, verified by MD5.

Nothing here runs unless a reader is called with ``download=True`` (config
``data.download=true``). Every function takes the URL and the expected MD5 as
arguments, so the whole path can be exercised offline with a ``file://`` URL.

Guarantees:

* A download is streamed into a hidden temporary file *next to* the destination
  (``.<name>.<random>.part``) while its MD5 is computed; only a file with the
  expected MD5 is renamed into place (``os.replace``, atomic on one file system).
  On a mismatch or any error the temporary file is removed, so no partial or
  corrupt archive is ever left at the destination.
* An archive that is already present with the right MD5 is not downloaded again.
* Extraction refuses members that would land outside the target directory
  (absolute paths, ``..``, links pointing outside, device files).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from darkknowledge.errors import UserError

__all__ = ["Archive", "md5sum", "download_url", "extract_archive", "download_and_extract"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """A downloadable file: where it lives, its file name and its MD5."""

    url: str
    md5: str
    filename: str | None = None

    @property
    def name(self) -> str:
        return self.filename or self.url.rstrip("/").rsplit("/", 1)[-1]


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file (integrity check only, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_url(url: str, dest: str | os.PathLike, md5: str | None, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to the file ``dest`` and check its MD5.

    Skips the download if ``dest`` already exists with the expected MD5. The data
    goes to a temporary file in ``dest``'s directory and is renamed to ``dest``
    only once its MD5 matches; on a mismatch a :class:`UserError` names the URL,
    the expected and actual MD5 and what to do, and nothing is left behind.
    ``md5=None`` skips verification (not used by the built-in readers).
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise UserError(
                    f"could not download {url} to {dest}: {e}; check the network connection, or place "
                    f"the file there by hand"
                ) from None
            with response:
                try:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
                except OSError as e:
                    raise UserError(f"download of {url} to {dest} was interrupted: {e}; run again") from None
        actual = digest.hexdigest()
        if md5 is not None and actual != md5.lower():
            raise UserError(
                f"MD5 mismatch for {dest.name} downloaded from {url}: expected {md5.lower()}, got {actual}; "
                f"the download is corrupt or the file changed upstream - the file was not kept; retry, or "
                f"place a verified copy at {dest}"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _is_within(base: Path, target: Path) -> bool:
    try:
        target.relative_to(base)
        return True
    except ValueError:
        return False


def _check_member_path(base: Path, name: str, archive: Path) -> Path:
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")):
        raise UserError(f"archive {archive} contains an unsafe member path {name!r}; refusing to extract it")
    target = (base / name).resolve()
    if not _is_within(base, target):
        raise UserError(f"archive {archive} contains member {name!r} that escapes {base}; refusing to extract it")
    return target


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive)
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"cannot open archive {archive}: {e}; delete it and download it again") from None


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz``/``.zip`` into ``dest``.

    Every member is checked first; a member whose path (or link target) would
    fall outside ``dest``, or a device/FIFO member, raises :class:`UserError` and
    nothing is extracted.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member_path(base, name, archive)
            zf.extractall(base)
        return dest
    with _open_tar(archive) as tf:
        members = tf.getmembers()
        for m in members:
            target = _check_member_path(base, m.name, archive)
            if m.issym() or m.islnk():
                link_base = target.parent if m.issym() else base
                if os.path.isabs(m.linkname) or not _is_within(base, (link_base / m.linkname).resolve()):
                    raise UserError(
                        f"archive {archive} contains link {m.name!r} -> {m.linkname!r} pointing outside "
                        f"{base}; refusing to extract it"
                    )
            elif not (m.isfile() or m.isdir()):
                raise UserError(f"archive {archive} contains special file {m.name!r}; refusing to extract it")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and security backports
            tf.extractall(base, members=members, filter="data")
        else:  # pragma: no cover - old Pythons without extraction filters; members were checked above
            tf.extractall(base, members=members)
    return dest


def download_and_extract(
    url: str, root: str | os.PathLike, md5: str | None, *, filename: str | None = None, remove_archive: bool = False
) -> Path:
    """Download ``url`` into ``root/filename`` (MD5-verified, atomic) and extract it into ``root``.

    Returns ``root``. The archive is kept (so a second call does not download
    again) unless ``remove_archive``.
    """
    root = Path(root)
    name = filename or url.rstrip("/").rsplit("/", 1)[-1]
    path = download_url(url, root / name, md5)
    extract_archive(path, root)
    if remove_archive:
        path.unlink()
    return root
