"""The chunked, threaded diagnostics path (memory-mapped float16 logits, row blocks on two
threads) against straightforward references: full-softmax float64 statistics, scipy's
rank correlations per row, a one-shot tau* search, brute-force inversion counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

import darkknowledge.diagnostics.isats_search as isats_search_module
import darkknowledge.diagnostics.ranks as ranks_module
import darkknowledge.diagnostics.stats as stats_module
from darkknowledge.diagnostics import (
    DiagnoseOptions,
    TeacherStatsAccumulator,
    diagnose_from_logits_file,
    optimal_nontarget_temperature,
)
from darkknowledge.diagnostics.ranks import count_inversions, rank_info

TEMPERATURES = (0.5, 1.0, 2.0, 3.0, 6.0)  # 2 is not half of 3: e is both exponentiated and squared


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _two_teachers(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float16 logits of two related teachers with ties (float16 rounding, a few rows with
    tied blocks), one constant non-target row and one row with equal -0.0/+0.0 logits."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    base = rng.standard_normal((n, c)) * 2.0
    a = base + 0.5 * rng.standard_normal((n, c))
    b = 1.5 * base + 0.7 * rng.standard_normal((n, c))
    a[np.arange(n), y] += 6.0
    b[np.arange(n), y] += 9.0
    a[5, :] = 0.0
    a[5, y[5]] = 4.0  # every non-target logit equal: rank correlations undefined there
    a[6, :20] = np.round(a[6, :20])  # long tie groups
    b[7, :] = -0.0
    b[7, ::2] = 0.0
    b[7, y[7]] = 3.0  # -0.0 and +0.0 tie
    return a.astype(np.float16), b.astype(np.float16), y


def _reference_stats(z: np.ndarray, y: np.ndarray, tau: float, bins: int = 15) -> dict[str, float]:
    n, c = z.shape
    p = scipy.special.softmax(z / tau, axis=1)
    keep = np.ones_like(p, dtype=bool)
    keep[np.arange(n), y] = False
    w = p[keep].reshape(n, c - 1)
    r = w / w.sum(1, keepdims=True)
    conf = p.max(1)
    correct = (z.argmax(1) == y).astype(float)
    ece = 0.0
    for k in range(bins):
        sel = (conf > k / bins) & (conf <= (k + 1) / bins)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return {
        "target_prob": p[np.arange(n), y].mean(),
        "confidence": conf.mean(),
        "ece": ece,
        "nt_mean": w.mean(1).mean(),
        "nt_var": w.var(1).mean(),
        "nt_std": w.std(1).mean(),
        "nt_var_renorm": r.var(1).mean(),
        "nt_std_renorm": r.std(1).mean(),
        "nt_entropy_renorm": (-(r * np.log(r)).sum(1)).mean(),
    }


def _reference_ranks(za: np.ndarray, zb: np.ndarray, y: np.ndarray, ks: list[int]) -> dict[str, tuple[float, int]]:
    """(mean over defined rows, undefined rows) per metric, row by row with scipy; top-k
    ties go to the later column."""
    n, c = za.shape
    values: dict[str, list[float]] = {"spearman": [], "kendall": [], **{f"top{k}": [] for k in ks}}
    for i in range(n):
        cols = np.delete(np.arange(c), y[i])
        a, b = za[i, cols].astype(np.float64), zb[i, cols].astype(np.float64)
        constant = np.all(a == a[0]) or np.all(b == b[0])
        values["spearman"].append(np.nan if constant else scipy.stats.spearmanr(a, b).statistic)
        values["kendall"].append(np.nan if constant else scipy.stats.kendalltau(a, b).statistic)
        order_a = np.lexsort((cols, a))  # ascending value, then column
        order_b = np.lexsort((cols, b))
        for k in ks:
            values[f"top{k}"].append(len(set(cols[order_a[-k:]]) & set(cols[order_b[-k:]])) / k)
    out = {}
    for metric, v in values.items():
        arr = np.asarray(v)
        ok = ~np.isnan(arr)
        out[metric] = (float(arr[ok].mean()), int((~ok).sum()))
    return out


def test_chunked_threaded_diagnose_matches_references(tmp_path, monkeypatch, two_threads):
    monkeypatch.setattr(ranks_module, "_BLOCK_ROWS", 16)  # many row blocks per chunk, on two threads
    monkeypatch.setattr(stats_module, "_BLOCK_ROWS", 20)
    monkeypatch.setattr(isats_search_module, "_BLOCK_ROWS", 8)
    za, zb, y = _two_teachers(n=230, c=40)
    path = tmp_path / "logits.npz"
    np.savez(path, logits_a=za, logits_b=zb, targets=y)  # uncompressed: memory-mapped when read
    opts = DiagnoseOptions(temperatures=TEMPERATURES, chunk_size=57, plots=False)
    res = diagnose_from_logits_file(path, num_params={"a": 1, "b": 2}, options=opts, threads=2)
    one = diagnose_from_logits_file(path, num_params={"a": 1, "b": 2}, options=opts, threads=1)
    assert one.to_dict()["teachers"] == res.to_dict()["teachers"]
    assert one.to_dict()["rank_consistency"] == res.to_dict()["rank_consistency"]

    for z, stats in ((za, res.model("a")), (zb, res.model("b"))):
        z64 = z.astype(np.float64)
        assert stats.num_samples == 230
        assert stats.top1 == pytest.approx(float((z64.argmax(1) == y).mean()), abs=0)
        top5 = np.argsort(-z64, axis=1, kind="stable")[:, :5]
        assert stats.top5 == pytest.approx(float((top5 == y[:, None]).any(1).mean()), abs=0)
        assert stats.logit_std == pytest.approx(float(z64.std(1).mean()), rel=1e-12)
        for tau in TEMPERATURES:
            row = stats.row(tau)
            for key, val in _reference_stats(z64, y, tau).items():
                assert row[key] == pytest.approx(val, rel=1e-11, abs=1e-15), (stats.name, tau, key)
        # tau*: the chunked search equals one search over all rows, row for row
        one_shot = optimal_nontarget_temperature(torch.from_numpy(z), torch.from_numpy(y)).numpy()
        np.testing.assert_array_equal(stats.tau_star_values, one_shot)

    ranks = res.ranks
    assert ranks is not None and ranks.names == ["a", "b"] and ranks.num_samples == 230
    for metric, (mean, undefined) in _reference_ranks(za, zb, y, ranks.ks).items():
        assert ranks.value(metric, "a", "b") == pytest.approx(mean, rel=1e-12), metric
        assert ranks.undefined[metric][0][1] == undefined, metric
    assert ranks.undefined["spearman"] == [[1, 2], [2, 1]]  # row 5 in a; row 7 in b (-0.0 ties +0.0)
    assert ranks.value("spearman", "a", "a") == 1.0


def test_kendall_stride_and_threads_do_not_change_the_result(monkeypatch, two_threads):
    za, zb, y = _two_teachers(n=150, c=30, seed=3)
    a, b, t = torch.from_numpy(za), torch.from_numpy(zb), torch.from_numpy(y)
    ranks = ranks_module.rank_consistency([a, b], t, ["a", "b"], chunk_size=150, kendall_stride=4)
    monkeypatch.setattr(ranks_module, "_BLOCK_ROWS", 7)
    blocked = ranks_module.rank_consistency([a, b], t, ["a", "b"], chunk_size=41, kendall_stride=4)
    for metric in ranks.matrices:
        np.testing.assert_allclose(ranks.matrices[metric], blocked.matrices[metric], rtol=1e-14)
    rows = np.arange(0, 150, 4)
    ref = _reference_ranks(za[rows], zb[rows], y[rows], [1])["kendall"]
    assert ranks.value("kendall", "a", "b") == pytest.approx(ref[0], rel=1e-12)
    assert ranks.undefined["kendall"][0][1] == ref[1]


def test_worker_threads_do_not_change_the_statistics(monkeypatch):
    monkeypatch.setattr(stats_module, "_BLOCK_ROWS", 9)
    za, _, y = _two_teachers(n=100, c=25, seed=4)
    results = []
    for threads in (1, 2, 3):
        acc = TeacherStatsAccumulator(TEMPERATURES, threads=threads)
        for start in range(0, 100, 33):
            acc.update(za[start : start + 33], y[start : start + 33])
        res = acc.result()
        results.append((res.to_dict(), res.tau_star_values))
    for stats, taus in results[1:]:
        assert stats == results[0][0]
        np.testing.assert_array_equal(taus, results[0][1])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_rank_keys_order_special_values(dtype):
    """Integer sort keys of float16/float32 (and the argsort path of float64) rank -inf,
    negatives, -0.0 == +0.0, subnormals and +inf as the floats compare."""
    tiny = np.finfo(dtype).smallest_subnormal
    row = np.array([np.inf, -0.0, 1.5, -np.inf, tiny, 0.0, -tiny, -2.5, 1.5, -0.0], dtype=dtype)
    rows = np.stack([row, row[::-1]])
    info = rank_info(rows)
    np.testing.assert_allclose(info.avg_rank.numpy(), scipy.stats.rankdata(rows.astype(np.float64), axis=1))
    excluded = rank_info(rows, exclude=np.array([2, 0]))
    for i, col in enumerate((2, 0)):
        kept = np.delete(np.arange(row.size), col)
        ref = scipy.stats.rankdata(rows[i, kept].astype(np.float64))
        np.testing.assert_allclose(excluded.avg_rank.numpy()[i, kept], ref)
        assert sorted(excluded.order[i].tolist()) == kept.tolist()


def test_count_inversions_long_rows_and_wide_values():
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 40, (3, 300), generator=g)
    y[1] = torch.arange(300).flip(0)  # the maximum n (n - 1) / 2
    y[2, :] = 7
    ref = [sum(int(r[i] > r[j]) for i in range(300) for j in range(i + 1, 300)) for r in y.tolist()]
    assert count_inversions(y).tolist() == ref
    assert count_inversions(y * 2**25).tolist() == ref  # keys beyond int32 after the merge shift
