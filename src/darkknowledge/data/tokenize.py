"""Tokenisers for language models: a teacher's, or a byte-level BPE trained on a corpus.

Every tokeniser is a ``tokenizers.Tokenizer`` (the fast Rust tokeniser) inside an
:class:`LMTokenizer`, which adds what runs need:

* :attr:`LMTokenizer.digest` - SHA-256 of the tokeniser's canonical JSON (model, merges,
  normaliser, pre-tokeniser; padding/truncation settings left out): equal digests give
  equal token ids for every text, so token caches are keyed by it;
* :attr:`LMTokenizer.vocab_digest` - SHA-256 of the vocabulary (every token string in id
  order): a student and a teacher can be distilled token by token only when these agree
  (:func:`check_same_vocabulary`);
* :attr:`LMTokenizer.separator_id` - the token put between documents (``<|endoftext|>``
  when the vocabulary has it, else the end-of-sequence token);
* :meth:`LMTokenizer.save` - ``tokenizer.json`` (+ ``tokenizer_meta.json``), so a run
  stores the tokeniser it used and :meth:`LMTokenizer.load` reads it back.

Sources: :func:`tokenizer_from_hf` (a Hugging Face model directory),
:func:`tokenizer_from_gguf` (the tokeniser embedded in a GGUF file, converted by
``transformers``) and :func:`train_bpe` (byte-level BPE on the *training* split only).
Needs the ``lm`` extra (``pip install 'darkknowledge[lm]'``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from darkknowledge.data.text import TextCorpus
from darkknowledge.errors import UserError
from darkknowledge.fileio import atomic_write_json, atomic_write_text

SEPARATOR_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UserError(
            "language-model tokenisers need the 'tokenizers' package: pip install 'darkknowledge[lm]'"
        ) from None
    return tokenizers


class LMTokenizer:
    """A ``tokenizers.Tokenizer`` with its digests, separator and a description of its source."""

    def __init__(self, tokenizer: Any, source: str, eos_token: str | None = None):
        self.tokenizer = tokenizer
        self.source = source
        self.eos_token = eos_token
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size = len(vocab)
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(self.vocab_size)):
            raise UserError(f"tokeniser {source}: token ids are not 0..{self.vocab_size - 1}; it cannot index logits")
        self._tokens = [t for t, _ in by_id]
        separator = SEPARATOR_TOKEN if SEPARATOR_TOKEN in vocab else eos_token
        if separator is None or separator not in vocab:
            raise UserError(
                f"tokeniser {source}: no {SEPARATOR_TOKEN} and no end-of-sequence token to separate documents"
            )
        self.separator = separator
        self.separator_id = int(vocab[separator])

    @property
    def vocab_digest(self) -> str:
        return hashlib.sha256(json.dumps(self._tokens, ensure_ascii=False).encode("utf-8")).hexdigest()

    @property
    def digest(self) -> str:
        spec = json.loads(self.tokenizer.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        canonical = json.dumps(spec, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(f"{canonical}\nseparator={self.separator}".encode()).hexdigest()

    def describe(self) -> str:
        """One line naming the vocabulary (used in error messages)."""
        return f"{self.source} ({self.vocab_size} tokens, vocabulary {self.vocab_digest[:12]})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_meta.json`` into ``directory``."""
        directory = Path(directory)
        atomic_write_text(directory / TOKENIZER_FILE, self.tokenizer.to_str())
        meta = {
            "source": self.source,
            "eos_token": self.eos_token,
            "separator": self.separator,
            "vocab_size": self.vocab_size,
            "digest": self.digest,
            "vocab_digest": self.vocab_digest,
        }
        atomic_write_json(directory / META_FILE, meta)
        return directory / TOKENIZER_FILE

    @classmethod
    def load(cls, path: str | Path) -> LMTokenizer:
        """Read a tokeniser written by :meth:`save` (the directory or its ``tokenizer.json``)."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"tokeniser {path}: no {TOKENIZER_FILE} there; save one with LMTokenizer.save")
        tokenizer = _read_tokenizer_json(file)
        meta_file = file.parent / META_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        loaded = cls(tokenizer, meta.get("source", str(file)), meta.get("eos_token"))
        if meta.get("digest") not in (None, loaded.digest):
            raise UserError(f"tokeniser {file}: its digest differs from {meta_file}; the files do not belong together")
        return loaded


def _read_tokenizer_json(file: Path) -> Any:
    tokenizers = _tokenizers()
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as err:  # the Rust parser raises plain Exception subclasses
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"tokeniser {file}: cannot be read ({first}); the file is corrupted or not a tokenizer.json"
        ) from None


def tokenizer_from_hf(directory: str | Path) -> LMTokenizer:
    """The tokeniser of a Hugging Face model directory: its ``tokenizer.json``, else what
    ``transformers.AutoTokenizer`` converts from the directory's other tokeniser files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"Hugging Face model directory {directory}: no such directory")
    eos = _hf_eos_token(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return LMTokenizer(_read_tokenizer_json(directory / TOKENIZER_FILE), f"hf {directory}", eos)
    try:
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except ImportError:
        raise UserError("Hugging Face tokenisers need transformers: pip install 'darkknowledge[lm]'") from None
    except Exception as err:
        raise UserError(f"Hugging Face model directory {directory}: no tokeniser could be read ({err})") from None
    if getattr(auto, "backend_tokenizer", None) is None:
        raise UserError(f"Hugging Face model directory {directory}: its tokeniser has no fast (tokenizers) version")
    return LMTokenizer(auto.backend_tokenizer, f"hf {directory}", eos or auto.eos_token)


def _hf_eos_token(directory: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = directory / name
        if file.is_file():
            try:
                eos = json.loads(file.read_text()).get("eos_token")
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str):
                return eos
    return None


def tokenizer_from_gguf(file: str | Path) -> LMTokenizer:
    """The tokeniser stored in a GGUF file (converted by ``transformers``; a few seconds).
    Only the metadata is read; ``models.lm.check_gguf_file`` checks the tensors."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"GGUF file {file}: no such file")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError("GGUF tokenisers need transformers and gguf: pip install 'darkknowledge[lm]'") from None
    try:
        auto = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name, local_files_only=True)
    except Exception as err:
        raise UserError(f"GGUF file {file}: its tokeniser cannot be read ({type(err).__name__}: {err})") from None
    return LMTokenizer(auto.backend_tokenizer, f"gguf {file.name}", auto.eos_token)


def train_bpe(corpus: TextCorpus, vocab_size: int = 4096, min_frequency: int = 2) -> LMTokenizer:
    """A byte-level BPE trained on the corpus's *training* split only (every byte is a
    token, so any text encodes; ``<|endoftext|>`` is token 0)."""
    if vocab_size < 257 or vocab_size > 1_000_000:
        raise UserError(f"BPE vocab_size={vocab_size}: use 257 or more (256 bytes + the separator) up to 1000000")
    tokenizers = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    train_docs = corpus.split("train")
    if not train_docs:
        raise UserError(f"corpus {corpus.source}: its training split is empty; a BPE needs training text")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[SEPARATOR_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts() -> Iterator[str]:
        for doc in train_docs:
            yield doc.text

    tok.train_from_iterator(texts(), trainer=trainer, length=len(train_docs))
    source = f"bpe{vocab_size} trained on the train split of corpus {corpus.digest[:12]}"
    return LMTokenizer(tok, source, SEPARATOR_TOKEN)


def check_same_vocabulary(student: LMTokenizer, teacher: LMTokenizer) -> None:
    """Refuse a student whose vocabulary differs from the teacher's (token-level
    distillation compares the two distributions id by id)."""
    if student.vocab_digest != teacher.vocab_digest:
        raise UserError(
            f"the student's vocabulary {student.describe()} differs from the teacher's {teacher.describe()}; "
            "use the teacher's tokeniser for the student (and its token windows)"
        )


__all__ = [
    "SEPARATOR_TOKEN",
    "LMTokenizer",
    "check_same_vocabulary",
    "tokenizer_from_gguf",
    "tokenizer_from_hf",
    "train_bpe",
]
