"""A language-model teacher cache: top-k logits per token plus the full log-partition.

Per token position of each window the cache keeps the teacher's ``k`` largest logits
(int32 ids, float16 or float32 values), the log-sum-exp of the full-vocabulary logits
(float32; with it the probability of every cached token and the tail's total mass
1 - sum of the top-k probabilities are exact), the next token, and statistics that need
the full distribution and cannot be recovered from the truncated copy, computed while
writing: the target's log-probability, the entropy, the variance of the non-target
probabilities at T = 1 and ISATS's tau* (rule A, :func:`darkknowledge.nontarget.isats_search`).

On disk (one directory per key, written under a temporary name and renamed into place,
so a failed or interrupted write leaves nothing)::

    meta.json              format, version, key (corpus, tokenizer, teacher digests),
                           vocabulary, k, value dtype, window length, shards
    shard_00000/ids.npy    int32   (rows, k)     top-k token ids, largest first
                values.npy float16|float32 (rows, k)
                lse.npy    float32 (rows,)
                targets.npy int32  (rows,)       next token, -100 where unknown
                <statistic>.npy float32 (rows,)  NaN where the target is unknown

Arrays are memory-mapped on read. The key is the three digests given by the caller; a
cache opened with another key, a different format or a truncated file is a one-line
:class:`~darkknowledge.errors.UserError`.

Missing mass (docs/lm.md, "Teacher cache"): a student sees full-vocabulary teacher rows
rebuilt from the top-k. ``"uniform"`` (default) spreads the tail's mass evenly over the
V - k other tokens (:func:`darkknowledge.engine.cache.expand_topk`): the cached tokens keep
their exact probabilities and the row sums to 1. ``"ignore"`` drops the tail: the other
tokens get a logit :data:`IGNORED_LOGIT_GAP` below the largest one (probability exactly 0
in float32 at any temperature up to ~90) and the top-k are renormalised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from darkknowledge.data.resident import resident_arrays
from darkknowledge.engine.cache import expand_topk
from darkknowledge.engine.teacher import TeacherSignal
from darkknowledge.errors import UserError
from darkknowledge.fileio import DIR_MODE, atomic_write_json, staging_dir
from darkknowledge.methods.base import TeacherStatistics
from darkknowledge.methods.functional import as_float
from darkknowledge.methods.topk import TopKRows
from darkknowledge.nontarget import TAU_MAX, TAU_MIN, isats_search, nontarget_variance

LM_CACHE_FORMAT = "darkknowledge-lm-teacher-cache"
LM_CACHE_VERSION = 1
IGNORE_INDEX = -100
IGNORED_LOGIT_GAP = 1e4
MissingMass = Literal["uniform", "ignore"]
MISSING_MASS_POLICIES: tuple[str, ...] = ("uniform", "ignore")
STATISTICS = ("target_logprob", "entropy", "nontarget_variance", "tau_star")
_VALUE_DTYPES = {"float16": np.float16, "float32": np.float32}
_ROW_BLOCK = 256  # full-vocabulary rows processed at once while writing
# tau*'s search over a vocabulary: 16 grid points + 12 golden-section steps, 30 evaluations
# (the default's 65): docs/lm.md, "Teacher cache"
TAU_SEARCH: dict[str, Any] = {"grid_size": 16, "refine_size": 12}
# how the recorded tau* was searched, in meta.json: ISATS uses it where its own settings are these
TAU_STAR_SEARCH: dict[str, Any] = {"search_rule": "A", "tau_min": TAU_MIN, "tau_max": TAU_MAX, **TAU_SEARCH}


@dataclass(frozen=True)
class LMCacheKey:
    """What a cache belongs to: digests of the corpus, the tokenizer and the teacher weights."""

    corpus: str
    tokenizer: str
    teacher: str

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def lm_cache_dir(root: str | Path, key: LMCacheKey) -> Path:
    """The directory of ``key``'s cache under ``root``."""
    return Path(root) / f"lm-teacher-{key.digest()}"


def check_k(k: int, vocab_size: int) -> None:
    if not 1 <= k <= vocab_size:
        raise UserError(
            f"lm cache: k={k} is not between 1 and the teacher's vocabulary of {vocab_size} tokens; "
            f"set k to at most {vocab_size}"
        )


def token_statistics(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per-row full-distribution statistics (float32; NaN where ``targets`` is -100 and the
    statistic needs a target). ``logits`` (N, V) in any float dtype."""
    z = logits.float()
    lse = z.logsumexp(-1)
    log_p = z - lse.unsqueeze(-1)
    probs = log_p.exp()
    entropy = -(probs * log_p).sum(-1)
    known = targets != IGNORE_INDEX
    safe = targets.clamp(min=0).long()
    nan = torch.full_like(lse, float("nan"))
    target_logprob = torch.where(known, log_p.gather(1, safe.unsqueeze(1)).squeeze(1), nan)
    mask = F.one_hot(safe, z.shape[-1]).bool()
    variance = torch.where(known, nontarget_variance(probs, mask).float(), nan)
    tau = torch.where(known, isats_search(z, safe, **TAU_SEARCH).float(), nan)
    return {"target_logprob": target_logprob, "entropy": entropy, "nontarget_variance": variance, "tau_star": tau}


def _targets_of(windows: Tensor, positions: int) -> Tensor:
    """Next token of each of the first ``positions`` positions: windows of ``positions + 1``
    tokens give every target; windows of ``positions`` tokens leave the last unknown."""
    if windows.dim() != 2 or windows.shape[1] not in (positions, positions + 1):
        raise ValueError(
            f"token windows {tuple(windows.shape)} do not match teacher logits over {positions} positions "
            f"(expected (batch, {positions}) or (batch, {positions + 1}))"
        )
    targets = torch.full((windows.shape[0], positions), IGNORE_INDEX, dtype=torch.long)
    nxt = windows[:, 1:].long()
    targets[:, : nxt.shape[1]] = nxt
    return targets


SHARD_BYTES = 512 << 20  # a shard being written is held in memory: its size, whatever k


def token_bytes(k: int, value_dtype: str, statistics: bool) -> int:
    """Bytes a cached token takes: k ids (int32) and values, its log-sum-exp and target, the statistics."""
    return k * (4 + np.dtype(_VALUE_DTYPES[value_dtype]).itemsize) + 4 + 4 + 4 * (len(STATISTICS) if statistics else 0)


class LMCacheWriter:
    """Writes a cache batch by batch; :meth:`close` renames it into place.

    Use as a context manager (an exception removes the partial directory) or call
    :meth:`add` then :meth:`close`. ``add(windows, logits)``: ``logits`` (B, L, V) are the
    teacher's at the L positions of ``windows`` ((B, L) or (B, L + 1) token ids). A shard holds
    ``shard_tokens`` tokens (default: as many as fit in :data:`SHARD_BYTES`).
    """

    def __init__(
        self,
        path: str | Path,
        key: LMCacheKey,
        *,
        k: int,
        value_dtype: Literal["float16", "float32"] = "float16",
        shard_tokens: int | None = None,
        statistics: bool = True,
    ):
        if value_dtype not in _VALUE_DTYPES:
            raise UserError(f"lm cache: value_dtype must be one of {list(_VALUE_DTYPES)}, got {value_dtype!r}")
        if k < 1:
            raise UserError(f"lm cache: k must be at least 1, got {k}")
        self.path, self.key, self.k = Path(path), key, k
        self.value_dtype, self.statistics = value_dtype, statistics
        self.shard_tokens = shard_tokens or max(1, SHARD_BYTES // token_bytes(k, value_dtype, statistics))
        if self.path.exists():
            raise UserError(f"lm cache: {self.path} already exists; remove it or choose another directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = staging_dir(self.path)
        self.vocab_size: int | None = None
        self.window_length: int | None = None
        self._shards: list[dict[str, int]] = []
        # the shard being written, preallocated: many small retained arrays between the
        # full-vocabulary temporaries fragment the heap (docs/lm.md, "Teacher cache")
        self._buffer: dict[str, np.ndarray] = {}
        self._buffered_rows = 0
        self._buffered_windows = 0

    def __enter__(self) -> LMCacheWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    @torch.no_grad()
    def add(self, windows: Tensor, logits: Tensor, targets: Tensor | None = None) -> None:
        """``targets`` (B, L), -100 at padding, override the next tokens read from ``windows``."""
        if logits.dim() != 3:
            raise ValueError(f"teacher logits must be (batch, positions, vocab), got {tuple(logits.shape)}")
        b, length, vocab = logits.shape
        if self.vocab_size is None:
            check_k(self.k, vocab)
            self.vocab_size, self.window_length = vocab, length
        if (vocab, length) != (self.vocab_size, self.window_length):
            raise ValueError(
                f"every batch needs {self.window_length} positions over {self.vocab_size} tokens, "
                f"got {length} over {vocab}"
            )
        if targets is None:
            targets = _targets_of(windows.cpu(), length)
        elif targets.shape != (b, length):
            raise ValueError(f"targets {tuple(targets.shape)} do not match teacher logits {tuple(logits.shape)}")
        targets = targets.cpu().long().reshape(-1)
        flat = logits.detach().reshape(-1, vocab)
        rows = b * length
        if self._buffered_rows and self._buffered_rows + rows > len(self._buffer["lse"]):
            self._flush()  # shards end between batches, so each holds whole windows
        if not self._buffered_rows:
            self._allocate(max(self.shard_tokens, rows))
        offset = self._buffered_rows
        for start in range(0, rows, _ROW_BLOCK):
            z = flat[start : start + _ROW_BLOCK].float()
            y = targets[start : start + _ROW_BLOCK].to(z.device)
            values, ids = z.topk(self.k, dim=-1)
            part = {"ids": ids, "values": values, "lse": z.logsumexp(-1), "targets": y}
            if self.statistics:
                part.update(token_statistics(z, y))
            at = slice(offset + start, offset + start + z.shape[0])
            for name, tensor in part.items():
                self._buffer[name][at] = tensor.cpu().numpy()  # cast to the shard's dtype on assignment
        self._buffered_rows += rows
        self._buffered_windows += b

    def _allocate(self, capacity: int) -> None:
        k, stats = self.k, STATISTICS if self.statistics else ()
        self._buffer = {
            "ids": np.empty((capacity, k), np.int32),
            "values": np.empty((capacity, k), _VALUE_DTYPES[self.value_dtype]),
            "lse": np.empty(capacity, np.float32),
            "targets": np.empty(capacity, np.int32),
            **{name: np.empty(capacity, np.float32) for name in stats},
        }

    def _flush(self) -> None:
        if not self._buffered_rows:
            return
        shard = self._tmp / f"shard_{len(self._shards):05d}"
        shard.mkdir()
        for name, array in self._buffer.items():
            np.save(shard / f"{name}.npy", array[: self._buffered_rows])
        self._shards.append({"rows": self._buffered_rows, "windows": self._buffered_windows})
        self._buffer, self._buffered_rows, self._buffered_windows = {}, 0, 0

    def close(self) -> LMTeacherCache:
        """Finish the shards, write meta.json and rename the directory into place."""
        try:
            self._flush()
            if not self._shards:
                raise UserError("lm cache: no token windows were given; nothing to cache")
            meta = {
                "format": LM_CACHE_FORMAT,
                "version": LM_CACHE_VERSION,
                "key": asdict(self.key),
                "vocab_size": self.vocab_size,
                "k": self.k,
                "value_dtype": self.value_dtype,
                "window_length": self.window_length,
                "statistics": list(STATISTICS) if self.statistics else [],
                **({"tau_star_search": TAU_STAR_SEARCH} if self.statistics else {}),
                "shards": self._shards,
            }
            atomic_write_json(self._tmp / "meta.json", meta)
            os.chmod(self._tmp, DIR_MODE)
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return LMTeacherCache.open(self.path, self.key)


def write_lm_cache(
    path: str | Path,
    key: LMCacheKey,
    batches: Iterable[tuple[Tensor, ...]],
    *,
    k: int,
    value_dtype: Literal["float16", "float32"] = "float16",
    shard_tokens: int | None = None,
    statistics: bool = True,
) -> LMTeacherCache:
    """Cache ``(token windows, teacher logits[, targets])`` batches under ``path`` (see
    :class:`LMCacheWriter`); window i of the cache is the i-th window given."""
    with LMCacheWriter(
        path, key, k=k, value_dtype=value_dtype, shard_tokens=shard_tokens, statistics=statistics
    ) as writer:
        for batch in batches:
            writer.add(*batch)
        return writer.close()


def teacher_logit_batches(loader: Iterable[Any], teacher: Callable[[Tensor], Tensor]) -> Iterator[tuple[Tensor, ...]]:
    """``(tokens, teacher logits, targets)`` for each batch of an in-order token loader
    (:class:`darkknowledge.data.tokens.TokenBatchLoader` with ``train=False``: batches with
    ``tokens``, ``inputs``, ``targets`` and window ``indices``), for :func:`write_lm_cache`.
    The windows must arrive in order, so that cache window i is the loader's window i."""
    expected = 0
    for batch in loader:
        indices = batch.indices.reshape(-1).cpu()
        if not torch.equal(indices, torch.arange(expected, expected + indices.numel())):
            raise ValueError("the cache needs the token windows in order: use a loader with train=False, one rank")
        expected += indices.numel()
        with torch.no_grad():
            logits = teacher(batch.inputs)
        yield batch.tokens, logits, batch.targets


def expand_topk_rows(
    ids: Tensor, values: Tensor, lse: Tensor, vocab_size: int, missing_mass: MissingMass = "uniform"
) -> Tensor:
    """Full-vocabulary logits ``(N, V)`` from cached top-k rows under a missing-mass policy."""
    values, lse = as_float(values), as_float(lse).to(as_float(values).dtype)
    if missing_mass == "uniform":
        return expand_topk(values, ids.long(), lse, vocab_size)
    if missing_mass == "ignore":
        floor = values.amax(-1, keepdim=True) - IGNORED_LOGIT_GAP
        out = floor.expand(values.shape[0], vocab_size).clone()
        return out.scatter_(1, ids.long(), values)
    raise UserError(f"lm cache: missing_mass must be one of {list(MISSING_MASS_POLICIES)}, got {missing_mass!r}")


def topk_kl(
    logits: Tensor,
    ids: Tensor,
    values: Tensor,
    lse: Tensor,
    missing_mass: MissingMass = "uniform",
    *,
    reverse: bool = False,
) -> Tensor:
    """Per-row KL(p || p_k) of the full softmax p against its rebuild p_k from top-k rows
    (``reverse``: KL(p_k || p)), in float64. Under ``"ignore"`` p_k is 0 on the tail, so
    KL(p || p_k) is infinite wherever the tail has mass, and KL(p_k || p) = -log(1 - tail mass)."""
    z = logits.double()
    rebuilt = expand_topk_rows(ids, values.double(), lse.double(), z.shape[-1], missing_mass).double()
    log_p = z.log_softmax(-1)
    q = rebuilt.softmax(-1)
    log_q = q.log()  # -inf where q underflows to 0 (the ignored tail)
    a, log_a, log_b = (q, log_q, log_p) if reverse else (log_p.exp(), log_p, log_q)
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def truncation_kl(logits: Tensor, k: int, missing_mass: MissingMass = "uniform", *, reverse: bool = False) -> Tensor:
    """:func:`topk_kl` of each row of ``logits`` (N, V) against its own top-k (float64 values)."""
    check_k(k, logits.shape[-1])
    z = logits.double()
    values, ids = z.topk(k, dim=-1)
    return topk_kl(z, ids, values, z.logsumexp(-1), missing_mass, reverse=reverse)


class TopKTeacher:
    """Cached teacher rows of a batch of windows as a :class:`~darkknowledge.methods.tokens.TokenTeacher`:
    ``rows(index)`` rebuilds full-vocabulary logits for the flattened positions ``index`` only."""

    def __init__(
        self,
        ids: Tensor,
        values: Tensor,
        lse: Tensor,
        vocab_size: int,
        missing_mass: MissingMass = "uniform",
        tau_star: Tensor | None = None,
        tau_search: dict[str, Any] | None = None,
    ):
        if missing_mass not in MISSING_MASS_POLICIES:
            raise UserError(
                f"lm cache: missing_mass must be one of {list(MISSING_MASS_POLICIES)}, got {missing_mass!r}"
            )
        b, length, k = ids.shape
        self.shape = (b, length, vocab_size)
        self.vocab_size, self.missing_mass = vocab_size, missing_mass
        self._ids, self._values, self._lse = ids.reshape(-1, k), values.reshape(-1, k), lse.reshape(-1)
        self._tau_star = None if tau_star is None or tau_search is None else tau_star.reshape(-1)
        self._tau_search = tau_search

    def statistics(self, index: Tensor) -> TeacherStatistics | None:
        """The full distribution's tau* of the flattened positions ``index``, recorded when the
        cache was written (None: it recorded none)."""
        if self._tau_star is None or self._tau_search is None:
            return None
        return TeacherStatistics(self._tau_star.index_select(0, index.to(self._tau_star.device)), self._tau_search)

    def _select(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k ids, values and log-partitions of the flattened positions ``index``."""
        index = index.to(self._ids.device)
        return self._ids.index_select(0, index), self._values.index_select(0, index), self._lse.index_select(0, index)

    def rows(self, index: Tensor) -> Tensor:
        return expand_topk_rows(*self._select(index), self.vocab_size, self.missing_mass)

    def topk_rows(self, index: Tensor) -> TopKRows | None:
        """The flattened positions ``index`` as top-k rows (None unless the tail is ``"uniform"``,
        the one policy :class:`~darkknowledge.methods.topk.TopKRows` describes)."""
        if self.missing_mass != "uniform":
            return None
        return TopKRows(*self._select(index), self.vocab_size)

    def dense(self) -> Tensor:
        """All rows, ``(B, L, V)`` (small inputs and tests)."""
        return self.rows(torch.arange(self._lse.numel())).reshape(self.shape)


class LMTeacherCache:
    """A cache opened for reading (memory-mapped); see the module docstring."""

    def __init__(self, path: Path, meta: dict[str, Any], shards: list[dict[str, np.ndarray]]):
        self.path, self.meta, self._shards = path, meta, shards
        self.vocab_size: int = meta["vocab_size"]
        self.k: int = meta["k"]
        self.window_length: int = meta["window_length"]
        counts = [s["windows"] for s in meta["shards"]]
        self._first_window = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_windows = int(self._first_window[-1])

    @classmethod
    def open(cls, path: str | Path, key: LMCacheKey | None = None) -> LMTeacherCache:
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"lm cache: {path} is not a teacher cache (no meta.json); build it first")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"lm cache: cannot read {meta_path}: {exc}") from None
        if meta.get("format") != LM_CACHE_FORMAT or meta.get("version") != LM_CACHE_VERSION:
            raise UserError(
                f"lm cache: {path} has format {meta.get('format')!r} version {meta.get('version')!r}, "
                f"expected {LM_CACHE_FORMAT!r} version {LM_CACHE_VERSION}; rebuild the cache"
            )
        if key is not None:
            stored = meta.get("key", {})
            wrong = [
                f"{field} {stored.get(field)!r} (this run: {mine!r})"
                for field, mine in asdict(key).items()
                if stored.get(field) != mine
            ]
            if wrong:
                raise UserError(
                    f"lm cache: {path} belongs to another {', '.join(wrong)}; "
                    "build a cache for this corpus, tokenizer and teacher"
                )
        names = ["ids", "values", "lse", "targets", *meta.get("statistics", [])]
        shards = []
        for i, info in enumerate(meta["shards"]):
            arrays = {}
            for name in names:
                file = path / f"shard_{i:05d}" / f"{name}.npy"
                try:
                    array = np.load(file, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise UserError(f"lm cache: {file} is missing or truncated ({exc}); rebuild the cache") from None
                if array.shape[0] != info["rows"]:
                    raise UserError(
                        f"lm cache: {file} has {array.shape[0]} rows, meta.json says {info['rows']}; rebuild the cache"
                    )
                arrays[name] = array
            shards.append(arrays)
        return cls(path, meta, shards)

    def _gather(self, name: str, windows: Tensor) -> np.ndarray:
        length = self.window_length
        out = []
        for w in windows.reshape(-1).tolist():
            if not 0 <= w < self.num_windows:
                raise IndexError(f"window {w} outside the cache's {self.num_windows} windows")
            shard = int(np.searchsorted(self._first_window, w, side="right")) - 1
            local = w - int(self._first_window[shard])
            out.append(np.asarray(self._shards[shard][name][local * length : (local + 1) * length]))
        return np.stack(out)

    def shard_arrays(self, name: str) -> list[np.ndarray]:
        """``name``'s memory-mapped array of every shard, in cache order (rows: positions)."""
        return [shard[name] for shard in self._shards]

    def window_arrays(self, windows: Tensor, name: str) -> Tensor:
        """``name`` (ids, values, lse, targets or a statistic) for ``windows``: (B, L[, k])."""
        return torch.from_numpy(self._gather(name, windows))

    @property
    def tau_search(self) -> dict[str, Any] | None:
        """How the recorded tau* was searched (:data:`TAU_STAR_SEARCH`); None where it was not recorded."""
        return self.meta.get("tau_star_search") if "tau_star" in self.meta.get("statistics", []) else None

    def teacher(self, windows: Tensor, missing_mass: MissingMass = "uniform") -> TopKTeacher:
        """The cached teacher of a batch of windows (window indices in cache order)."""
        search = self.tau_search
        return TopKTeacher(
            self.window_arrays(windows, "ids"),
            self.window_arrays(windows, "values"),
            self.window_arrays(windows, "lse"),
            self.vocab_size,
            missing_mass,
            tau_star=self.window_arrays(windows, "tau_star") if search is not None else None,
            tau_search=search,
        )

    def first_predicted(self, limit: int) -> tuple[Tensor, Tensor]:
        """The first ``limit`` positions with a known next token, in cache order: the windows
        ``0 .. W-1`` they lie in, and their flat positions over those windows' rows."""
        found: list[np.ndarray] = []
        count = offset = 0
        for shard in self._shards:
            targets = np.asarray(shard["targets"])
            rows = np.flatnonzero(targets != IGNORE_INDEX)[: limit - count] + offset
            found.append(rows)
            count, offset = count + len(rows), offset + len(targets)
            if count >= limit:
                break
        flat = torch.from_numpy(np.concatenate(found).astype(np.int64))
        windows = int(flat[-1]) // self.window_length + 1 if flat.numel() else 0
        return torch.arange(windows), flat

    def statistic(self, name: str) -> Tensor:
        """One statistic over every cached position, in cache order, (rows,)."""
        if name not in self.meta.get("statistics", []):
            raise UserError(
                f"lm cache: {self.path} has no statistic {name!r} (has: {self.meta.get('statistics')}); "
                "rebuild it with statistics"
            )
        return torch.from_numpy(np.concatenate([np.asarray(s[name]) for s in self._shards]))


__all__ = [
    "IGNORED_LOGIT_GAP",
    "LMCacheKey",
    "LMCacheWriter",
    "LMTeacherCache",
    "MISSING_MASS_POLICIES",
    "STATISTICS",
    "TopKTeacher",
    "expand_topk_rows",
    "lm_cache_dir",
    "token_statistics",
    "topk_kl",
    "truncation_kl",
    "teacher_logit_batches",
    "write_lm_cache",
]


class LMCachedTeacher(TeacherSignal):
    """A language-model teacher replayed from an :class:`LMTeacherCache` built over the training
    windows in order: a batch of windows (``batch.indices``) gets their cached top-k rows as a
    :class:`TopKTeacher` (full-vocabulary rows rebuilt per chunk by the token methods)."""

    def __init__(
        self,
        cache: LMTeacherCache,
        device: torch.device | str = "cpu",
        missing_mass: MissingMass = "uniform",
        resident: bool | None = None,
    ):
        self.cache, self.device, self.missing_mass = cache, torch.device(device), missing_mass
        self.num_classes = cache.vocab_size
        # tau* of the full distribution, where the cache recorded it and how it searched it (methods use it
        # where their settings match: ISATS)
        self.tau_search = cache.tau_search
        self.names = ("ids", "values", "lse", *(("tau_star",) if self.tau_search is not None else ()))
        # every shard's rows, in cache order
        self._on_device = resident_arrays({n: cache.shard_arrays(n) for n in self.names}, self.device, resident)

    def __call__(self, batch: Any) -> Any:
        if self._on_device is not None:  # gathered on the device: no host sync
            windows = batch.indices.to(self.device).reshape(-1, 1)
            rows = windows * self.cache.window_length + torch.arange(self.cache.window_length, device=self.device)
            arrays = {name: self._on_device[name][rows] for name in self.names}
        else:
            windows = batch.indices.cpu()
            arrays = {name: self.cache.window_arrays(windows, name).to(self.device) for name in self.names}
        return TopKTeacher(
            arrays["ids"],
            arrays["values"],
            arrays["lse"],
            self.cache.vocab_size,
            self.missing_mass,
            tau_star=arrays.get("tau_star"),
            tau_search=self.tau_search,
        )

    @property
    def resident(self) -> bool:
        """Whether the cache is held in the device's memory."""
        return self._on_device is not None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "lm_cache",
            "path": str(self.cache.path),
            "topk": self.cache.k,
            "missing_mass": self.missing_mass,
            "resident": self.resident,
        }
