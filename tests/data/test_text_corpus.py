"""Text corpora: readers, the standard-library corpus, splits by name hash, digests, UTF-8 policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from darkknowledge.data.text import (
    STDLIB_EXCLUDED_DIRS,
    SplitRule,
    decode_utf8,
    read_jsonl,
    read_text_files,
    stdlib_corpus,
    stdlib_files,
    stdlib_root,
)
from darkknowledge.errors import UserError

BROWN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "text" / "brown.jsonl"


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def test_directory_reader_is_recursive_by_suffix_and_names_documents_by_relative_path(tmp_path):
    write(tmp_path / "a.txt", "first document\n")
    write(tmp_path / "sub" / "deeper" / "b.txt", "second document\n")
    write(tmp_path / "sub" / "c.md", "not a .txt file\n")
    write(tmp_path / "empty.txt", "  \n")  # whitespace only: no document
    corpus = read_text_files(tmp_path)
    assert [d.name for d in corpus.documents] == ["a.txt", "sub/deeper/b.txt"]
    both = read_text_files(tmp_path, suffixes=(".txt", ".md"))
    assert [d.name for d in both.documents] == ["a.txt", "sub/c.md", "sub/deeper/b.txt"]
    single = read_text_files(tmp_path / "sub" / "c.md")
    assert [(d.name, d.text) for d in single.documents] == [("c.md", "not a .txt file\n")]


def test_jsonl_reader_takes_the_named_field_and_id(tmp_path):
    lines = [{"id": "x1", "body": "alpha", "text": "ignored"}, {"id": "x2", "body": "beta"}]
    file = write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n\n")
    corpus = read_jsonl(file, text_field="body", id_field="id")
    assert [(d.name, d.text) for d in corpus.documents] == [("x1", "alpha"), ("x2", "beta")]
    assert [d.name for d in read_jsonl(file, text_field="body").documents] == ["line1", "line2"]
    with pytest.raises(UserError, match="no string field 'text'"):
        read_jsonl(file)  # line 2 has no "text"
    with pytest.raises(UserError, match=r"c.jsonl:1: no field 'name'"):
        read_jsonl(file, text_field="body", id_field="name")
    write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(tmp_path / "bad.jsonl")
    write(tmp_path / "dup.jsonl", '{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(UserError, match="two documents are named '1'"):
        read_jsonl(tmp_path / "dup.jsonl", id_field="id")


def test_split_depends_on_the_name_only(tmp_path):
    for i in range(60):
        write(tmp_path / f"f{i:02d}.txt", f"document {i}\n")
    rule = SplitRule(validation=0.2, test=0.2)
    corpus = read_text_files(tmp_path, rule=rule)
    splits = {d.name: d.split for d in corpus.documents}
    assert set(splits.values()) == {"train", "validation", "test"}
    # adding and removing files moves no other file between splits
    write(tmp_path / "new.txt", "a new document\n")
    (tmp_path / "f00.txt").unlink()
    changed = {d.name: d.split for d in read_text_files(tmp_path, rule=rule).documents}
    assert all(changed[name] == split for name, split in splits.items() if name != "f00.txt")
    # the same names under another salt land elsewhere
    other = read_text_files(tmp_path, rule=SplitRule(validation=0.2, test=0.2, salt="other"))
    assert {d.name: d.split for d in other.documents} != changed
    with pytest.raises(UserError, match="leave nothing to train on"):
        SplitRule(validation=0.6, test=0.4)


def test_digest_covers_content_names_and_split_rule(tmp_path):
    write(tmp_path / "a.txt", "alpha\n")
    write(tmp_path / "b.txt", "beta\n")
    digest = read_text_files(tmp_path).digest
    assert read_text_files(tmp_path).digest == digest
    assert read_text_files(tmp_path, rule=SplitRule(validation=0.5, test=0.0)).digest != digest
    write(tmp_path / "b.txt", "beta!\n")
    assert read_text_files(tmp_path).digest != digest
    stats = read_text_files(tmp_path).stats()
    assert stats["splits"]["train"]["bytes"] + stats["splits"]["validation"]["bytes"] + stats["splits"]["test"][
        "bytes"
    ] == len("alpha\n") + len("beta!\n")


def test_invalid_utf8_is_refused_by_default_and_counted_when_replaced(tmp_path):
    # two invalid sequences (a lone continuation byte, a truncated 3-byte sequence) and one genuine U+FFFD
    data = "ok \ufffd é ".encode() + b"\x80 x \xe2\x82"
    assert decode_utf8(data, "here", "replace") == ("ok \ufffd é \ufffd x \ufffd", 2)
    write(tmp_path / "good.txt", "fine\n")
    write(tmp_path / "bad.txt", data)
    with pytest.raises(UserError, match=r"bad.txt: invalid UTF-8 at byte 10 .*invalid_utf8='replace'"):
        read_text_files(tmp_path)
    corpus = read_text_files(tmp_path, invalid_utf8="replace")
    assert corpus.replaced == 2 and corpus.stats()["replaced"] == 2
    assert corpus.digest != read_text_files(tmp_path / "good.txt", invalid_utf8="replace").digest
    write(tmp_path / "bad.jsonl", b'{"text": "a\x80"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: invalid UTF-8"):
        read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="invalid_utf8='ignore'"):
        read_text_files(tmp_path, invalid_utf8="ignore")  # type: ignore[arg-type]


def test_empty_or_missing_corpus_is_refused(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        read_text_files(tmp_path / "missing")
    with pytest.raises(UserError, match="the corpus is empty"):
        read_text_files(tmp_path)
    write(tmp_path / "blank.txt", "\n\n   \n")
    with pytest.raises(UserError, match="the corpus is empty"):
        read_text_files(tmp_path)
    write(tmp_path / "blank.jsonl", '{"text": ""}\n')
    with pytest.raises(UserError, match="the corpus is empty"):
        read_jsonl(tmp_path / "blank.jsonl")


def test_stdlib_corpus_leaves_out_tests_and_third_party_packages():
    root = stdlib_root()
    files = stdlib_files()
    assert (root / "json" / "decoder.py") in files
    assert len(files) > 100
    for file in files:
        parts = set(file.relative_to(root).parts[:-1])
        assert not parts & STDLIB_EXCLUDED_DIRS, file
        assert not file.name.startswith("_sysconfigdata")
    small = stdlib_corpus(max_bytes=200_000)
    assert small.documents and all(d.name.endswith(".py") for d in small.documents)
    assert sum(d.num_bytes for d in small.documents) < 200_000 + max(f.stat().st_size for f in files)
    assert small.digest == stdlib_corpus(max_bytes=200_000).digest
    assert small.stats()["source"].startswith("stdlib ")


@pytest.mark.skipif(not BROWN.is_file(), reason="Brown corpus not present (../shared/data/text/brown.jsonl)")
def test_brown_jsonl_reads_as_500_documents():
    corpus = read_jsonl(BROWN, text_field="text", id_field="id")
    assert len(corpus.documents) == 500
    stats = corpus.stats()
    counts = [stats["splits"][s]["documents"] for s in ("train", "validation", "test")]
    assert sum(counts) == 500 and min(counts) > 0
