"""Feature compactness from penultimate features (``methods.md`` §3.5, item 3).

With f̂_i = f_i / ||f_i|| and the class centre mu_c = mean_{i : y_i = c} f̂_i:

* intra-class angle  mean_i arccos( cos(f_i, mu_{y_i}) )                 (degrees)
* inter-class angle  mean_{c != c'} arccos( cos(mu_c, mu_c') )           (degrees)

(hypothesis in 2405.13078's line of work: larger, over-confident teachers have more
compact classes, i.e. smaller intra-class angles).

Streaming and the two-pass problem. The centres are linear in the data (running
float64 sums per class), but the intra-class angle needs the *final* centre for every
sample, so it cannot be accumulated in one pass. :class:`FeatureGeometryAccumulator`
offers both options:

* ``keep_features=True`` (default): pass 1 also stores each sample's normalised
  feature (``store_dtype``, float32 by default: N * D * 4 bytes, e.g. 100 MB for
  50,000 x 512; float16 halves that at about 0.1 degree of error). Simple, one pass.
* ``keep_features=False``: O(C * D) memory. Feed the data twice: :meth:`update` for
  every chunk, then :meth:`update_intra` for every chunk (the library API does this
  when the features are already in memory, so it never stores a copy).

Zero feature vectors have no direction: they are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from darkknowledge.diagnostics._common import jsonable, to_tensor
from darkknowledge.errors import UserError

__all__ = ["GeometryResult", "FeatureGeometryAccumulator", "feature_geometry"]


@dataclass
class GeometryResult:
    intra_angle: float  # degrees, mean over samples
    inter_angle: float  # degrees, mean over ordered pairs of distinct (non-empty) classes
    per_class_intra: list[float]  # degrees (NaN for empty classes)
    class_counts: list[int]
    num_samples: int
    num_zero_features: int
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


class FeatureGeometryAccumulator:
    def __init__(
        self, num_classes: int | None = None, *, keep_features: bool = True, store_dtype: torch.dtype = torch.float32
    ):
        self.num_classes = num_classes
        self.keep_features = keep_features
        self.store_dtype = store_dtype
        self.dim: int | None = None
        self._sums: Tensor | None = None  # (C, D) float64
        self._counts: Tensor | None = None  # (C,) int64
        self._zero = 0
        self._kept: list[tuple[Tensor, Tensor]] = []
        self._intra_sum: Tensor | None = None  # per class, second pass
        self._intra_cnt: Tensor | None = None
        self._centres: Tensor | None = None

    def _prepare(self, features: Any, targets: Any) -> tuple[Tensor, Tensor]:
        f = to_tensor(features)
        y = to_tensor(targets).long().reshape(-1).to(f.device)
        if f.dim() != 2 or y.shape[0] != f.shape[0]:
            raise UserError(
                f"features must be (samples, dim) with one label per row; got {tuple(f.shape)} and {tuple(y.shape)}"
            )
        if not bool(torch.isfinite(f).all()):
            raise UserError("features contain NaN or infinite values")
        if y.numel() and int(y.min()) < 0:
            raise UserError("labels must be non-negative")
        return f.to(torch.float64), y

    def _grow(self, c_needed: int, d: int, device: torch.device) -> None:
        c_now = 0 if self._sums is None else self._sums.shape[0]
        c_new = max(c_needed, self.num_classes or 0, c_now)
        if self._sums is None or self._counts is None:
            self._sums = torch.zeros(c_new, d, dtype=torch.float64, device=device)
            self._counts = torch.zeros(c_new, dtype=torch.long, device=device)
        elif c_new > c_now:
            self._sums = torch.cat([self._sums, self._sums.new_zeros(c_new - c_now, d)])
            self._counts = torch.cat([self._counts, self._counts.new_zeros(c_new - c_now)])

    @torch.no_grad()
    def update(self, features: Any, targets: Any) -> None:
        """Pass 1: accumulate per-class sums of normalised features (and keep them if
        ``keep_features``)."""
        f, y = self._prepare(features, targets)
        if self._centres is not None:
            raise RuntimeError("update() after update_intra(): pass 1 is over")
        if self.dim is None:
            self.dim = f.shape[1]
        elif f.shape[1] != self.dim:
            raise UserError(f"feature dimension changed from {self.dim} to {f.shape[1]} between chunks")
        if f.shape[0] == 0:
            return
        norms = f.norm(dim=1)
        ok = norms > 0
        self._zero += int((~ok).sum())
        f, y = f[ok], y[ok]
        fh = f / norms[ok].unsqueeze(1)
        self._grow(int(y.max()) + 1 if y.numel() else 0, self.dim, f.device)
        assert self._sums is not None and self._counts is not None
        self._sums.index_add_(0, y, fh)
        self._counts += torch.bincount(y, minlength=self._counts.shape[0])
        if self.keep_features:
            self._kept.append((fh.to(self.store_dtype), y))

    def _unit_centres(self) -> Tensor:
        assert self._sums is not None and self._counts is not None
        mu = self._sums / self._counts.clamp(min=1).unsqueeze(1).to(torch.float64)
        return F.normalize(mu, dim=1)

    def _intra_from(self, fh: Tensor, y: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
        cos = (fh.to(torch.float64) * centres[y]).sum(1).clamp(-1.0, 1.0)
        ang = torch.rad2deg(torch.arccos(cos))
        c = centres.shape[0]
        s = torch.zeros(c, dtype=torch.float64, device=fh.device).index_add_(0, y, ang)
        n = torch.bincount(y, minlength=c)
        return s, n

    @torch.no_grad()
    def update_intra(self, features: Any, targets: Any) -> None:
        """Pass 2 (only needed with ``keep_features=False``): the same chunks again."""
        if self._sums is None:
            raise RuntimeError("update_intra() before any update(): run pass 1 first")
        if self._centres is None:
            self._centres = self._unit_centres()
            self._intra_sum = torch.zeros(self._centres.shape[0], dtype=torch.float64, device=self._centres.device)
            self._intra_cnt = torch.zeros(self._centres.shape[0], dtype=torch.long, device=self._centres.device)
        f, y = self._prepare(features, targets)
        norms = f.norm(dim=1)
        ok = norms > 0
        f, y = f[ok], y[ok]
        if y.numel() and int(y.max()) >= self._centres.shape[0]:
            raise UserError("update_intra() got a class that pass 1 never saw; feed the same data in both passes")
        s, n = self._intra_from(f / norms[ok].unsqueeze(1), y, self._centres)
        assert self._intra_sum is not None and self._intra_cnt is not None
        self._intra_sum += s
        self._intra_cnt += n

    def result(self) -> GeometryResult:
        if self._sums is None or self._counts is None or self.dim is None:
            raise ValueError("no features were given to the geometry accumulator")
        centres = self._unit_centres()
        c = centres.shape[0]
        if self._intra_sum is not None and self._intra_cnt is not None:
            s, n = self._intra_sum, self._intra_cnt
        elif self.keep_features:
            s = torch.zeros(c, dtype=torch.float64, device=centres.device)
            n = torch.zeros(c, dtype=torch.long, device=centres.device)
            for fh, y in self._kept:
                ds, dn = self._intra_from(fh, y, centres)
                s += ds
                n += dn
        else:
            raise RuntimeError("keep_features=False: run update_intra() over the data before result()")
        total = int(n.sum())
        intra = float(s.sum()) / total if total else float("nan")
        per_class = torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, float("nan")))
        present = (self._counts > 0).nonzero().squeeze(1)
        if present.numel() >= 2:
            mu = centres[present]
            cos = (mu @ mu.T).clamp(-1.0, 1.0)
            ang = torch.rad2deg(torch.arccos(cos))
            k = mu.shape[0]
            off = ~torch.eye(k, dtype=torch.bool, device=ang.device)
            inter = float(ang[off].mean())
        else:
            inter = float("nan")
        return GeometryResult(
            intra_angle=intra,
            inter_angle=inter,
            per_class_intra=per_class.tolist(),
            class_counts=self._counts.tolist(),
            num_samples=total,
            num_zero_features=self._zero,
            dim=self.dim,
        )


def feature_geometry(
    features: Any, targets: Any, num_classes: int | None = None, *, chunk_size: int = 8192
) -> GeometryResult:
    """Two passes over in-memory ``features`` (N, D) without keeping a normalised copy."""
    acc = FeatureGeometryAccumulator(num_classes, keep_features=False)
    n = len(features)
    for start in range(0, n, chunk_size):
        acc.update(features[start : start + chunk_size], targets[start : start + chunk_size])
    for start in range(0, n, chunk_size):
        acc.update_intra(features[start : start + chunk_size], targets[start : start + chunk_size])
    return acc.result()
