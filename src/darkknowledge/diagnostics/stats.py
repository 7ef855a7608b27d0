"""Per-teacher output statistics as a function of the softmax temperature (streaming).

For every temperature tau, with p = softmax(z / tau) and the label y (C classes,
n = C - 1 non-target classes), per sample:

* ``target_prob``      p_y
* ``confidence``       max_c p_c, and ``ece``: expected calibration error, 15 equal-width
                       confidence bins, sum_b (n_b / N) |acc_b - conf_b|
* ``nt_mean``          mean_{c != y} p_c = (1 - p_y) / n          (ATS's "derived average")
* ``nt_var``/``nt_std`` population variance / std (ddof 0) of {p_c : c != y} (ATS's
                       "derived variance"; the authors' code takes numpy's ``.std()``)
* ``nt_var_renorm``/``nt_std_renorm``  the same for the renormalised non-target
                       distribution w_c = p_c / (1 - p_y) (mean is always 1/n); this
                       isolates distinctness from the target confidence:
                       nt_var = nt_var_renorm * (1 - p_y)^2
* ``nt_entropy_renorm`` entropy of w (nats); ``nt_entropy_renorm_norm`` = that / log n

each averaged over samples (``nt_std`` is the mean of per-sample stds, as ATS plots it,
not the square root of ``nt_var``). Temperature-free: top-1/top-5 accuracy, mean
per-sample logit std (ddof 0), and the distribution of ISATS's per-instance optimal
temperature tau*(x) (:func:`~darkknowledge.diagnostics.isats_search.optimal_nontarget_temperature`).

Numerics: the non-target logits are shifted so their max is 0, so exp never
overflows; log(1 - p_y) = log sum_{c != y} e^{x_c} - logsumexp(x) is exact even when
p_y rounds to 1; per-row sums run in ``dtype`` (float64 by default) and the running
totals in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from darkknowledge.diagnostics._common import check_logits_targets, jsonable, to_tensor
from darkknowledge.diagnostics.isats_search import GRID_SIZE, REFINE_SIZE, optimal_nontarget_temperature
from darkknowledge.diagnostics.parallel import map_blocks

__all__ = ["DEFAULT_TEMPERATURES", "TeacherStats", "TeacherStatsAccumulator", "teacher_stats"]

DEFAULT_TEMPERATURES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

PER_TEMPERATURE_KEYS = (
    "target_prob",
    "confidence",
    "ece",
    "nt_mean",
    "nt_var",
    "nt_std",
    "nt_var_renorm",
    "nt_std_renorm",
    "nt_entropy_renorm",
    "nt_entropy_renorm_norm",
)
_SUM_KEYS = (
    "target_prob",
    "confidence",
    "nt_mean",
    "nt_var",
    "nt_std",
    "nt_var_renorm",
    "nt_std_renorm",
    "nt_entropy_renorm",
)
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# rows per pass of the temperature loop: its (rows, C) float64 buffers stay in a core's cache
_BLOCK_ROWS = 256


@dataclass
class TeacherStats:
    """Result of :class:`TeacherStatsAccumulator` (all averages over samples)."""

    name: str
    num_params: int | None
    num_samples: int
    num_classes: int
    top1: float
    top5: float
    logit_std: float
    temperatures: list[float]
    per_temperature: list[dict[str, float]]
    tau_star: dict[str, Any] | None = None
    tau_star_values: np.ndarray | None = field(default=None, repr=False)

    def at(self, temperature: float, key: str) -> float:
        """``key`` at the listed temperature closest (in log scale) to ``temperature``."""
        row = self.row(temperature)
        return float(row[key])

    def row(self, temperature: float) -> dict[str, float]:
        i = int(np.argmin([abs(math.log(t) - math.log(temperature)) for t in self.temperatures]))
        return self.per_temperature[i]

    def curve(self, key: str) -> list[float]:
        """``key`` at every temperature, in order."""
        return [float(r[key]) for r in self.per_temperature]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "name": self.name,
                "num_params": self.num_params,
                "num_samples": self.num_samples,
                "num_classes": self.num_classes,
                "top1": self.top1,
                "top5": self.top5,
                "logit_std": self.logit_std,
                "temperatures": self.temperatures,
                "per_temperature": self.per_temperature,
                "tau_star": self.tau_star,
            }
        )


@dataclass
class _BlockSums:
    """One block's contribution (``sums``: temperatures x ``_SUM_KEYS``)."""

    correct1: int
    correct5: int
    logit_std: float
    sums: torch.Tensor
    bin_count: torch.Tensor
    bin_conf: torch.Tensor
    bin_correct: torch.Tensor
    taus: np.ndarray | None
    correct: np.ndarray | None  # per row: the model's top-1 is the target (beside taus)


class TeacherStatsAccumulator:
    """Streaming per-teacher statistics: call :meth:`update` per chunk, then :meth:`result`.

    Memory: O(chunk * C) temporaries plus 4 bytes per sample for the tau* values (kept
    for exact quantiles). Each chunk is processed in blocks of 256 rows on ``threads``
    worker threads (default ``torch.get_num_threads()``, see
    :mod:`~darkknowledge.diagnostics.parallel`); the result does not depend on them.
    """

    def __init__(
        self,
        temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
        *,
        name: str = "teacher",
        num_params: int | None = None,
        ece_bins: int = 15,
        tau_star: bool = True,
        tau_min: float = 0.5,
        tau_max: float = 20.0,
        grid_size: int = GRID_SIZE,
        refine_size: int = REFINE_SIZE,
        tau_hist_bins: int = 30,
        dtype: torch.dtype = torch.float64,
        threads: int | None = None,
    ):
        temps = [float(t) for t in temperatures]
        if not temps or any(not (t > 0 and math.isfinite(t)) for t in temps):
            raise ValueError(f"temperatures must be positive finite numbers, got {list(temperatures)}")
        self.temperatures = temps
        self.name = name
        self.num_params = num_params
        self.ece_bins = int(ece_bins)
        self.tau_star = tau_star
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.grid_size, self.refine_size = grid_size, refine_size
        self.tau_hist_bins = tau_hist_bins
        self.dtype = dtype
        self.threads = threads
        self.num_classes: int | None = None
        self.n = 0
        self._correct1 = 0
        self._correct5 = 0
        self._logit_std = 0.0
        k = len(temps)
        self._sums = {key: torch.zeros(k, dtype=torch.float64) for key in _SUM_KEYS}
        self._bin_count = torch.zeros(k, self.ece_bins, dtype=torch.float64)
        self._bin_conf = torch.zeros(k, self.ece_bins, dtype=torch.float64)
        self._bin_correct = torch.zeros(k, self.ece_bins, dtype=torch.float64)
        self._taus: list[np.ndarray] = []
        self._tau_correct: list[np.ndarray] = []

    @torch.no_grad()
    def update(self, logits: Any, targets: Any) -> None:
        given = to_tensor(logits)
        y = to_tensor(targets).long().reshape(-1).to(given.device)
        check_logits_targets(given, y, f"logits of {self.name!r}")
        b, c = given.shape
        if self.num_classes is None:
            self.num_classes = c
        elif c != self.num_classes:
            raise ValueError(f"{self.name}: chunk has {c} classes, earlier chunks had {self.num_classes}")
        if b == 0:
            return
        self.n += b

        def block(start: int) -> _BlockSums:
            return self._block_sums(given[start : start + _BLOCK_ROWS], y[start : start + _BLOCK_ROWS])

        for part in map_blocks(block, range(0, b, _BLOCK_ROWS), self.threads):  # merged in block order
            self._correct1 += part.correct1
            self._correct5 += part.correct5
            self._logit_std += part.logit_std
            for key, sums in zip(_SUM_KEYS, part.sums.unbind(1)):
                self._sums[key] += sums
            self._bin_count += part.bin_count
            self._bin_conf += part.bin_conf
            self._bin_correct += part.bin_correct
            if part.taus is not None and part.correct is not None:
                self._taus.append(part.taus)
                self._tau_correct.append(part.correct)

    def _block_sums(self, given: torch.Tensor, y: torch.Tensor) -> _BlockSums:
        """The sums of the (checked, non-empty) rows ``given`` (one worker's block)."""
        c = given.shape[1]
        k = len(self.temperatures)
        sum_table = torch.zeros(k, len(_SUM_KEYS), dtype=torch.float64)
        bin_count = torch.zeros(k, self.ece_bins, dtype=torch.float64)
        bin_conf = torch.zeros(k, self.ece_bins, dtype=torch.float64)
        bin_correct = torch.zeros(k, self.ece_bins, dtype=torch.float64)
        z = given.to(self.dtype, copy=True)  # shifted in place below
        pred = z.argmax(1)
        correct = pred == y
        top = z.topk(min(5, c), dim=1).indices
        correct5 = int((top == y.unsqueeze(1)).any(1).sum())
        e = torch.empty_like(z)
        work = torch.empty_like(z)
        torch.sub(z, z.mean(1, keepdim=True), out=work)
        logit_std = float((torch.linalg.vector_norm(work, dim=1) / math.sqrt(c)).sum(dtype=torch.float64))

        # The non-target classes are the row minus the target column, which is masked:
        # s = z - max_{c != y} z off the target, and the most negative finite number at
        # the target, so that there e = exp(s / tau) = 0 and e * s = 0.
        col = y.unsqueeze(1)
        z_y = z.gather(1, col).squeeze(1)
        s_nt = z.scatter_(1, col, float("-inf"))
        m = s_nt.amax(1)
        s_nt.sub_(m.unsqueeze(1)).scatter_(1, col, torch.finfo(z.dtype).min)
        s_y = z_y - m
        n_nt = c - 1
        correct_f = correct.to(torch.float64).cpu()
        # e = exp(s / tau), by descending tau; where a temperature is half the previous
        # one, e is the previous e squared (exact up to rounding, several times cheaper)
        previous = None
        for i in sorted(range(len(self.temperatures)), key=lambda k: -self.temperatures[k]):
            tau = self.temperatures[i]
            inv = 1.0 / tau
            if previous is not None and previous == 2.0 * tau:
                torch.mul(e, e, out=e)
            else:
                torch.mul(s_nt, inv, out=e).exp_()
            previous = tau
            tot = e.sum(1)  # >= 1 (the shifted max contributes exp(0))
            xy = s_y * inv
            ex = torch.mul(e, s_nt, out=work).sum(1) * inv  # sum_c e_c x_c
            log_nt = torch.log(tot)
            lse = torch.logaddexp(xy, log_nt)
            p_y = torch.exp(xy - lse)
            one_minus = torch.exp(log_nt - lse)
            torch.sub(e, (tot / n_nt).unsqueeze(1), out=work).scatter_(1, col, 0.0)  # two passes: centre, square
            var_r = torch.linalg.vector_norm(work, dim=1).square() / (n_nt * tot * tot)  # variance of e / tot
            std_r = var_r.sqrt()
            ent = log_nt - ex / tot
            conf = torch.exp(torch.clamp(xy, min=0.0) - lse)
            vals = {
                "target_prob": p_y,
                "confidence": conf,
                "nt_mean": one_minus / n_nt,
                "nt_var": var_r * one_minus * one_minus,
                "nt_std": std_r * one_minus,
                "nt_var_renorm": var_r,
                "nt_std_renorm": std_r,
                "nt_entropy_renorm": ent,
            }
            sum_table[i] = torch.stack([vals[key] for key in _SUM_KEYS]).sum(1, dtype=torch.float64)
            conf64 = conf.to(torch.float64).cpu()
            idx = (torch.ceil(conf64 * self.ece_bins).long() - 1).clamp(0, self.ece_bins - 1)
            bin_count[i] = torch.bincount(idx, minlength=self.ece_bins).to(torch.float64)
            bin_conf[i] = torch.bincount(idx, weights=conf64, minlength=self.ece_bins)
            bin_correct[i] = torch.bincount(idx, weights=correct_f, minlength=self.ece_bins)
        taus = None
        if self.tau_star:
            taus = optimal_nontarget_temperature(
                given, y, self.tau_min, self.tau_max, grid_size=self.grid_size, refine_size=self.refine_size, threads=1
            )
        return _BlockSums(
            correct1=int(correct.sum()),
            correct5=correct5,
            logit_std=logit_std,
            sums=sum_table,
            bin_count=bin_count,
            bin_conf=bin_conf,
            bin_correct=bin_correct,
            taus=None if taus is None else taus.float().cpu().numpy(),
            correct=None if taus is None else correct.cpu().numpy(),
        )

    def result(self) -> TeacherStats:
        if self.n == 0 or self.num_classes is None:
            raise ValueError(f"{self.name}: no samples were given to the statistics accumulator")
        n, c = self.n, self.num_classes
        rows = []
        for i, tau in enumerate(self.temperatures):
            row: dict[str, float] = {"temperature": tau}
            for key in _SUM_KEYS:
                row[key] = float(self._sums[key][i]) / n
            gap = (self._bin_correct[i] - self._bin_conf[i]).abs()  # = n_b * |acc_b - conf_b|
            row["ece"] = float(gap.sum()) / n
            row["nt_entropy_renorm_norm"] = row["nt_entropy_renorm"] / math.log(c - 1) if c > 2 else float("nan")
            rows.append({k: row[k] for k in ("temperature", *PER_TEMPERATURE_KEYS)})
        tau_info = None
        values = None
        if self.tau_star:
            values = np.concatenate(self._taus) if self._taus else np.empty(0, np.float32)
            correct = np.concatenate(self._tau_correct) if self._tau_correct else np.empty(0, bool)
            tau_info = summarize_tau_star(values, self.tau_min, self.tau_max, self.tau_hist_bins, correct=correct)
        return TeacherStats(
            name=self.name,
            num_params=self.num_params,
            num_samples=n,
            num_classes=c,
            top1=self._correct1 / n,
            top5=self._correct5 / n,
            logit_std=self._logit_std / n,
            temperatures=list(self.temperatures),
            per_temperature=rows,
            tau_star=tau_info,
            tau_star_values=values,
        )


def summarize_tau_star(
    values: np.ndarray, tau_min: float, tau_max: float, bins: int = 30, correct: np.ndarray | None = None
) -> dict[str, Any]:
    """Mean/std/quantiles, share at the range bounds and a log-spaced histogram of tau*
    (NaN entries, i.e. samples without an optimum, are counted, not summarised). With
    ``correct`` (per sample: the model's top-1 is the target), also the share of defined tau*
    whose sample is misclassified, and the median and share at the lower bound over the
    correctly classified samples: a misclassified sample's tau* is the lower bound by
    construction (its variance grows as the wrong class takes all the mass, docs/methods.md)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    d = v[ok]
    if correct is not None:
        right = np.asarray(correct, dtype=bool)[ok]
        d_right = d[right]
        misclassified = float(np.mean(~right)) if d.size else float("nan")
        at_min_right = float(np.mean(d_right <= tau_min * 1.001)) if d_right.size else float("nan")
        median_right = float(np.median(d_right)) if d_right.size else float("nan")
    edges = np.geomspace(tau_min, tau_max, bins + 1)
    counts, _ = np.histogram(np.clip(d, tau_min, tau_max), bins=edges)
    info: dict[str, Any] = {
        "tau_min": tau_min,
        "tau_max": tau_max,
        "num_defined": int(ok.sum()),
        "num_undefined": int((~ok).sum()),
        "hist_edges": edges.tolist(),
        "hist_counts": counts.tolist(),
    }
    if correct is not None:
        info.update(frac_misclassified=misclassified, frac_at_min_correct=at_min_right, median_correct=median_right)
    if d.size:
        qs = np.quantile(d, _QUANTILES)
        info.update(
            mean=float(d.mean()),
            std=float(d.std()),
            geo_mean=float(np.exp(np.log(d).mean())),
            min=float(d.min()),
            max=float(d.max()),
            frac_at_min=float(np.mean(d <= tau_min * 1.001)),
            frac_at_max=float(np.mean(d >= tau_max / 1.001)),
        )
        for q, val in zip(_QUANTILES, qs):
            info[f"q{int(round(q * 100)):02d}"] = float(val)
        info["median"] = info["q50"]
    else:
        for key in ("mean", "std", "geo_mean", "min", "max", "frac_at_min", "frac_at_max", "median"):
            info[key] = float("nan")
        for q in _QUANTILES:
            info[f"q{int(round(q * 100)):02d}"] = float("nan")
    return info


def teacher_stats(
    logits: Any,
    targets: Any,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    *,
    chunk_size: int = 4096,
    **kwargs: Any,
) -> TeacherStats:
    """One-shot convenience: run :class:`TeacherStatsAccumulator` over ``logits`` in chunks."""
    acc = TeacherStatsAccumulator(temperatures, **kwargs)
    n = len(logits)
    for start in range(0, n, chunk_size):
        acc.update(logits[start : start + chunk_size], targets[start : start + chunk_size])
    return acc.result()
