"""Rank consistency of the non-target classes between models (streaming, batched).

Per sample, the C - 1 non-target classes are ranked by logit (temperature scaling and
ATS do not change this order). Between two models A and B (Li et al., arXiv 2405.13078
claim that teachers of different capacities agree on this ranking; metrics as in
``methods.md`` §3.5):

* top-k overlap  |TopK_A ∩ TopK_B| / k, k in (1, 5, 10) clipped to C - 1
  (ties at the k-th place are broken by column order: the later column ranks higher);
* Spearman rho   Pearson correlation of the rank vectors, ties get average ranks;
* Kendall tau-b  (n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2)) with n_0 = n(n-1)/2 and
                 n_1, n_2 the tied pairs in A and B (same definition as
                 ``scipy.stats.kendalltau``'s default variant).

Each is averaged over samples; a sample where a coefficient is undefined (a model
gives all non-target classes the same logit) is skipped and counted.

The work is integer arithmetic in numpy on CPU, one row sort per model and chunk
(docs/diagnostics.md, "Rank consistency"): float scores become order-preserving int32
keys, packed with their column id into one int64 and sorted, so ties come out in column
order. Twice the average rank is an integer, so Spearman's sums are exact. Kendall tau-b
is exact and O(n log n) per row: sort by (tie group in A, tie group in B), then count
the inversions of the B ranks by a bottom-up merge count. The accumulator spreads
blocks of rows over worker threads (numpy releases the GIL).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from darkknowledge.diagnostics._common import check_logits_targets, jsonable, to_tensor
from darkknowledge.diagnostics.parallel import map_blocks

__all__ = [
    "RankInfo",
    "rank_info",
    "average_ranks",
    "spearman_rows",
    "kendall_tau_b_rows",
    "topk_overlap_rows",
    "count_inversions",
    "rank_fidelity",
    "RankConsistency",
    "RankConsistencyAccumulator",
    "rank_consistency",
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# rows per work item of the accumulator's threads (a few hundred KB of int32 per array)
_BLOCK_ROWS = 256
_LEFT_OUT_KEY = np.iinfo(np.int32).min  # below the key of every non-NaN float


@dataclass
class RankInfo:
    """Per-row ranking of the columns of a (B, W) score matrix (numpy arrays, int32
    unless noted); with ``rank_info(scores, exclude=targets)`` one column per row is left
    out and n = W - 1 columns are ranked, else n = W. A tie group is a run of equal scores
    in ``order``; its "first" is its first position there (0-based)."""

    order: np.ndarray  # (B, n) column ids by ascending score; equal scores in column order
    first_sorted: np.ndarray  # (B, n) the tie group's first position, in ``order``
    first: np.ndarray  # (B, W) the same by column (0 where left out): equal exactly for tied scores
    rank2: np.ndarray  # (B, W) twice the average rank (ranks 1..n, ties averaged); n + 1 where left out
    ties: np.ndarray  # (B,) tied pairs, sum over groups of t (t - 1) / 2, int64

    @property
    def num_ranked(self) -> int:
        return int(self.order.shape[1])

    @property
    def avg_rank(self) -> Tensor:
        """(B, W) average ranks 1..n as ``scipy.stats.rankdata`` (float64; (n + 1) / 2
        where left out)."""
        return torch.from_numpy(self.rank2.astype(np.float64) / 2.0)

    def rows(self, index: np.ndarray) -> RankInfo:
        """The rows ``index`` (an integer array)."""
        return RankInfo(
            self.order[index], self.first_sorted[index], self.first[index], self.rank2[index], self.ties[index]
        )


def _order_keys(scores: np.ndarray) -> np.ndarray:
    """Order-preserving integer image of float16 (int16 keys) or float32 (int32 keys)
    scores: the IEEE bits with the magnitude bits of negative numbers flipped, plus one
    there so that -0.0 and +0.0 share the key 0 (the type's minimum never occurs)."""
    int_type = np.int16 if scores.dtype == np.float16 else np.int32
    bits: np.ndarray = np.ascontiguousarray(scores).view(int_type)
    sign = np.right_shift(bits, bits.itemsize * 8 - 1)  # 0 or -1
    key = bits ^ (sign & int_type(np.iinfo(int_type).max))
    key -= sign
    return key


def _sorted_with_order(scores: np.ndarray, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values or an order-preserving integer image of them, column ids) per row,
    ascending with ties in column order; ``exclude``: (B,) column left out per row.

    float16/float32: the integer key and the column id share one machine integer (key in
    the high half, id in the low half, read back through views), sorted as plain integers."""
    b, w = scores.shape
    rows = np.arange(b)
    half = scores.dtype == np.float16 and w <= 2**16
    if (half or (scores.dtype == np.float32 and w < 2**31)) and sys.byteorder == "little":
        part, whole, key_type = (np.uint16, np.int32, np.int16) if half else (np.uint32, np.int64, np.int32)
        pair = np.empty((b, w, 2), dtype=part)  # little-endian: [low = column id, high = key]
        pair[:, :, 0] = np.arange(w, dtype=part)
        keys = pair[:, :, 1].view(key_type)
        keys[...] = _order_keys(scores)
        if exclude is not None:
            keys[rows, exclude] = np.iinfo(key_type).min  # below every key: sorts first, dropped
        pair.view(whole).reshape(b, w).sort(axis=1)
        start = 0 if exclude is None else 1
        return keys[:, start:], pair[:, start:, 0].astype(np.int32)
    order = np.argsort(scores, axis=1, kind="stable")
    if exclude is not None:
        order = order[order != exclude[:, None]].reshape(b, w - 1)
    return np.take_along_axis(scores, order, axis=1), order.astype(np.int32)


def _tie_groups(sorted_vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The tie groups (size > 1) of row-sorted values (B, n), from the few positions
    that continue a group: (flat index of every member of a tie group, its group's flat
    first index, its group's size, tied pairs per row as int64)."""
    b, n = sorted_vals.shape
    same = np.zeros((b, n), dtype=bool)
    np.equal(sorted_vals[:, 1:], sorted_vals[:, :-1], out=same[:, 1:])
    cont = np.flatnonzero(same)  # continuing positions; never a row's first column
    if cont.size == 0:
        return cont, cont, cont, np.zeros(b, dtype=np.int64)
    run_start = np.ones(cont.size, dtype=bool)
    run_start[1:] = cont[1:] != cont[:-1] + 1  # consecutive continuations form one group
    run = np.cumsum(run_start) - 1
    head = cont[run_start] - 1  # each group's first flat index
    size = np.diff(np.append(np.flatnonzero(run_start), cont.size)) + 1
    members = np.concatenate([head, cont])
    group = np.concatenate([np.arange(head.size), run])
    ties = np.bincount(head // n, weights=size * (size - 1) // 2, minlength=b).astype(np.int64)
    return members, head[group], size[group], ties


def _ranking(scores: np.ndarray, exclude: np.ndarray | None = None) -> RankInfo:
    b, w = scores.shape
    vals, order = _sorted_with_order(scores, exclude)
    n = order.shape[1]
    pos = np.arange(n, dtype=np.int32)
    first_sorted = np.broadcast_to(pos, (b, n)).copy()  # untied: the position itself
    rank2_sorted = np.broadcast_to(2 * pos + 2, (b, n)).copy()
    members, head, size, ties = _tie_groups(vals)
    if members.size:
        head_in_row = (head % n).astype(np.int32)
        first_sorted.reshape(-1)[members] = head_in_row
        rank2_sorted.reshape(-1)[members] = 2 * head_in_row + size + 1  # (first + 1) + (last + 1)
    flat = order + (np.arange(b, dtype=np.int64 if b * w >= 2**31 else np.int32) * w)[:, None]
    rank2 = np.full(b * w, n + 1, dtype=np.int32) if w > n else np.empty(b * w, dtype=np.int32)
    first = np.zeros(b * w, dtype=np.int32) if w > n else np.empty(b * w, dtype=np.int32)
    rank2[flat] = rank2_sorted
    first[flat] = first_sorted
    return RankInfo(
        order=order, first_sorted=first_sorted, first=first.reshape(b, w), rank2=rank2.reshape(b, w), ties=ties
    )


def _as_scores(x: Any) -> np.ndarray:
    """A CPU numpy (B, W) array of ``x``; bfloat16 (no numpy type) becomes float32."""
    t = to_tensor(x)
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def rank_info(scores: Any, exclude: Any = None) -> RankInfo:
    """Sort each row once and derive average ranks, tie groups and tie counts.

    ``scores``: (B, W) tensor or array (float16/float32 are ranked through integer keys,
    other types by a stable argsort); ``exclude``: optional (B,) column per row to leave
    out (the target)."""
    ex = None if exclude is None else np.asarray(to_tensor(exclude).long().cpu().numpy())
    return _ranking(_as_scores(scores), ex)


def average_ranks(scores: Tensor) -> Tensor:
    """Row-wise ranks 1..n with ties averaged (as ``scipy.stats.rankdata``), float64."""
    return rank_info(scores).avg_rank


def _undefined_where_zero(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _spearman(a: RankInfo, b: RankInfo) -> np.ndarray:
    n = a.num_ranked
    ca = (a.rank2 - (n + 1)).astype(np.float64)  # 2 (rank - mean rank): 0 where left out
    cb = (b.rank2 - (n + 1)).astype(np.float64)
    num = np.einsum("ij,ij->i", ca, cb)  # integer-valued sums, exact in float64
    den = np.sqrt(np.einsum("ij,ij->i", ca, ca) * np.einsum("ij,ij->i", cb, cb))
    return _undefined_where_zero(num, den)


def spearman_rows(a: RankInfo, b: RankInfo) -> Tensor:
    """Per-row Spearman rho, float64 (NaN where either row is constant)."""
    return torch.from_numpy(_spearman(a, b))


def _count_inversions(y: np.ndarray, base: int = 8) -> np.ndarray:
    """Per row of the non-negative integer array ``y`` (B, n): pairs i < j with y_i > y_j.

    Bottom-up merge count: direct comparisons inside blocks of ``base`` (whole shifted
    rows, masked to pairs inside a block); then, level by level, the pairs between each
    two neighbouring blocks (L, R) of size s: sorting the keys 2 * value + [in R] (ties
    put L first) puts the R elements at positions p_1..p_s, and the L elements larger
    than R's k-th smallest number s - (p_k - (k - 1)), so the level contributes
    s^2 + s(s-1)/2 - sum_k p_k (whatever the order inside L and R): one integer sort per
    level, no searches.
    """
    b, n = y.shape
    total = np.zeros(b, dtype=np.int64)
    if n < 2 or b == 0:
        return total
    big = int(y.max()) + 1
    dt = np.int32 if 2 * big + 1 < 2**31 else np.int64
    size = 1 << (n - 1).bit_length()
    cur = np.full((b, size), big, dtype=dt)  # padding at the end, larger than all: no inversions
    cur[:, :n] = y
    m = min(base, size)
    in_block = np.arange(size) % m
    for d in range(1, m):
        greater = cur[:, :-d] > cur[:, d:]
        greater &= in_block[: size - d] < m - d
        total += np.count_nonzero(greater, axis=1)
    s = m
    while s < size:
        pairs = cur.reshape(-1, 2 * s)
        pairs <<= 1
        pairs |= (np.arange(2 * s) >= s).astype(dt)
        pairs.sort(axis=1)
        exact = np.float32 if s * (3 * s - 1) // 2 < 2**24 else np.float64  # sums of positions stay exact
        sum_pos = (pairs & 1).astype(exact) @ np.arange(2 * s, dtype=exact)
        total += (s * s + s * (s - 1) // 2 - sum_pos.astype(np.int64)).reshape(b, -1).sum(axis=1)
        pairs >>= 1
        s *= 2
    return total


def count_inversions(y: Tensor, base: int = 8) -> Tensor:
    """Per row of the non-negative integer tensor ``y`` (B, n), the number of pairs
    i < j with y_i > y_j (strict); exact, int64, on ``y``'s device."""
    return torch.from_numpy(_count_inversions(y.detach().cpu().numpy(), base)).to(y.device)


def _kendall(a: RankInfo, b: RankInfo) -> np.ndarray:
    n = a.num_ranked
    rows = a.order.shape[0]
    if rows == 0:
        return np.empty(0)
    dt = np.int32 if n * n < 2**31 else np.int64
    primary = a.first_sorted.astype(dt) * n
    w = b.first.shape[1]
    at = a.order + (np.arange(rows, dtype=np.int64 if rows * w >= 2**31 else np.int32) * w)[:, None]
    key = primary + b.first.reshape(-1)[at]  # (group in A, group in B), in A's order
    key.sort(axis=1)  # only ties in A move anything
    joint = _tie_groups(key)[3]
    discordant = _count_inversions(key - primary)  # B's groups in (A, B) order
    tot = n * (n - 1) // 2
    num = (tot - a.ties - b.ties + joint - 2 * discordant).astype(np.float64)
    den = np.sqrt((tot - a.ties).astype(np.float64) * (tot - b.ties).astype(np.float64))
    return _undefined_where_zero(num, den)


def kendall_tau_b_rows(a: RankInfo, b: RankInfo) -> Tensor:
    """Per-row Kendall tau-b between two rankings of the same columns, float64 (NaN
    where a row is constant in either)."""
    return torch.from_numpy(_kendall(a, b))


def _topk_overlap(a: RankInfo, b: RankInfo, k: int) -> np.ndarray:
    ta = a.order[:, -k:]
    tb = b.order[:, -k:]
    hits = (ta[:, :, None] == tb[:, None, :]).any(axis=2).sum(axis=1)
    return hits / k


def topk_overlap_rows(a: RankInfo, b: RankInfo, k: int) -> Tensor:
    """Per-row |TopK_a ∩ TopK_b| / k (float64)."""
    return torch.from_numpy(_topk_overlap(a, b, k))


@torch.no_grad()
def rank_fidelity(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
    """Mean Spearman rho between the student's and the teacher's non-target class
    rankings (a 0-d float64 tensor on the logits' device; rows where either model ties
    all non-target classes are skipped, NaN if every row is). One sort per model, on CPU."""
    s = student_logits.detach()
    t = teacher_logits.detach()
    if s.shape != t.shape or s.dim() != 2:
        raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} logits must be the same (B, C) shape")
    rho = float("nan")
    if s.shape[1] >= 3:
        y = targets.detach().long().reshape(-1).cpu().numpy()
        values = _spearman(_ranking(_as_scores(s.float()), y), _ranking(_as_scores(t.float()), y))
        ok = ~np.isnan(values)
        if ok.any():
            rho = float(values[ok].mean())
    return torch.tensor(rho, dtype=torch.float64, device=s.device)


@dataclass
class RankConsistency:
    """Pairwise rank-consistency matrices (model order = ``names``)."""

    names: list[str]
    ks: list[int]
    num_samples: int
    matrices: dict[str, list[list[float]]]  # metric -> (M, M); metric in spearman, kendall, top{k}
    undefined: dict[str, list[list[int]]]  # samples skipped per metric and pair

    def value(self, metric: str, a: str, b: str) -> float:
        return float(self.matrices[metric][self.names.index(a)][self.names.index(b)])

    @property
    def metrics(self) -> list[str]:
        return list(self.matrices)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "names": self.names,
                "ks": self.ks,
                "num_samples": self.num_samples,
                "matrices": self.matrices,
                "undefined": self.undefined,
            }
        )


class RankConsistencyAccumulator:
    """Streaming pairwise rank consistency between ``names`` models.

    ``update(logits_list, targets)`` takes one (B, C) logit chunk per model (same rows,
    same order). ``kendall_stride``: compute tau-b on every k-th row only (rows chosen
    by global index, so the result does not depend on chunking); 1 = all rows.
    ``dtype``: the precision the logits are ranked in (float32: ties are ties of the
    float32 values). Rows are processed in blocks of 256 on ``threads`` worker threads
    (default ``torch.get_num_threads()``, see :mod:`~darkknowledge.diagnostics.parallel`).
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        ks: Sequence[int] = DEFAULT_KS,
        kendall: bool = True,
        kendall_stride: int = 1,
        dtype: torch.dtype = torch.float32,
        threads: int | None = None,
    ):
        self.names = list(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"model names must be unique, got {self.names}")
        self.ks_requested = [int(k) for k in ks]
        self.kendall = kendall
        self.kendall_stride = max(1, int(kendall_stride))
        self.dtype = dtype
        m = len(self.names)
        self.num_classes: int | None = None
        self.n = 0
        self._sum: dict[str, np.ndarray] = {}
        self._cnt: dict[str, np.ndarray] = {}
        self._m = m
        self.threads = threads

    def _ks(self, c: int) -> list[int]:
        out: list[int] = []
        for k in self.ks_requested:
            kk = max(1, min(k, c - 1))
            if kk not in out:
                out.append(kk)
        return out

    def _add(self, metric: str, i: int, j: int, values: np.ndarray) -> None:
        if metric not in self._sum:
            self._sum[metric] = np.zeros((self._m, self._m))
            self._cnt[metric] = np.zeros((self._m, self._m), dtype=np.int64)
        ok = ~np.isnan(values)
        s = float(values[ok].sum(dtype=np.float64))
        c = int(ok.sum())
        self._sum[metric][i, j] += s
        self._cnt[metric][i, j] += c
        if i != j:
            self._sum[metric][j, i] += s
            self._cnt[metric][j, i] += c

    def _block(
        self, scores: list[np.ndarray], targets: np.ndarray, kendall_rows: np.ndarray | None, ks: list[int]
    ) -> dict[tuple[str, int, int], np.ndarray]:
        """Per-row values of every metric and pair for one block of rows (Kendall on
        ``kendall_rows`` only: all rows if it is None, no Kendall without ``self.kendall``)."""
        infos = [_ranking(z, targets) for z in scores]
        out: dict[tuple[str, int, int], np.ndarray] = {}
        for i, a in enumerate(infos):  # diagonal: 1 wherever defined (no work needed)
            n = a.num_ranked
            one = np.where(a.ties == n * (n - 1) // 2, np.nan, 1.0)
            out["spearman", i, i] = one
            if self.kendall:
                out["kendall", i, i] = one if kendall_rows is None else one[kendall_rows]
            for k in ks:
                out[f"top{k}", i, i] = np.ones(one.shape)
        for i, j in itertools.combinations(range(len(infos)), 2):
            a, bb = infos[i], infos[j]
            out["spearman", i, j] = _spearman(a, bb)
            if self.kendall:
                sub = (a, bb) if kendall_rows is None else (a.rows(kendall_rows), bb.rows(kendall_rows))
                out["kendall", i, j] = _kendall(*sub)
            for k in ks:
                out[f"top{k}", i, j] = _topk_overlap(a, bb, k)
        return out

    @torch.no_grad()
    def update(self, logits_list: Sequence[Any], targets: Any) -> None:
        if len(logits_list) != self._m:
            raise ValueError(f"expected {self._m} logit chunks ({self.names}), got {len(logits_list)}")
        y = to_tensor(targets).long().reshape(-1)
        zs = []
        for name, logits in zip(self.names, logits_list):
            z = to_tensor(logits)
            y = y.to(z.device)
            check_logits_targets(z, y, f"logits of {name!r}")
            zs.append(z)
        b, c = zs[0].shape
        if any(z.shape != (b, c) for z in zs):
            raise ValueError(f"all models must give the same (rows, classes); got {[tuple(z.shape) for z in zs]}")
        if self.num_classes is None:
            self.num_classes = c
        elif c != self.num_classes:
            raise ValueError(f"chunk has {c} classes, earlier chunks had {self.num_classes}")
        if b == 0 or c < 3:
            self.n += b
            return
        keep = (torch.float16, torch.float32) if self.dtype == torch.float32 else (self.dtype,)
        scores = [_as_scores(z if z.dtype in keep else z.to(self.dtype)) for z in zs]
        y_np = y.cpu().numpy()
        kendall_at = None
        if self.kendall and self.kendall_stride > 1:
            kendall_at = np.zeros(b, dtype=bool)
            kendall_at[(-self.n) % self.kendall_stride :: self.kendall_stride] = True
        self.n += b
        ks = self._ks(c)
        starts = range(0, b, _BLOCK_ROWS)

        def work(start: int) -> dict[tuple[str, int, int], np.ndarray]:
            sl = slice(start, start + _BLOCK_ROWS)
            rows = None if kendall_at is None else np.flatnonzero(kendall_at[sl])
            return self._block([z[sl] for z in scores], y_np[sl], rows, ks)

        parts = map_blocks(work, starts, self.threads)
        for key in parts[0]:
            metric, i, j = key
            self._add(metric, i, j, np.concatenate([p[key] for p in parts]))

    def result(self) -> RankConsistency:
        if self.num_classes is None:
            raise ValueError("no samples were given to the rank-consistency accumulator")
        matrices: dict[str, list[list[float]]] = {}
        undefined: dict[str, list[list[int]]] = {}
        order = ["spearman", "kendall"] + [f"top{k}" for k in self._ks(self.num_classes)]
        for metric in order:
            if metric not in self._sum:
                continue
            s, c = self._sum[metric], self._cnt[metric]
            with np.errstate(invalid="ignore", divide="ignore"):
                mat = np.where(c > 0, s / np.maximum(c, 1), np.nan)
            matrices[metric] = mat.tolist()
            if metric == "kendall" and self.kendall_stride > 1:
                expected = len(range(0, self.n, self.kendall_stride))
            else:
                expected = self.n
            undefined[metric] = (expected - c).tolist()
        return RankConsistency(
            names=self.names,
            ks=self._ks(self.num_classes),
            num_samples=self.n,
            matrices=matrices,
            undefined=undefined,
        )


def rank_consistency(
    logits: Sequence[Any],
    targets: Any,
    names: Sequence[str] | None = None,
    *,
    chunk_size: int = 4096,
    **kwargs: Any,
) -> RankConsistency:
    """One-shot convenience over full (N, C) logit arrays, processed in chunks."""
    names = list(names) if names is not None else [f"model{i}" for i in range(len(logits))]
    acc = RankConsistencyAccumulator(names, **kwargs)
    n = len(targets)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        acc.update([x[sl] for x in logits], targets[sl])
    return acc.result()
