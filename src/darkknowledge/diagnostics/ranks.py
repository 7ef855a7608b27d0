"""Rank consistency of the non-target classes between models (streaming, batched).

Per sample, the C - 1 non-target classes are ranked by logit (temperature scaling and
ATS do not change this order). Between two models A and B (Li et al., arXiv 2405.13078
claim that teachers of different capacities agree on this ranking; metrics as in
``methods.md`` §3.5):

* top-k overlap  |TopK_A ∩ TopK_B| / k, k in (1, 5, 10) clipped to C - 1
  (ties at the k-th place are broken by sort order);
* Spearman rho   Pearson correlation of the rank vectors, ties get average ranks;
* Kendall tau-b  (n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2)) with n_0 = n(n-1)/2 and
                 n_1, n_2 the tied pairs in A and B (same definition as
                 ``scipy.stats.kendalltau``'s default variant).

Each is averaged over samples; a sample where a coefficient is undefined (a model
gives all non-target classes the same logit) is skipped and counted.

Kendall tau-b is computed exactly in O(n log n) per row, vectorised over the batch:
sort by (rank_A, rank_B) (one sort of a combined integer key) and count inversions of
the resulting rank_B sequence by a bottom-up merge count: pairwise comparisons inside
blocks of 32, then log2(n / 32) levels that count, for every element of a right-hand
block, the elements of its sorted left neighbour that are larger (``searchsorted``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from darkknowledge.diagnostics._common import check_logits_targets, jsonable, to_tensor
from darkknowledge.nontarget import split_nontarget

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


@dataclass
class RankInfo:
    """Per-row ranking of a (B, n) score matrix (computed once per model and chunk)."""

    order: Tensor  # (B, n) argsort ascending
    avg_rank: Tensor  # (B, n) average ranks 1..n (float64), in the original column order
    dense: Tensor  # (B, n) dense ranks 0..(groups-1), int64, original column order
    ties: Tensor  # (B,) number of tied pairs  sum_groups t (t - 1) / 2  (int64)


def _tied_pairs_sorted(sorted_vals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For row-sorted values: (new-group flag, index of each element's group start,
    number of tied pairs per row)."""
    b, n = sorted_vals.shape
    new = torch.ones_like(sorted_vals, dtype=torch.bool)
    new[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    pos = torch.arange(n, device=sorted_vals.device).expand(b, n)
    first = torch.where(new, pos, torch.zeros_like(pos)).cummax(1).values
    ties = (pos - first).sum(1)  # each element counts the equal elements before it
    return new, first, ties


def _sort_rows(x: Tensor) -> Tensor:
    """Row-wise ascending sort (values only); numpy's SIMD sort on CPU (several times
    faster than ``torch.sort`` there), ``torch.sort`` elsewhere."""
    if x.device.type == "cpu" and x.dtype in (torch.int32, torch.int64):
        return torch.from_numpy(np.sort(x.contiguous().numpy(), axis=-1))
    return torch.sort(x, dim=-1).values


def _sort_with_order(scores: Tensor) -> tuple[Tensor, Tensor]:
    """(sorted values or an order-preserving integer image of them, argsort) per row.

    On CPU, float32 (and float16/bfloat16, exactly upcast) scores are mapped to
    order-preserving int32 keys, packed with the column index into one int64 and
    sorted as plain integers (ties come out in column order)."""
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float16, torch.bfloat16):
        v = scores.float() + 0.0  # -0.0 -> +0.0 so both zeros tie
        bits = v.contiguous().view(torch.int32)
        key32 = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        n = scores.shape[1]
        packed = (key32.to(torch.int64) << 32) | torch.arange(n, dtype=torch.int64)
        packed = _sort_rows(packed)
        return packed >> 32, packed & 0xFFFFFFFF
    vals, order = torch.sort(scores, dim=1, stable=True)
    return vals, order


def rank_info(scores: Tensor) -> RankInfo:
    """Sort once and derive average ranks, dense ranks and tie counts per row."""
    b, n = scores.shape
    vals, order = _sort_with_order(scores)
    new, first, ties = _tied_pairs_sorted(vals)
    dense_sorted = new.long().cumsum(1) - 1
    if bool((ties == 0).all()):  # no ties anywhere: ranks are ordinal
        avg_sorted = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device).expand(b, n)
    else:  # average rank of a tie group = first + (size - 1) / 2 + 1
        sizes = torch.zeros(b, n, dtype=torch.long, device=scores.device)
        sizes.scatter_add_(1, dense_sorted, torch.ones_like(dense_sorted))
        t = sizes.gather(1, dense_sorted)
        avg_sorted = first.to(torch.float64) + (t.to(torch.float64) - 1.0) / 2.0 + 1.0
    avg = torch.empty(b, n, dtype=torch.float64, device=scores.device).scatter_(1, order, avg_sorted)
    dense = torch.empty_like(dense_sorted).scatter_(1, order, dense_sorted)
    return RankInfo(order=order, avg_rank=avg, dense=dense, ties=ties)


def average_ranks(scores: Tensor) -> Tensor:
    """Row-wise ranks 1..n with ties averaged (as ``scipy.stats.rankdata``), float64."""
    return rank_info(scores).avg_rank


def spearman_rows(a: RankInfo, b: RankInfo) -> Tensor:
    """Per-row Spearman rho (NaN where either row is constant)."""
    n = a.avg_rank.shape[1]
    ca = a.avg_rank - (n + 1) / 2.0
    cb = b.avg_rank - (n + 1) / 2.0
    num = torch.linalg.vecdot(ca, cb)
    den = torch.sqrt(torch.linalg.vecdot(ca, ca) * torch.linalg.vecdot(cb, cb))
    return torch.where(
        den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(den, float("nan"))
    )


def count_inversions(y: Tensor, base: int = 8) -> Tensor:
    """Per row, the number of pairs i < j with y_i > y_j (strict), for non-negative
    integer rows ``y`` (B, n); exact, vectorised over rows.

    Bottom-up merge count: direct comparisons inside blocks of ``base``; then, level by
    level, each pair of sorted neighbouring blocks (L, R) of size s is merged by sorting
    the keys 2 * value + [in R] (ties put L first). If the R elements land at merged
    positions p_1..p_s, the L elements larger than the k-th smallest R element number
    s - (p_k - k), so the level contributes sum_k (s - p_k + k) = s^2 + s(s-1)/2 -
    sum_k p_k: one integer sort per level, no searches.
    """
    b, n = y.shape
    if n < 2 or b == 0:
        return torch.zeros(b, dtype=torch.long, device=y.device)
    big = int(y.max()) + 1
    dt = torch.int32 if 2 * big + 1 < 2**31 else torch.int64
    size = 1 << (n - 1).bit_length()
    cur = torch.full((b, size), big, dtype=dt, device=y.device)
    cur[:, :n] = y.to(dt)  # padding at the end with values larger than all: no inversions
    m = min(base, size)
    blk = cur.view(b, size // m, m)
    total = torch.zeros(b, dtype=torch.long, device=y.device)
    for i in range(m - 1):
        total += (blk[:, :, i : i + 1] > blk[:, :, i + 1 :]).sum((1, 2))
    cur = _sort_rows(blk).reshape(b, size)
    s = m
    while s < size:
        nb = size // (2 * s)
        in_right = (torch.arange(2 * s, device=y.device) >= s).to(dt)
        merged = _sort_rows((cur.view(b * nb, 2 * s) << 1) | in_right)
        pos = torch.arange(2 * s, dtype=dt, device=y.device)
        sum_pos = ((merged & 1) * pos).sum(1, dtype=torch.int64)
        total += (s * s + s * (s - 1) // 2 - sum_pos).view(b, nb).sum(1)
        cur = (merged >> 1).view(b, size)
        s *= 2
    return total


def kendall_tau_b_rows(a: RankInfo, b: RankInfo) -> Tensor:
    """Per-row Kendall tau-b between two rankings of the same columns (NaN where a row
    is constant in either)."""
    rows, n = a.dense.shape
    key = a.dense * n + b.dense
    if n * n < 2**31:
        key = key.to(torch.int32)
    skey = _sort_rows(key)
    _, _, joint = _tied_pairs_sorted(skey)
    discordant = count_inversions(skey % n)  # rank_b in (rank_a, rank_b) order
    tot = n * (n - 1) // 2
    num = (tot - a.ties - b.ties + joint - 2 * discordant).to(torch.float64)
    den = torch.sqrt((tot - a.ties).to(torch.float64) * (tot - b.ties).to(torch.float64))
    return torch.where(
        den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(den, float("nan"))
    )


def topk_overlap_rows(a: RankInfo, b: RankInfo, k: int) -> Tensor:
    """Per-row |TopK_a ∩ TopK_b| / k (float64)."""
    ta = a.order[:, -k:]
    tb = b.order[:, -k:]
    hits = (ta.unsqueeze(2) == tb.unsqueeze(1)).any(2).sum(1)
    return hits.to(torch.float64) / k


@torch.no_grad()
def rank_fidelity(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
    """Mean Spearman rho between the student's and the teacher's non-target class
    rankings (a 0-d float64 tensor on the logits' device; rows where either model ties
    all non-target classes are skipped, NaN if every row is). One sort per model."""
    s = student_logits.detach()
    t = teacher_logits.detach()
    if s.shape != t.shape or s.dim() != 2:
        raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} logits must be the same (B, C) shape")
    if s.shape[1] < 3:
        return torch.tensor(float("nan"), dtype=torch.float64, device=s.device)
    s_nt, _ = split_nontarget(s.float(), targets)
    t_nt, _ = split_nontarget(t.float(), targets)
    rho = spearman_rows(rank_info(s_nt), rank_info(t_nt))
    return rho.nanmean()


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
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        ks: Sequence[int] = DEFAULT_KS,
        kendall: bool = True,
        kendall_stride: int = 1,
        dtype: torch.dtype = torch.float32,
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

    def _ks(self, c: int) -> list[int]:
        out: list[int] = []
        for k in self.ks_requested:
            kk = max(1, min(k, c - 1))
            if kk not in out:
                out.append(kk)
        return out

    def _add(self, metric: str, i: int, j: int, values: Tensor) -> None:
        if metric not in self._sum:
            self._sum[metric] = np.zeros((self._m, self._m))
            self._cnt[metric] = np.zeros((self._m, self._m), dtype=np.int64)
        ok = ~torch.isnan(values)
        s = float(values[ok].sum(dtype=torch.float64))
        c = int(ok.sum())
        self._sum[metric][i, j] += s
        self._cnt[metric][i, j] += c
        if i != j:
            self._sum[metric][j, i] += s
            self._cnt[metric][j, i] += c

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
        infos = [rank_info(split_nontarget(z.to(self.dtype), y)[0]) for z in zs]
        sel = None
        if self.kendall and self.kendall_stride > 1:
            start = (-self.n) % self.kendall_stride
            sel = torch.arange(start, b, self.kendall_stride, device=y.device)
        self.n += b
        ks = self._ks(c)
        for i, a in enumerate(infos):  # diagonal: 1 wherever defined (no work needed)
            n_nt = a.avg_rank.shape[1]
            constant = a.ties == n_nt * (n_nt - 1) // 2
            one = torch.where(constant, torch.full_like(a.ties, -1), torch.ones_like(a.ties)).to(torch.float64)
            one = torch.where(one < 0, torch.full_like(one, float("nan")), one)
            self._add("spearman", i, i, one)
            if self.kendall:
                self._add("kendall", i, i, one if sel is None else one[sel])
            for k in ks:
                self._add(f"top{k}", i, i, torch.ones_like(one))
        for i, j in itertools.combinations(range(self._m), 2):
            a, bb = infos[i], infos[j]
            self._add("spearman", i, j, spearman_rows(a, bb))
            if self.kendall:
                if sel is None:
                    self._add("kendall", i, j, kendall_tau_b_rows(a, bb))
                elif sel.numel():
                    self._add("kendall", i, j, kendall_tau_b_rows(_take(a, sel), _take(bb, sel)))
            for k in ks:
                self._add(f"top{k}", i, j, topk_overlap_rows(a, bb, k))

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


def _take(info: RankInfo, rows: Tensor) -> RankInfo:
    return RankInfo(order=info.order[rows], avg_rank=info.avg_rank[rows], dense=info.dense[rows], ties=info.ties[rows])


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
