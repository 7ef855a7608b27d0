"""The text datasets a run can name (``data.name``): a corpus, its tokenizer and its token windows,
as the (train, validation, test) token windows of the run (:func:`load_text_splits`).

* ``stdlib``: the running interpreter's standard-library sources (offline, on every machine);
* ``textfiles``: a text file or a directory of ``.txt`` files (``data.root``);
* ``jsonl``: JSON lines with the text in ``data.text_field`` (``data.root``), e.g. the Brown corpus.

Documents are split into train / validation / test by a hash of their name
(:class:`~darkknowledge.data.text.SplitRule`), so a text run always has a validation split.
``data.tokenizer=bpe`` trains a byte-level BPE on the training split (cached under
``data/tokens``, keyed by the corpus digest and the vocabulary size); a path names a Hugging
Face tokenizer directory or a GGUF file. Tokens are written once per (corpus, tokenizer) under
``data/tokens`` and memory-mapped; every split's windows carry a
:class:`~darkknowledge.data.base.DataSpec` (classes = vocabulary, size = 1 x context) so the
checks that a teacher fits the data work as for images.
"""

from __future__ import annotations

from pathlib import Path

from darkknowledge.config import DataConfig
from darkknowledge.data.base import AugmentSpec, DataSpec
from darkknowledge.data.text import TextCorpus, read_jsonl, read_text_files, stdlib_corpus
from darkknowledge.data.tokenize import LMTokenizer, tokenizer_from_gguf, tokenizer_from_hf, train_bpe
from darkknowledge.data.tokens import TokenWindows, tokenize_corpus
from darkknowledge.errors import UserError

TEXT_DATASETS = ("stdlib", "textfiles", "jsonl")
TOKEN_DIR = Path("data") / "tokens"  # relative to the working directory, like ./data/<dataset>


def is_text(data: DataConfig) -> bool:
    return data.name in TEXT_DATASETS


def read_corpus(data: DataConfig) -> TextCorpus:
    if data.name == "stdlib":
        return stdlib_corpus(max_bytes=data.max_bytes)
    if not data.root:
        raise UserError(f"data.name={data.name} reads data.root: set it to the corpus file or directory")
    if data.max_bytes is not None:
        raise UserError("data.max_bytes applies to data.name=stdlib; cut the corpus file instead")
    if data.name == "jsonl":
        return read_jsonl(data.root, data.text_field)
    return read_text_files(data.root)


def corpus_tokenizer(data: DataConfig, corpus: TextCorpus) -> LMTokenizer:
    """``data.tokenizer``: a BPE trained on ``corpus``'s training split (cached), or a pretrained one."""
    if data.tokenizer != "bpe":
        path = Path(data.tokenizer)
        if path.suffix == ".gguf":
            return tokenizer_from_gguf(path)
        if path.is_dir():
            return tokenizer_from_hf(path)
        raise UserError(
            f"data.tokenizer={data.tokenizer}: not `bpe`, a Hugging Face tokenizer directory or a .gguf file"
        )
    saved = TOKEN_DIR / f"bpe{data.vocab_size}-{corpus.digest[:16]}" / "tokenizer.json"
    if saved.is_file():
        return LMTokenizer.load(saved)
    tokenizer = train_bpe(corpus, vocab_size=data.vocab_size)
    tokenizer.save(saved.parent)
    return tokenizer


def load_text_splits(data: DataConfig) -> tuple[TokenWindows, TokenWindows, TokenWindows]:
    """Token windows of the train, validation and test splits of ``data``'s corpus."""
    corpus = read_corpus(data)
    tokenizer = corpus_tokenizer(data, corpus)
    arrays = tokenize_corpus(corpus, tokenizer, TOKEN_DIR)
    missing = [s for s in ("train", "validation", "test") if s not in arrays]
    if missing:
        raise UserError(
            f"corpus {corpus.source}: its {' and '.join(missing)} split is empty (documents are split by a hash "
            "of their name); use a corpus with more documents"
        )
    spec = DataSpec(
        name=data.name,
        num_classes=tokenizer.vocab_size,
        in_channels=1,
        image_size=(1, data.context),
        mean=(0.0,),
        std=(1.0,),
        augment=AugmentSpec(pad=0, flip=False),
    )
    windows = {s: TokenWindows(arrays[s], data.context, data.packing) for s in ("train", "validation", "test")}
    for w in windows.values():
        w.spec = spec
        w.decode = tokenizer.decode
    return windows["train"], windows["validation"], windows["test"]
