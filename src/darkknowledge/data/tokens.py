"""Token arrays on disk, context windows over them, and a token batch loader.

Layout of one split (written once per corpus digest and tokeniser digest by
:func:`tokenize_corpus`, under ``root/<corpus digest[:16]>-<tokeniser digest[:16]>/``):

* ``<split>.tokens`` - the token ids, little-endian uint16 when the vocabulary has at
  most 65535 tokens, else uint32: ``[sep, doc 1, sep, doc 2, sep, ..., doc n, sep]``
  (documents in name order, ``sep`` the tokeniser's separator), read through a memory map;
* ``<split>.docs.npy`` - the offset of the separator in front of each document (int64);
* ``<split>.json`` - digests, dtype, token/document/byte counts; written last, so its
  presence means the split is complete (all files are written atomically).

Every token after the first is predicted exactly once; ``num_bytes`` is the UTF-8 byte
count of the documents' text, so bits per byte = total NLL (nats) / (ln 2 x num_bytes)
(:func:`bits_per_byte`) and :attr:`TokenArray.bytes_per_token` converts a mean per token.

:class:`TokenWindows` cuts a split into windows of ``context + 1`` tokens (inputs are the
first ``context``, targets the last ``context``): ``packing="concat"`` runs the windows
over the whole stream, across document boundaries (documents shorter than the context
are packed together); ``packing="document"`` keeps each window inside one document and
pads the last window of each document. Padded positions have ``mask`` False (targets
``IGNORE_INDEX``). :class:`TokenBatchLoader` yields ``[B, context + 1]`` batches,
deterministic per ``(seed, epoch)`` and sharded by rank exactly like
:class:`darkknowledge.data.loader.BatchLoader`; it reads only the rows of the batch from
the memory map (the window table holds two int64 per window).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from darkknowledge.data.base import DataSpec
from darkknowledge.data.loader import epoch_generator
from darkknowledge.data.resident import holds_on_device, to_device
from darkknowledge.data.text import SPLITS, Split, TextCorpus
from darkknowledge.data.tokenize import LMTokenizer
from darkknowledge.errors import UserError
from darkknowledge.fileio import atomic_write, atomic_write_json

IGNORE_INDEX = -100
FORMAT = "darkknowledge-tokens-v1"
Packing = Literal["concat", "document"]
_ENCODE_DOCS = 64  # documents encoded per batch while writing


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def bits_per_byte(total_nats: float, num_bytes: int) -> float:
    """Bits per UTF-8 byte of a summed negative log-likelihood (comparable across tokenisers)."""
    if num_bytes <= 0:
        raise UserError("bits per byte of a text without bytes is undefined; evaluate on a non-empty split")
    return total_nats / (math.log(2) * num_bytes)


@dataclass
class TokenArray:
    """One tokenised split on disk."""

    directory: Path
    split: str
    meta: dict

    @property
    def tokens_path(self) -> Path:
        return self.directory / f"{self.split}.tokens"

    @property
    def num_tokens(self) -> int:
        return int(self.meta["num_tokens"])

    @property
    def num_bytes(self) -> int:
        return int(self.meta["num_bytes"])

    @property
    def predicted_tokens(self) -> int:
        return self.num_tokens - 1

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes per predicted token."""
        return self.num_bytes / self.predicted_tokens

    def tokens(self) -> np.memmap:
        return np.memmap(self.tokens_path, dtype=np.dtype(self.meta["dtype"]), mode="r", shape=(self.num_tokens,))

    def doc_starts(self) -> np.ndarray:
        return np.load(self.directory / f"{self.split}.docs.npy", allow_pickle=False)

    @classmethod
    def open(cls, directory: str | Path, split: str) -> TokenArray:
        """Open a split written by :func:`tokenize_corpus`, checking that its files are whole."""
        directory = Path(directory)
        meta_file = directory / f"{split}.json"
        if not meta_file.is_file():
            raise UserError(f"token array {directory}: no {split}.json (split not written); run tokenize_corpus first")
        try:
            meta = json.loads(meta_file.read_text())
            dtype = np.dtype(meta["dtype"])
            expected = int(meta["num_tokens"]) * dtype.itemsize
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"token array {meta_file}: unreadable ({err}); delete the directory to rebuild it"
            ) from None
        if meta.get("format") != FORMAT:
            raise UserError(f"token array {meta_file}: format {meta.get('format')!r}, expected {FORMAT!r}; rebuild it")
        array = cls(directory, split, meta)
        if not (directory / f"{split}.docs.npy").is_file():
            raise UserError(f"token array {directory}: {split}.docs.npy is missing; delete the directory to rebuild it")
        size = array.tokens_path.stat().st_size if array.tokens_path.is_file() else -1
        if size != expected:
            raise UserError(
                f"token array {array.tokens_path}: {size} bytes, expected {expected} (truncated or replaced); "
                "delete the directory to rebuild it"
            )
        return array


def token_cache_dir(root: str | Path, corpus: TextCorpus, tokenizer: LMTokenizer) -> Path:
    return Path(root) / f"{corpus.digest[:16]}-{tokenizer.digest[:16]}"


def tokenize_corpus(
    corpus: TextCorpus, tokenizer: LMTokenizer, root: str | Path, splits: tuple[Split, ...] = SPLITS
) -> dict[str, TokenArray]:
    """Tokenise each split of ``corpus`` into ``root`` once; later calls (any process)
    open what is there. A split without documents is left out of the result."""
    directory = token_cache_dir(root, corpus, tokenizer)
    out: dict[str, TokenArray] = {}
    for split in splits:
        docs = corpus.split(split)
        if not docs:
            continue
        if (directory / f"{split}.json").is_file():
            array = TokenArray.open(directory, split)
            for key, value in (("corpus_digest", corpus.digest), ("tokenizer_digest", tokenizer.digest)):
                if array.meta.get(key) != value:
                    raise UserError(f"token array {directory}: {key} differs from this corpus/tokeniser; rebuild it")
            out[split] = array
            continue
        out[split] = _write_split(directory, split, corpus, tokenizer)
    return out


def _write_split(directory: Path, split: Split, corpus: TextCorpus, tokenizer: LMTokenizer) -> TokenArray:
    docs = corpus.split(split)
    dtype = token_dtype(tokenizer.vocab_size)
    sep = np.array([tokenizer.separator_id], dtype=dtype)
    starts: list[int] = []
    counts = {"num_tokens": 0, "num_bytes": 0}

    def write_tokens(fh) -> None:
        offset = 0
        for first in range(0, len(docs), _ENCODE_DOCS):
            chunk = docs[first : first + _ENCODE_DOCS]
            for doc, ids in zip(chunk, tokenizer.encode_batch([d.text for d in chunk])):
                starts.append(offset)
                fh.write(sep.tobytes())
                fh.write(np.asarray(ids, dtype=dtype).tobytes())
                offset += 1 + len(ids)
                counts["num_bytes"] += doc.num_bytes
        fh.write(sep.tobytes())
        counts["num_tokens"] = offset + 1

    atomic_write(directory / f"{split}.tokens", write_tokens)
    atomic_write(directory / f"{split}.docs.npy", lambda fh: np.save(fh, np.asarray(starts, dtype=np.int64)))
    meta = {
        "format": FORMAT,
        "split": split,
        "dtype": dtype.str,
        "num_tokens": counts["num_tokens"],
        "num_documents": len(docs),
        "num_bytes": counts["num_bytes"],
        "separator_id": tokenizer.separator_id,
        "vocab_size": tokenizer.vocab_size,
        "corpus_digest": corpus.digest,
        "tokenizer_digest": tokenizer.digest,
        "vocab_digest": tokenizer.vocab_digest,
        "corpus_source": corpus.source,
        "tokenizer_source": tokenizer.source,
    }
    atomic_write_json(directory / f"{split}.json", meta)
    return TokenArray(directory, split, meta)


class TokenWindows:
    """Windows of ``context + 1`` tokens over one :class:`TokenArray` (see the module doc)."""

    spec: DataSpec | None = None  # set by data.corpora for a run: classes = vocabulary, size = 1 x context
    decode: Callable[[Sequence[int]], str] | None = None  # the tokenizer's, set by data.corpora (text samples)

    def __init__(self, array: TokenArray, context: int, packing: Packing = "concat"):
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise UserError(f"context={context!r}: the context length must be a positive integer")
        if packing not in ("concat", "document"):
            raise UserError(f"packing={packing!r}: choose 'concat' (across documents) or 'document' (padded)")
        self.array, self.context, self.packing = array, context, packing
        n = array.num_tokens
        if packing == "concat":
            bounds = [(0, n)]
        else:
            starts = array.doc_starts()
            ends = np.append(starts[1:], n - 1) + 1  # each document's region ends with its closing separator
            bounds = list(zip(starts.tolist(), ends.tolist()))
        parts = []
        for begin, end in bounds:
            starts_here = np.arange(begin, end - 1, context, dtype=np.int64)
            parts.append(np.stack([starts_here, np.minimum(starts_here + context + 1, end)], axis=1))
        self.table = torch.from_numpy(np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64))
        self.pad_id = int(array.meta["separator_id"])
        self._memmap: np.memmap | None = None
        self._device_tokens: Tensor | None = None  # set by on_device
        self._device_table: Tensor | None = None

    def __len__(self) -> int:
        return int(self.table.shape[0])

    @property
    def provenance(self) -> dict[str, str]:
        """The corpus and tokenizer these windows come from (digests; a run's summary records them)."""
        return {
            "corpus_digest": self.array.meta["corpus_digest"],
            "tokenizer_digest": self.array.meta["tokenizer_digest"],
        }

    def head(self, n: int) -> TokenWindows:
        """The first ``n`` windows (benchmarks, smoke runs); the same array, context and spec."""
        out = copy.copy(self)
        out.table = self.table[:n]
        out._memmap = None
        return out

    @property
    def predicted_tokens(self) -> int:
        return int((self.table[:, 1] - self.table[:, 0] - 1).sum())

    def rows(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """``(tokens [B, context + 1] int64, mask [B, context] bool)`` of the given windows."""
        if self._memmap is None:
            self._memmap = self.array.tokens()
        memmap = self._memmap
        width = self.context + 1
        tokens = np.full((len(indices), width), self.pad_id, dtype=np.int64)
        lengths = np.empty(len(indices), dtype=np.int64)
        for row, (start, stop) in enumerate(self.table[indices].tolist()):
            tokens[row, : stop - start] = memmap[start:stop]
            lengths[row] = stop - start
        mask = torch.arange(self.context).unsqueeze(0) < torch.from_numpy(lengths - 1).unsqueeze(1)
        return torch.from_numpy(tokens), mask

    def on_device(self, device: torch.device) -> TokenWindows:
        """These windows with the token array and window table held on ``device`` (copied once):
        :meth:`rows` then gathers there from device indices, with no host copy."""
        out = copy.copy(self)
        out._device_tokens = to_device([self.array.tokens()], device)
        out._device_table = self.table.to(device)
        return out

    def device_rows(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`rows` gathered on the device of :meth:`on_device` (``indices`` there too)."""
        tokens, table = self._device_tokens, self._device_table
        if tokens is None or table is None:
            raise RuntimeError("device_rows needs the windows of on_device()")
        window = table[indices]  # (B, 2): start, stop
        offsets = torch.arange(self.context + 1, device=tokens.device)
        positions = window[:, :1] + offsets
        inside = positions < window[:, 1:]
        gathered = tokens[positions.clamp(max=tokens.shape[0] - 1)].long()
        rows = torch.where(inside, gathered, torch.full_like(gathered, self.pad_id))
        mask = offsets[:-1].unsqueeze(0) < (window[:, 1:] - window[:, :1] - 1)
        return rows, mask


@dataclass
class TokenBatch:
    tokens: Tensor  # int64 (B, T + 1)
    mask: Tensor  # bool (B, T): the target at this position is real text, not padding
    indices: Tensor  # int64 (B,) window ids

    @property
    def inputs(self) -> Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> Tensor:
        """Next tokens, ``IGNORE_INDEX`` where ``mask`` is False."""
        return self.tokens[:, 1:].masked_fill(~self.mask, IGNORE_INDEX)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    unit = "tokens"  # what train throughput counts: train_tokens_per_s (padding included; no host sync)

    @property
    def units(self) -> int:
        return int(self.tokens.shape[0] * (self.tokens.shape[1] - 1))


class TokenBatchLoader:
    """Batches of windows: shuffled per ``(seed, epoch)`` when ``train``, in order otherwise;
    ``rank``/``world_size`` shard each epoch's order as :class:`~darkknowledge.data.loader.BatchLoader` does."""

    def __init__(
        self,
        windows: TokenWindows,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        resident: bool | None = None,
    ):
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size}: must be >= 1")
        if len(windows) == 0:
            raise UserError(f"token split {windows.array.split} has no windows; use a larger corpus or split")
        self.windows, self.batch_size, self.train, self.seed = windows, batch_size, train, seed
        self.device = torch.device(device)
        # the tokens on the device when they fit (data/resident.py): no host copy per step
        self.resident = holds_on_device(windows.array.tokens().nbytes + windows.table.nbytes, self.device, resident)
        if self.resident:
            self.windows = windows.on_device(self.device)
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size

    def _shard_size(self) -> int:
        n = len(self.windows)
        if self.train and self.world_size > 1:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int = 0) -> Iterator[TokenBatch]:
        n = len(self.windows)
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch)) if self.train else torch.arange(n)
        if self.train and self.world_size > 1:
            order = order[: n - n % self.world_size]
        order = order[self.rank :: self.world_size]
        if self.resident:
            order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            if self.resident:
                yield TokenBatch(*self.windows.device_rows(idx), idx)
            else:
                tokens, mask = self.windows.rows(idx)
                yield TokenBatch(tokens.to(self.device), mask.to(self.device), idx.to(self.device))

    __iter__ = epoch


__all__ = [
    "IGNORE_INDEX",
    "TokenArray",
    "TokenBatch",
    "TokenBatchLoader",
    "TokenWindows",
    "bits_per_byte",
    "token_cache_dir",
    "token_dtype",
    "tokenize_corpus",
]
