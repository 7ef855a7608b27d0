"""Text corpora for language models: readers, the standard-library corpus, splits, digests.

A :class:`TextCorpus` is a list of :class:`TextDocument` (a name, the text, a split)
plus a digest of its content and split rule. Readers:

* :func:`read_text_files` - one plain-text file or a directory searched recursively for
  files with the given suffixes; every file is one document named by its path relative
  to the root;
* :func:`read_jsonl` - JSON lines, the text in a named field (e.g. ``text`` of
  ``brown.jsonl``), an optional id field naming the document;
* :func:`stdlib_corpus` - the running interpreter's standard-library sources, the
  zero-download default corpus.

Splits: a document's split is a function of its name only - a SHA-256 hash of the name
mapped to [0, 1) - so adding or removing one file never moves another one between
splits. Invalid UTF-8: ``invalid_utf8="error"`` (the default) refuses the file and names
the byte offset; ``"replace"`` substitutes U+FFFD for each invalid sequence and counts
the substitutions in :attr:`TextCorpus.replaced`. The policy is part of the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from darkknowledge.errors import UserError

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
InvalidUTF8 = Literal["error", "replace"]

# Directory names left out of the standard-library corpus: installed third-party packages
# and the test suites (large generated/fixture files, some deliberately not UTF-8).
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
# Build-machine configuration dumps, different on every installation.
STDLIB_EXCLUDED_PREFIXES = ("_sysconfigdata",)


@dataclass(frozen=True)
class SplitRule:
    """Document name -> split: ``u = sha256(salt + name)`` as a fraction of 2**64;
    ``u < test`` is test, ``u < test + validation`` is validation, else train."""

    validation: float = 0.05
    test: float = 0.05
    salt: str = "darkknowledge-split-v1"

    def __post_init__(self) -> None:
        for name, value in (("validation", self.validation), ("test", self.test)):
            if not 0.0 <= value < 1.0:
                raise UserError(f"split fraction {name}={value} must be in [0, 1)")
        if self.validation + self.test >= 1.0:
            raise UserError(
                f"split fractions validation={self.validation} + test={self.test} leave nothing to train on; "
                "make their sum smaller than 1"
            )

    def split_of(self, name: str) -> Split:
        digest = hashlib.sha256((self.salt + "\0" + name).encode("utf-8")).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        if u < self.test:
            return "test"
        if u < self.test + self.validation:
            return "validation"
        return "train"

    def describe(self) -> str:
        return f"sha256({self.salt!r} + name) -> validation {self.validation}, test {self.test}"


@dataclass(frozen=True)
class TextDocument:
    name: str
    text: str
    split: Split

    @property
    def num_bytes(self) -> int:
        """UTF-8 bytes of the text (the denominator of bits per byte)."""
        return len(self.text.encode("utf-8"))


@dataclass
class TextCorpus:
    """Documents with their splits, the source description and the digest."""

    documents: list[TextDocument]
    source: str
    rule: SplitRule
    invalid_utf8: InvalidUTF8 = "error"
    replaced: int = 0  # invalid UTF-8 sequences replaced by U+FFFD (policy "replace")
    _digest: str | None = field(default=None, repr=False)

    def split(self, split: Split) -> list[TextDocument]:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return [d for d in self.documents if d.split == split]

    @property
    def digest(self) -> str:
        """SHA-256 over the split rule, the UTF-8 policy and every (name, split, text)."""
        if self._digest is None:
            h = hashlib.sha256()
            h.update(f"rule={self.rule.describe()};invalid_utf8={self.invalid_utf8}\n".encode())
            for doc in sorted(self.documents, key=lambda d: d.name):
                text_hash = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
                h.update(f"{doc.name}\0{doc.split}\0{text_hash}\n".encode())
            self._digest = h.hexdigest()
        return self._digest

    def stats(self) -> dict:
        """Documents and UTF-8 bytes per split; what a run records about its corpus."""
        per_split = {
            s: {"documents": len(docs), "bytes": sum(d.num_bytes for d in docs)}
            for s in SPLITS
            for docs in [self.split(s)]
        }
        return {
            "source": self.source,
            "digest": self.digest,
            "split_rule": self.rule.describe(),
            "invalid_utf8": self.invalid_utf8,
            "replaced": self.replaced,
            "splits": per_split,
        }


def decode_utf8(data: bytes, where: str, invalid_utf8: InvalidUTF8 = "error") -> tuple[str, int]:
    """``(text, replaced)``: the text, and how many invalid sequences became U+FFFD."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as err:
        if invalid_utf8 == "error":
            raise UserError(
                f"{where}: invalid UTF-8 at byte {err.start} ({err.reason}); convert the file to UTF-8 or "
                "read it with invalid_utf8='replace'"
            ) from None
    text = data.decode("utf-8", errors="replace")
    # a valid U+FFFD is always the complete sequence EF BF BD (EF cannot continue another sequence)
    return text, text.count("\ufffd") - data.count(b"\xef\xbf\xbd")


def _check_policy(invalid_utf8: str) -> None:
    if invalid_utf8 not in ("error", "replace"):
        raise UserError(f"invalid_utf8={invalid_utf8!r}: choose 'error' (refuse the file) or 'replace'")


def _build(
    named_texts: Iterable[tuple[str, str, int]], source: str, rule: SplitRule, invalid_utf8: InvalidUTF8
) -> TextCorpus:
    docs: list[TextDocument] = []
    seen: set[str] = set()
    replaced = 0
    for name, text, bad in named_texts:
        if name in seen:
            raise UserError(f"{source}: two documents are named {name!r}; document names must be unique")
        seen.add(name)
        replaced += bad
        if text.strip():
            docs.append(TextDocument(name=name, text=text, split=rule.split_of(name)))
    if not docs:
        raise UserError(f"{source}: the corpus is empty (no document with text); point it at files that hold text")
    docs.sort(key=lambda d: d.name)
    return TextCorpus(documents=docs, source=source, rule=rule, invalid_utf8=invalid_utf8, replaced=replaced)


def _walk(root: Path, suffixes: tuple[str, ...], excluded_dirs: frozenset[str] = frozenset()) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in excluded_dirs)
        for name in sorted(filenames):
            if name.endswith(suffixes):
                yield Path(dirpath) / name


def read_text_files(
    path: str | Path,
    suffixes: tuple[str, ...] = (".txt",),
    *,
    rule: SplitRule | None = None,
    invalid_utf8: InvalidUTF8 = "error",
) -> TextCorpus:
    """One text file (the whole file is one document) or a directory searched recursively
    for files ending in one of ``suffixes`` (hidden files included, symlinked directories
    not followed)."""
    _check_policy(invalid_utf8)
    root = Path(path)
    if not root.exists():
        raise UserError(f"text corpus {root}: no such file or directory")
    files = [root] if root.is_file() else list(_walk(root, tuple(suffixes)))
    if not files:
        raise UserError(f"text corpus {root}: the corpus is empty (no file ending in {', '.join(suffixes)})")
    base = root.parent if root.is_file() else root

    def texts() -> Iterator[tuple[str, str, int]]:
        for file in files:
            text, bad = decode_utf8(file.read_bytes(), str(file), invalid_utf8)
            yield file.relative_to(base).as_posix(), text, bad

    return _build(texts(), f"files {root} ({', '.join(suffixes)})", rule or SplitRule(), invalid_utf8)


def read_jsonl(
    path: str | Path,
    text_field: str = "text",
    id_field: str | None = None,
    *,
    rule: SplitRule | None = None,
    invalid_utf8: InvalidUTF8 = "error",
) -> TextCorpus:
    """JSON lines, one document per line: the text in ``text_field``, the name in
    ``id_field`` (default: ``line<N>``, N counted from 1). Blank lines are skipped."""
    _check_policy(invalid_utf8)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"JSON-lines corpus {path}: no such file")

    def texts() -> Iterator[tuple[str, str, int]]:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                where = f"{path}:{number}"
                line, bad = decode_utf8(raw, where, invalid_utf8)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{where}: not valid JSON ({err.msg}); one JSON object per line") from None
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    raise UserError(f"{where}: no string field {text_field!r}; name the text field that holds it")
                if id_field is None:
                    name = f"line{number}"
                elif id_field in record:
                    name = str(record[id_field])
                else:
                    raise UserError(f"{where}: no field {id_field!r} (the id field); name one that every line has")
                yield name, record[text_field], bad

    return _build(texts(), f"jsonl {path} ({text_field})", rule or SplitRule(), invalid_utf8)


def stdlib_root() -> Path:
    """The running interpreter's standard-library directory (``sysconfig``'s stdlib path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The ``*.py`` files of the standard-library corpus, sorted, without third-party
    packages, test suites and ``_sysconfigdata*`` (see ``STDLIB_EXCLUDED_*``)."""
    root = stdlib_root() if root is None else root
    return [p for p in _walk(root, (".py",), STDLIB_EXCLUDED_DIRS) if not p.name.startswith(STDLIB_EXCLUDED_PREFIXES)]


def stdlib_corpus(
    *, rule: SplitRule | None = None, invalid_utf8: InvalidUTF8 = "error", max_bytes: int | None = None
) -> TextCorpus:
    """The standard-library corpus; ``max_bytes`` keeps the first files (in sorted path
    order) until their total size reaches it (small corpora for tests and smoke runs)."""
    _check_policy(invalid_utf8)
    root = stdlib_root()
    files = stdlib_files(root)
    if max_bytes is not None:
        kept, total = [], 0
        for file in files:
            if total >= max_bytes:
                break
            kept.append(file)
            total += file.stat().st_size
        files = kept

    def texts() -> Iterator[tuple[str, str, int]]:
        for file in files:
            text, bad = decode_utf8(file.read_bytes(), str(file), invalid_utf8)
            yield file.relative_to(root).as_posix(), text, bad

    source = f"stdlib {root}" + ("" if max_bytes is None else f" (first {max_bytes} bytes)")
    return _build(texts(), source, rule or SplitRule(), invalid_utf8)


__all__ = [
    "SPLITS",
    "STDLIB_EXCLUDED_DIRS",
    "SplitRule",
    "TextCorpus",
    "TextDocument",
    "decode_utf8",
    "read_jsonl",
    "read_text_files",
    "stdlib_corpus",
    "stdlib_files",
    "stdlib_root",
]
