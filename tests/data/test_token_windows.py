"""Tokenisers (BPE on the training split, digests, save/load) and packed token windows + loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")

from darkknowledge.data.text import SplitRule, TextCorpus, TextDocument, read_text_files, stdlib_root
from darkknowledge.data.tokenize import LMTokenizer, check_same_vocabulary, train_bpe
from darkknowledge.data.tokens import (
    IGNORE_INDEX,
    TokenArray,
    TokenBatchLoader,
    TokenWindows,
    bits_per_byte,
    tokenize_corpus,
)
from darkknowledge.errors import UserError

RULE = SplitRule(validation=0.2, test=0.2)


@pytest.fixture(scope="module")
def corpus() -> TextCorpus:
    """The standard library's email package (~380 KB, 29 files)."""
    return read_text_files(stdlib_root() / "email", suffixes=(".py",), rule=RULE)


@pytest.fixture(scope="module")
def bpe(corpus) -> LMTokenizer:
    return train_bpe(corpus, vocab_size=400)


@pytest.fixture(scope="module")
def arrays(corpus, bpe, tmp_path_factory):
    return tokenize_corpus(corpus, bpe, tmp_path_factory.mktemp("tokens"))


def tiny_corpus(texts: dict[str, tuple[str, str]]) -> TextCorpus:
    docs = [TextDocument(name, text, split) for name, (text, split) in sorted(texts.items())]  # type: ignore[arg-type]
    return TextCorpus(documents=docs, source="tiny", rule=RULE)


def test_bpe_learns_from_the_training_split_only_and_is_reproducible(corpus):
    word = "qzxjvqzxjv"
    texts = {d.name: (d.text, d.split) for d in corpus.documents}
    texts["held_out.py"] = ((word + " ") * 2000, "validation")
    with_held_out = tiny_corpus(texts)
    tok = train_bpe(with_held_out, vocab_size=400)
    assert len(tok.encode(word)) > 3  # never merged: the word exists only in validation
    texts["held_out.py"] = ((word + " ") * 2000, "train")
    assert len(train_bpe(tiny_corpus(texts), vocab_size=400).encode(word)) == 1
    again = train_bpe(with_held_out, vocab_size=400)
    assert (again.digest, again.vocab_digest) == (tok.digest, tok.vocab_digest)
    assert tok.vocab_size == 400 and tok.separator == "<|endoftext|>" and tok.separator_id == 0
    text = "déjà vu 🙂 \x00"  # any text encodes (byte level) and decodes back
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_save_load_round_trip_and_vocabulary_check(bpe, corpus, tmp_path):
    bpe.save(tmp_path / "tok")
    loaded = LMTokenizer.load(tmp_path / "tok")
    assert (loaded.digest, loaded.vocab_digest, loaded.separator_id) == (bpe.digest, bpe.vocab_digest, 0)
    check_same_vocabulary(loaded, bpe)
    other = train_bpe(corpus, vocab_size=300)
    with pytest.raises(UserError) as err:
        check_same_vocabulary(other, bpe)
    message = str(err.value)
    assert "300 tokens" in message and "400 tokens" in message and other.vocab_digest[:12] in message
    assert "\n" not in message
    (tmp_path / "tok" / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(UserError, match="cannot be read"):
        LMTokenizer.load(tmp_path / "tok")
    with pytest.raises(UserError, match="no tokenizer.json"):
        LMTokenizer.load(tmp_path / "missing")
    with pytest.raises(UserError, match="vocab_size=100"):
        train_bpe(corpus, vocab_size=100)


def test_token_arrays_are_written_once_and_count_bytes(corpus, bpe, arrays):
    assert set(arrays) == {"train", "validation", "test"}
    for split, array in arrays.items():
        docs = corpus.split(split)
        tokens = np.asarray(array.tokens())
        assert tokens.dtype == np.uint16
        starts = array.doc_starts()
        assert len(starts) == len(docs) and (tokens[starts] == bpe.separator_id).all() and tokens[-1] == 0
        first = docs[0]
        assert tokens[starts[0] + 1 : starts[1]].tolist() == bpe.encode(first.text)
        assert array.num_bytes == sum(len(d.text.encode("utf-8")) for d in docs)
        assert array.bytes_per_token == pytest.approx(array.num_bytes / (len(tokens) - 1))
    stamp = arrays["train"].tokens_path.stat().st_mtime_ns
    again = tokenize_corpus(corpus, bpe, arrays["train"].directory.parent)
    assert again["train"].tokens_path.stat().st_mtime_ns == stamp  # opened, not rewritten


@pytest.mark.parametrize("packing", ["concat", "document"])
def test_every_token_after_the_first_is_a_target_exactly_once(arrays, packing):
    array = arrays["validation"]
    stream = np.asarray(array.tokens()).astype(np.int64)
    windows = TokenWindows(array, context=48, packing=packing)
    loader = TokenBatchLoader(windows, batch_size=7, train=False)
    assert windows.predicted_tokens == array.predicted_tokens
    targets, predicted = [], 0
    for batch in loader:
        assert batch.tokens.shape[1] == 49 and batch.mask.shape == batch.inputs.shape
        assert (batch.targets[~batch.mask] == IGNORE_INDEX).all()
        targets.append(batch.targets[batch.mask])
        predicted += int(batch.mask.sum())
    assert predicted == len(stream) - 1
    if packing == "concat":
        assert torch.cat(targets).tolist() == stream[1:].tolist()
    else:
        assert sorted(torch.cat(targets).tolist()) == sorted(stream[1:].tolist())


def test_document_windows_stay_inside_one_document_and_pad_short_ones(tmp_path):
    texts = {f"d{i}.txt": ("x" * (3 + 40 * i), "train") for i in range(4)}  # 3, 43, 83, 123 bytes
    corpus = tiny_corpus(texts)
    tok = train_bpe(corpus, vocab_size=257)  # bytes + separator, no merges: one token per byte
    array = tokenize_corpus(corpus, tok, tmp_path)["train"]
    windows = TokenWindows(array, context=32, packing="document")
    # windows per document: ceil((n + 1) / 32) for n tokens (the closing separator is a target)
    assert len(windows) == 1 + 2 + 3 + 4
    tokens, mask = windows.rows(torch.arange(len(windows)))
    starts = set(array.doc_starts().tolist())
    for row, (start, stop) in zip(range(len(windows)), windows.table.tolist()):
        inside = np.asarray(array.tokens()[start + 1 : stop - 1])
        assert (inside != 0).all()  # no separator inside: one document per window
        assert start in starts or (start - max(s for s in starts if s < start)) % 32 == 0
        assert int(mask[row].sum()) == stop - start - 1
    assert int(mask[0].sum()) == 4  # "xxx" + separator, the rest padding
    packed = TokenWindows(array, context=32, packing="concat")
    assert len(packed) == -(-(array.num_tokens - 1) // 32)
    with pytest.raises(UserError, match="packing='sliding'"):
        TokenWindows(array, context=32, packing="sliding")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="context=0"):
        TokenWindows(array, context=0)


@pytest.mark.parametrize("packing", ["concat", "document"])
def test_tokens_held_on_the_device_give_the_same_batches(arrays, packing):
    """The device path (the CUDA default when the tokens fit; forced here on the CPU) gathers
    the same windows, padding and masks as the memory-mapped one, in the same order."""
    windows = TokenWindows(arrays["validation"], context=48, packing=packing)
    mapped = TokenBatchLoader(windows, batch_size=7, train=True, seed=1)
    resident = TokenBatchLoader(windows, batch_size=7, train=True, seed=1, resident=True)
    assert resident.resident and not mapped.resident  # on a CPU the memory map is the device's memory
    pairs = list(zip(mapped.epoch(2), resident.epoch(2), strict=True))
    assert any(not bool(a.mask.all()) for a, _ in pairs) or packing == "concat"  # padded windows were compared
    for a, b in pairs:
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask) and torch.equal(a.indices, b.indices)


def test_loader_is_deterministic_per_seed_and_epoch_and_shards_by_rank(arrays):
    windows = TokenWindows(arrays["train"], context=32)

    def ids(loader, epoch):
        return [b.indices.tolist() for b in loader.epoch(epoch)]

    one = TokenBatchLoader(windows, batch_size=8, train=True, seed=3)
    assert ids(one, 0) == ids(TokenBatchLoader(windows, batch_size=8, train=True, seed=3), 0)
    assert ids(one, 0) != ids(one, 1)
    assert ids(one, 0) != ids(TokenBatchLoader(windows, batch_size=8, train=True, seed=4), 0)
    # two ranks with batch 4 see, batch by batch, the samples of one process with batch 8
    ranks = [TokenBatchLoader(windows, batch_size=4, train=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for full, part0, part1 in zip(ids(one, 2), ids(ranks[0], 2), ids(ranks[1], 2)):
        assert part0 == full[0::2] and part1 == full[1::2]
    batch = next(iter(one))
    assert torch.equal(batch.tokens, windows.rows(batch.indices)[0])


def test_vocabulary_over_65535_tokens_is_stored_as_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i + 1 for i in range(70_000)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = LMTokenizer(raw, "word-level test vocabulary")
    corpus = tiny_corpus({"a.txt": ("w69999 w1 w65536", "train")})
    array = tokenize_corpus(corpus, tok, tmp_path)["train"]
    assert array.meta["dtype"] == "<u4"
    assert np.asarray(array.tokens()).tolist() == [0, 70_000, 2, 65_537, 0]


def test_damaged_or_foreign_token_files_are_refused(corpus, bpe, tmp_path):
    arrays = tokenize_corpus(corpus, bpe, tmp_path)
    train = arrays["train"]
    data = train.tokens_path.read_bytes()
    train.tokens_path.write_bytes(data[:-10])
    with pytest.raises(UserError, match="truncated or replaced"):
        TokenArray.open(train.directory, "train")
    (train.directory / "validation.docs.npy").unlink()
    with pytest.raises(UserError, match="validation.docs.npy is missing"):
        TokenArray.open(train.directory, "validation")
    with pytest.raises(UserError, match="no test2.json"):
        TokenArray.open(train.directory, "test2")
    other = train_bpe(corpus, vocab_size=300)
    # a tokeniser with another digest writes its own directory, never reads this one
    assert tokenize_corpus(corpus, other, tmp_path)["train"].directory != train.directory


def test_bits_per_byte_uses_the_utf8_byte_count():
    assert bits_per_byte(total_nats=np.log(2) * 100, num_bytes=50) == pytest.approx(2.0)
    with pytest.raises(UserError):
        bits_per_byte(1.0, 0)
