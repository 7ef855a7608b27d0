"""darkknowledge.diagnostics: hand-built logits with known answers, identities of the
decompositions, agreement with scipy / brute force, streaming == one-shot, report."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from darkknowledge.diagnostics import (
    DISCLAIMER,
    DecompositionAccumulator,
    DiagnoseOptions,
    FeatureGeometryAccumulator,
    OutputsBatch,
    TeacherOutputs,
    TeacherStatsAccumulator,
    TunedChoice,
    aid_decomposition,
    ats_decomposition,
    collect_outputs,
    diagnose,
    diagnose_from_logits_file,
    diagnose_stream,
    dkd_decomposition,
    feature_geometry,
    kendall_tau_b_rows,
    make_card,
    optimal_nontarget_temperature,
    rank_consistency,
    rank_fidelity,
    rank_info,
    spearman_rows,
    teacher_stats,
)
from darkknowledge.diagnostics.ranks import count_inversions
from darkknowledge.errors import UserError
from darkknowledge.nontarget import nontarget_log_variance, split_nontarget


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is faster and avoids contention on shared CPUs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _teacher_logits(n=600, c=20, margin=6.0, scale=1.0, seed=0, base=None):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    z = (base if base is not None else torch.randn(n, c, generator=g, dtype=torch.float64)) * scale
    z = z + 0.3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    z[torch.arange(n), y] += margin
    return z, y


# -- non-target statistics ---------------------------------------------------------------------
def _brute_stats(z: np.ndarray, y: np.ndarray, tau: float, bins: int = 15) -> dict[str, float]:
    p = scipy.special.softmax(z / tau, axis=1)
    n, c = z.shape
    mask = np.ones_like(p, dtype=bool)
    mask[np.arange(n), y] = False
    w = p[mask].reshape(n, c - 1)
    r = w / w.sum(1, keepdims=True)
    conf = p.max(1)
    correct = (z.argmax(1) == y).astype(float)
    ece = 0.0
    for b in range(bins):
        sel = (conf > b / bins) & (conf <= (b + 1) / bins)
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


def test_stats_match_brute_force():
    z, y = _teacher_logits(n=400, c=12)
    s = teacher_stats(z, y, [0.5, 1.0, 4.0], chunk_size=128, tau_star=False)
    assert s.num_samples == 400 and s.num_classes == 12
    assert s.top1 == pytest.approx((z.argmax(1) == y).double().mean().item())
    top5 = (z.topk(5, 1).indices == y[:, None]).any(1).double().mean().item()
    assert s.top5 == pytest.approx(top5)
    assert s.logit_std == pytest.approx(z.std(1, unbiased=False).mean().item())
    for tau in (0.5, 1.0, 4.0):
        ref = _brute_stats(z.numpy(), y.numpy(), tau)
        row = s.row(tau)
        for key, val in ref.items():
            assert row[key] == pytest.approx(val, rel=1e-9, abs=1e-12), (tau, key)
        assert row["nt_entropy_renorm_norm"] == pytest.approx(ref["nt_entropy_renorm"] / math.log(11))


def test_one_hot_teacher_has_zero_nontarget_variance():
    c = 10
    z = torch.zeros(8, c, dtype=torch.float64)
    y = torch.arange(8) % c
    z[torch.arange(8), y] = 100.0
    s = teacher_stats(z, y, [1.0, 4.0])
    row = s.row(1.0)
    assert row["target_prob"] == pytest.approx(1.0)
    assert row["nt_var"] < 1e-30 and row["nt_std"] < 1e-15
    assert row["nt_mean"] == pytest.approx(math.exp(-100.0), rel=1e-6)  # (1 - p_y) / (C - 1), exact in log space
    # the renormalised non-target distribution is uniform
    assert row["nt_var_renorm"] == pytest.approx(0.0, abs=1e-30)
    assert row["nt_entropy_renorm"] == pytest.approx(math.log(c - 1))
    assert row["nt_entropy_renorm_norm"] == pytest.approx(1.0)
    # no temperature makes equal non-target logits distinct: tau* undefined for every row
    assert s.tau_star["num_undefined"] == 8 and s.tau_star["num_defined"] == 0


def test_streaming_stats_equal_one_shot():
    z, y = _teacher_logits(n=500, c=15, seed=3)
    one = teacher_stats(z, y, chunk_size=500)
    acc = TeacherStatsAccumulator()
    for lo, hi in [(0, 7), (7, 200), (200, 201), (201, 500)]:
        acc.update(z[lo:hi].numpy(), y[lo:hi].numpy())  # numpy chunks are fine too
    two = acc.result()
    for r1, r2 in zip(one.per_temperature, two.per_temperature):
        for k in r1:
            assert r1[k] == pytest.approx(r2[k], rel=1e-10, abs=1e-15)
    np.testing.assert_array_equal(one.tau_star_values, two.tau_star_values)
    assert one.tau_star["median"] == two.tau_star["median"]


def test_float16_logits_accepted():
    z, y = _teacher_logits(n=100, c=10, seed=4)
    s16 = teacher_stats(z.half(), y, [1.0, 4.0], tau_star=False)
    s64 = teacher_stats(z.half().double(), y, [1.0, 4.0], tau_star=False)
    assert s16.row(4.0)["nt_var"] == pytest.approx(s64.row(4.0)["nt_var"], rel=1e-12)


# -- tau* ----------------------------------------------------------------------------------------
def test_tau_star_matches_dense_grid():
    z, y = _teacher_logits(n=120, c=50, margin=0.0, seed=5)
    z = 2.0 * z
    z[torch.arange(120), y] += torch.linspace(4, 30, 120, dtype=torch.float64)
    tau = optimal_nontarget_temperature(z, y, 0.5, 20.0, dtype=torch.float64, grid_size=16, refine_size=30)
    z_nt, z_y = split_nontarget(z, y)
    m = z_nt.amax(1)
    grid = torch.exp(torch.linspace(math.log(0.5), math.log(20.0), 4001, dtype=torch.float64))
    vals = torch.stack([nontarget_log_variance(z_nt - m[:, None], z_y - m, float(t)) for t in grid], 1)
    brute = grid[vals.argmax(1)]
    # objective at the found tau is at least the dense grid's best (up to float error)
    found = nontarget_log_variance(z_nt - m[:, None], z_y - m, tau)
    assert (found >= vals.max(1).values - 1e-9).all()
    assert torch.allclose(tau, brute, rtol=2e-3)
    # default float32 search: about 0.3 %
    tau32 = optimal_nontarget_temperature(z, y)
    assert torch.allclose(tau32.double(), brute, rtol=1e-2)
    # more confident rows need a higher temperature to spread their non-target mass
    assert tau[-10:].mean() > tau[:10].mean()


def test_tau_star_variance_formula():
    z, y = _teacher_logits(n=50, c=9, seed=6)
    z_nt, z_y = split_nontarget(z, y)
    m = z_nt.amax(1)
    for t in (0.7, 3.0):
        p = torch.softmax(z / t, 1)
        w, _ = split_nontarget(p, y)
        ref = w.var(1, unbiased=False).log()
        assert torch.allclose(nontarget_log_variance(z_nt - m[:, None], z_y - m, t), ref, rtol=1e-10)


def test_tau_star_agrees_with_the_isats_loss():
    """The diagnostics' finer search and the loss's training default (64-point grid +
    parabola) find the same tau* within 1 %."""
    from darkknowledge.methods import StepContext, build_method

    z, y = _teacher_logits(n=200, c=30, margin=10.0, scale=2.0, seed=7)
    mine = optimal_nontarget_temperature(z, y, 0.5, 20.0)
    method = build_method("isats", {"tau_min": 0.5, "tau_max": 20.0, "misclassified_temperature": None}, num_classes=30)
    method(z.float(), z.float(), y, StepContext())
    recorded = torch.cat(method._stats["isats_tau"])
    assert ((mine > 0.6) & (mine < 19.0)).float().mean() > 0.9  # interior optima, not bounds
    assert torch.allclose(mine.double(), recorded.double(), rtol=1e-2)


def test_tau_star_is_the_methods_search_with_nan_for_undefined():
    from darkknowledge.diagnostics.isats_search import GRID_SIZE, REFINE_SIZE
    from darkknowledge.nontarget import isats_search

    z, y = _teacher_logits(n=64, c=12, margin=8.0, scale=2.0, seed=17)
    z[5] = 0.0  # no optimum
    mine = optimal_nontarget_temperature(z, y, 0.5, 20.0)
    theirs = isats_search(
        z.float(),
        y,
        search_rule="A",
        tau_min=0.5,
        tau_max=20.0,
        grid_size=GRID_SIZE,
        refine_size=REFINE_SIZE,
        undefined=float("nan"),
    )
    assert torch.allclose(mine, theirs, rtol=0, atol=0, equal_nan=True)  # the same function
    assert torch.isnan(mine[5]) and torch.isfinite(torch.cat([mine[:5], mine[6:]])).all()


# -- ranks -----------------------------------------------------------------------------------------
def test_identical_teachers_rank_consistency_is_one():
    z, y = _teacher_logits(n=64, c=30, seed=8)
    rc = rank_consistency([z, z.clone()], y, ["a", "b"], chunk_size=20)
    for metric in ("spearman", "kendall", "top1", "top5", "top10"):
        assert rc.value(metric, "a", "b") == pytest.approx(1.0), metric
        assert rc.value(metric, "a", "a") == pytest.approx(1.0), metric
    assert rank_fidelity(z, z, y).item() == pytest.approx(1.0)


def test_reversed_nontarget_ranking_gives_minus_one():
    n, c = 10, 8
    y = torch.arange(n) % c
    base = torch.arange(c, dtype=torch.float64).repeat(n, 1)
    a, b = base.clone(), -base
    a[torch.arange(n), y] = 50.0
    b[torch.arange(n), y] = 50.0
    rc = rank_consistency([a, b], y, ["a", "b"], ks=(1, 3))
    assert rc.value("spearman", "a", "b") == pytest.approx(-1.0)
    assert rc.value("kendall", "a", "b") == pytest.approx(-1.0)
    assert rc.value("top1", "a", "b") == 0.0
    assert rank_fidelity(b, a, y).item() == pytest.approx(-1.0)


def test_topk_is_clipped_to_nontarget_count():
    z, y = _teacher_logits(n=20, c=4, seed=9)
    rc = rank_consistency([z, z + 0.01], y, ["a", "b"], ks=(1, 5, 10))
    assert rc.ks == [1, 3] and "top3" in rc.matrices and rc.value("top3", "a", "b") == 1.0


def test_kendall_and_spearman_match_scipy_with_ties():
    g = torch.Generator().manual_seed(10)
    a = torch.randint(0, 7, (60, 45), generator=g).float()
    b = (a + torch.randint(-3, 4, (60, 45), generator=g)).float()
    b[:5] = torch.randint(0, 3, (5, 45), generator=g).float()  # heavy ties
    ia, ib = rank_info(a), rank_info(b)
    kt, sp = kendall_tau_b_rows(ia, ib), spearman_rows(ia, ib)
    for i in range(60):
        assert kt[i].item() == pytest.approx(scipy.stats.kendalltau(a[i], b[i]).statistic, abs=1e-12)
        assert sp[i].item() == pytest.approx(scipy.stats.spearmanr(a[i], b[i]).statistic, abs=1e-12)
    np.testing.assert_allclose(ia.avg_rank.numpy(), scipy.stats.rankdata(a.numpy(), axis=1))
    # long rows (several merge levels), float64 path, continuous values
    x = torch.randn(6, 999, generator=g, dtype=torch.float64)
    w = x + torch.randn(6, 999, generator=g, dtype=torch.float64)
    kt = kendall_tau_b_rows(rank_info(x), rank_info(w.round(decimals=1)))
    for i in range(6):
        assert kt[i].item() == pytest.approx(scipy.stats.kendalltau(x[i], w[i].round(decimals=1)).statistic, abs=1e-12)


@pytest.mark.parametrize("n", [2, 3, 8, 9, 31, 64, 100])
def test_count_inversions_brute_force(n):
    g = torch.Generator().manual_seed(n)
    y = torch.randint(0, 6, (5, n), generator=g)
    ref = [sum(int(r[i] > r[j]) for i in range(n) for j in range(i + 1, n)) for r in y.tolist()]
    assert count_inversions(y).tolist() == ref


def test_constant_rows_are_skipped_and_counted():
    c = 6
    y = torch.zeros(4, dtype=torch.long)
    a = torch.randn(4, c)
    b = a.clone()
    b[0, 1:] = 0.0  # all non-target logits equal: rank correlations undefined
    rc = rank_consistency([a, b], y, ["a", "b"])
    assert rc.value("spearman", "a", "b") == pytest.approx(1.0)
    assert rc.undefined["spearman"][0][1] == 1 and rc.undefined["kendall"][0][1] == 1


def test_streaming_ranks_equal_one_shot_and_kendall_stride():
    za, y = _teacher_logits(n=300, c=25, seed=11)
    zb = za + 0.8 * torch.randn(300, 25, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    one = rank_consistency([za, zb], y, ["a", "b"], chunk_size=300)
    many = rank_consistency([za, zb], y, ["a", "b"], chunk_size=37)
    for m in one.matrices:
        np.testing.assert_allclose(one.matrices[m], many.matrices[m], rtol=1e-12)
    s1 = rank_consistency([za, zb], y, ["a", "b"], chunk_size=300, kendall_stride=3)
    s2 = rank_consistency([za, zb], y, ["a", "b"], chunk_size=41, kendall_stride=3)
    assert s1.value("kendall", "a", "b") == pytest.approx(s2.value("kendall", "a", "b"), rel=1e-12)
    sub = kendall_tau_b_rows(*(rank_info(split_nontarget(x.float(), y)[0][::3]) for x in (za, zb))).mean()
    assert s1.value("kendall", "a", "b") == pytest.approx(sub.item(), rel=1e-9)


# -- geometry --------------------------------------------------------------------------------------
def test_angles_orthogonal_centres_and_fixed_intra_angle():
    theta = math.radians(25.0)
    c, d = 4, 8
    eye = torch.eye(d, dtype=torch.float64)
    feats, ys = [], []
    for k in range(c):
        centre, side = eye[k], eye[k + c]
        for sign in (1.0, -1.0):  # symmetric, so the mean direction is the centre itself
            feats.append(3.0 * (math.cos(theta) * centre + sign * math.sin(theta) * side))
            ys.append(k)
    f, y = torch.stack(feats), torch.tensor(ys)
    g = feature_geometry(f, y)
    assert g.inter_angle == pytest.approx(90.0)
    assert g.intra_angle == pytest.approx(25.0)
    assert g.per_class_intra == pytest.approx([25.0] * c)
    # streaming one pass keeping features == two passes
    acc = FeatureGeometryAccumulator(keep_features=True)
    for i in range(0, len(y), 3):
        acc.update(f[i : i + 3], y[i : i + 3])
    g2 = acc.result()
    assert g2.intra_angle == pytest.approx(g.intra_angle) and g2.inter_angle == pytest.approx(g.inter_angle)


def test_geometry_skips_zero_features():
    f = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    g = feature_geometry(f, torch.tensor([0, 0, 1]))
    assert g.num_zero_features == 1 and g.intra_angle == pytest.approx(0.0) and g.inter_angle == pytest.approx(90.0)


# -- decompositions ----------------------------------------------------------------------------------
def test_ats_terms_sum_to_soft_cross_entropy():
    zt, y = _teacher_logits(n=50, c=10, margin=8.0, seed=12)
    zs = torch.randn(50, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for kwargs in ({}, {"student_temperature": 1.0, "target_temperature": 6.0}):
        d = ats_decomposition(zs, zt, y, 3.0, **kwargs)
        total = d["correct_guidance"] + d["smoothing"] + d["discriminability"]
        assert torch.allclose(total, d["soft_ce"], rtol=1e-12)
    # independent reference for the plain-TS soft CE
    ref = -(F.softmax(zt / 3.0, 1) * F.log_softmax(zs / 3.0, 1)).sum(1)
    d = ats_decomposition(zs, zt, y, 3.0)
    assert torch.allclose(d["soft_ce"], ref, rtol=1e-12)
    assert (d["smoothing"] >= 0).all()


def test_dkd_identity():
    zt, y = _teacher_logits(n=40, c=7, seed=13)
    zs = torch.randn(40, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    d = dkd_decomposition(zs, zt, y, 4.0)
    ref = F.kl_div(F.log_softmax(zs / 4, 1), F.log_softmax(zt / 4, 1), log_target=True, reduction="none").sum(1)
    assert torch.allclose(d["kd"], ref, rtol=1e-10)
    assert torch.allclose(d["tckd"] + d["weight"] * d["nckd"], d["kd"], rtol=1e-10)
    assert torch.allclose(d["weight"], 1 - F.softmax(zt / 4, 1)[torch.arange(40), y], rtol=1e-10)


def test_aid_identity_and_streaming():
    zt, y = _teacher_logits(n=230, c=9, seed=14)
    zs = torch.randn(230, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    d = aid_decomposition(zs[:64], zt[:64], 2.0)
    assert (d["inter"] + d["intra"]).item() == pytest.approx(d["kd"].item(), rel=1e-12)
    assert d["inter"] >= 0 and d["intra"] >= 0
    ref = F.kl_div(F.log_softmax(zs[:64] / 2, 1), F.log_softmax(zt[:64] / 2, 1), log_target=True, reduction="batchmean")
    assert d["kd"].item() == pytest.approx(ref.item(), rel=1e-12)

    def run(chunks):
        acc = DecompositionAccumulator("t", "s", temperature=2.0, aid_batch_size=64)
        for lo, hi in chunks:
            acc.update(zs[lo:hi], zt[lo:hi], y[lo:hi])
        return acc.result()

    a, b = run([(0, 230)]), run([(0, 10), (10, 100), (100, 101), (101, 230)])
    for part in ("ats", "dkd", "aid"):
        for k in getattr(a, part):
            assert getattr(a, part)[k] == pytest.approx(getattr(b, part)[k], rel=1e-10), (part, k)
    assert a.aid["inter"] + a.aid["intra"] == pytest.approx(a.aid["kd"], rel=1e-10)
    assert a.aid["kd"] == pytest.approx(a.dkd["kd"], rel=1e-10)  # both are the dataset-mean KD
    assert a.dkd["tckd"] + a.dkd["weighted_nckd"] == pytest.approx(a.dkd["kd"], rel=1e-10)
    assert sum(a.ats[k] for k in ("correct_guidance", "smoothing", "discriminability")) == pytest.approx(
        a.ats["soft_ce"]
    )


# -- api, report, card -------------------------------------------------------------------------------
def _ladder(n=256, c=12, d=6):
    g = torch.Generator().manual_seed(15)
    y = torch.randint(0, c, (n,), generator=g)
    base = torch.randn(n, c, generator=g)
    cent = torch.randn(c, d, generator=g)

    def make(name, params, scale, margin, spread):
        z = scale * base + 0.3 * torch.randn(n, c, generator=g)
        z[torch.arange(n), y] += margin
        f = cent[y] + spread * torch.randn(n, d, generator=g)
        return TeacherOutputs(name, params, z, y, f)

    teachers = [make("small", 1000, 1.0, 4.0, 1.0), make("large", 50000, 2.0, 18.0, 0.3)]
    student = make("student", 500, 1.0, 2.0, 1.5)
    return teachers, student


def test_diagnose_writes_report(tmp_path):
    teachers, student = _ladder()
    res = diagnose(
        teachers, [student], temperatures=[1.0, 4.0], out_dir=tmp_path, options=DiagnoseOptions(chunk_size=100)
    )
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html and "report card" in html.lower()
    data = json.loads((tmp_path / "diagnostics.json").read_text())
    assert [t["name"] for t in data["teachers"]] == ["small", "large"] and data["students"][0]["name"] == "student"
    for name in (
        "teacher_stats.csv",
        "model_summary.csv",
        "rank_spearman.csv",
        "rank_kendall.csv",
        "angles.csv",
        "decompositions.csv",
        "tau_star_hist.csv",
        "cards.md",
        "nt_var_vs_capacity.png",
        "tau_star_hist.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    assert set(res.geometry) == {"small", "large", "student"}
    assert res.rank_fidelity("student", "large") == pytest.approx(res.ranks.value("spearman", "large", "student"))
    assert len(res.decompositions) == 2 and len(res.cards) == 2
    card = res.card("large", "student")
    assert card.reference == "small" and DISCLAIMER in card.to_text()
    assert "MEASUREMENTS, NOT A PREDICTION" in card.to_text() and "darkknowledge tune" in card.to_text()
    assert DISCLAIMER in html.replace("&#x27;", "'")
    # stream == in-memory
    batches = (OutputsBatch(targets=teachers[0].targets[i : i + 50],
                            logits={m.name: m.logits[i : i + 50] for m in (*teachers, student)})
               for i in range(0, 256, 50))  # fmt: skip
    res2 = diagnose_stream(batches, teachers={"small": 1000, "large": 50000}, students={"student": 500},
                           temperatures=[1.0, 4.0], options=DiagnoseOptions(chunk_size=100))  # fmt: skip
    assert res2.model("large").row(4.0)["nt_var"] == pytest.approx(res.model("large").row(4.0)["nt_var"], rel=1e-10)
    np.testing.assert_allclose(res2.ranks.matrices["kendall"], res.ranks.matrices["kendall"], rtol=1e-12)


def test_result_records_the_data_in_json_and_report(tmp_path):
    teachers, student = _ladder(n=64)
    data = {"dataset": "digits", "split": "test", "per_class": 5, "image_size": 16, "image_shape": [1, 16, 16]}
    res = diagnose(
        teachers, [student], temperatures=[4.0], out_dir=tmp_path, options=DiagnoseOptions(plots=False), data=data
    )
    assert res.data == {**data, "num_samples": 64}  # the count is the number of rows diagnosed
    assert json.loads((tmp_path / "diagnostics.json").read_text())["data"] == res.data
    html = (tmp_path / "report.html").read_text()
    assert "Data: digits, test split, 64 samples; images 16x16 (resized); subset: at most 5 per class." in html
    # without a record the report says so, and the sample count is still there
    bare = diagnose(teachers, temperatures=[4.0], out_dir=tmp_path / "bare", options=DiagnoseOptions(plots=False))
    assert bare.data == {"num_samples": 64}
    assert "Data: 64 samples of precomputed logits." in (tmp_path / "bare" / "report.html").read_text()


def test_tau_star_on_a_search_bound_warns_in_json_and_report(tmp_path):
    teachers, student = _ladder(n=128)
    # the default range [0.5, 20] holds the teachers' optima; the weak student's lie below it
    (warning,) = diagnose(teachers, [student], temperatures=[4.0]).warnings
    assert warning.startswith("student: ") and "lower search bound 0.5" in warning
    # a range above every optimum: all tau* sit on its lower bound
    opts = DiagnoseOptions(tau_min=50.0, tau_max=60.0, plots=False)
    res = diagnose(teachers, [student], temperatures=[4.0], out_dir=tmp_path, options=opts)
    assert len(res.warnings) == 3 and all("lower search bound 50" in w for w in res.warnings)
    assert res.warnings[0].startswith("small: 100% of the per-sample tau*") and "\n" not in res.warnings[0]
    assert json.loads((tmp_path / "diagnostics.json").read_text())["warnings"] == res.warnings
    assert "Warnings" in (tmp_path / "report.html").read_text()
    # below every optimum: the upper bound
    res = diagnose(teachers[1:], temperatures=[4.0], options=DiagnoseOptions(tau_min=0.01, tau_max=0.02))
    assert len(res.warnings) == 1 and "upper search bound 0.02" in res.warnings[0]


def test_tau_bound_warning_threshold_is_ten_percent():
    from darkknowledge.diagnostics.result import TAU_BOUND_WARNING_FRACTION, tau_bound_warnings

    def stats(at_min, at_max):
        tau = {"frac_at_min": at_min, "frac_at_max": at_max, "tau_min": 0.5, "tau_max": 20.0}
        return SimpleNamespace(name="m", tau_star=tau)

    assert TAU_BOUND_WARNING_FRACTION == 0.10
    assert tau_bound_warnings([stats(0.10, 0.0), stats(0.0, 0.05), SimpleNamespace(name="x", tau_star=None)]) == []
    assert len(tau_bound_warnings([stats(0.11, 0.11)])) == 2
    assert tau_bound_warnings([stats(float("nan"), float("nan"))]) == []  # no defined tau*


def test_tau_star_of_misclassified_samples_is_the_lower_bound_and_reported_apart():
    from darkknowledge.diagnostics.result import tau_bound_warnings

    g = torch.Generator().manual_seed(0)
    n, c = 400, 50
    targets = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g)
    wrong = torch.arange(n) < 160  # 40 % misclassified: another class on top
    logits[torch.arange(n), targets] = torch.where(wrong, torch.tensor(0.0), torch.tensor(6.0))
    logits[wrong, (targets[wrong] + 1) % c] = 6.0
    stats = teacher_stats(logits, targets, temperatures=[1.0], name="lm-like")
    tau = stats.tau_star
    assert tau["frac_misclassified"] == pytest.approx(0.4)
    assert tau["frac_at_min"] >= 0.4 and tau["frac_at_min_correct"] < 0.1  # the bound: the wrong samples
    assert tau["median_correct"] > tau["tau_min"]
    (warning,) = tau_bound_warnings([stats])
    assert "misclassifies (40%)" in warning and "widen" not in warning
    # where the correct samples crowd the bound too, the advice stays: widen the range
    narrow = teacher_stats(logits, targets, temperatures=[1.0], name="narrow", tau_min=8 * tau["median_correct"])
    (clipped,) = tau_bound_warnings([narrow])
    assert narrow.tau_star["frac_at_min_correct"] > 0.9 and "widen the range" in clipped


def test_card_pairs_choose_which_students_a_teacher_is_carded_with():
    teachers, student = _ladder(n=64)
    other = TeacherOutputs("other", 400, student.logits.flip(1), student.targets)
    every = diagnose(teachers, [student, other], temperatures=[4.0])
    assert [(c.teacher, c.student) for c in every.cards] == [
        ("small", "student"), ("small", "other"), ("large", "student"), ("large", "other")]  # fmt: skip
    chosen = diagnose(teachers, [student, other], temperatures=[4.0], card_pairs=[("large", "student")])
    # a teacher in no pair keeps a card of its own
    assert [(c.teacher, c.student) for c in chosen.cards] == [("small", None), ("large", "student")]
    assert len(chosen.decompositions) == 4  # the statistics themselves are unchanged
    with pytest.raises(UserError, match="card pair"):
        diagnose(teachers, [student], temperatures=[4.0], card_pairs=[("student", "large")])


def test_card_gives_no_verdict_and_recommends_what_tune_chose():
    teachers, student = _ladder()
    small = teacher_stats(teachers[0].logits, teachers[0].targets, name="small", num_params=1000)
    large = teacher_stats(teachers[1].logits, teachers[1].targets, name="large", num_params=50000)
    card = make_card(large, reference=small, temperature=4.0)
    assert large.at(4.0, "nt_var") < small.at(4.0, "nt_var")  # the constructed over-confident teacher
    # no rule predicted mismatch out of sample (docs/diagnostics.md): measurements and a pointer to tune
    assert card.mismatch is None and card.method is None and card.method_params == {}
    assert card.verdict.startswith("No verdict") and "x the smaller small's" in card.verdict
    assert "darkknowledge tune" in card.recommendation
    assert card.disclaimer == DISCLAIMER and DISCLAIMER in card.to_text()
    assert "tau*" in card.to_text() and any(a.startswith("ISATS") for a in card.alternatives)
    tuned = TunedChoice("large", "student", "dist", {"temperature": 2.0}, 91.0, "runs/tune/result.json")
    chosen = make_card(large, reference=small, temperature=4.0, tuned=tuned)
    assert chosen.method == "dist" and chosen.method_params == {"temperature": 2.0}
    assert "chosen by `darkknowledge tune`" in chosen.recommendation and "91.0 %" in chosen.recommendation
    other = make_card(small, reference=None, temperature=4.0, tuned=tuned)  # tune chose another teacher
    assert other.method is None and "Run `darkknowledge tune`" in other.recommendation
    text = card.to_text() + chosen.to_text()
    for finding in ("points above KD", "measured pairs", "beat it", "seeds;"):  # measured results live in docs
        assert finding not in text


def test_logits_file_roundtrip(tmp_path):
    teachers, student = _ladder(n=120)
    y = teachers[0].targets.numpy()
    path = tmp_path / "outs.npz"
    np.savez(path, targets=y, logits_small=teachers[0].logits.numpy().astype(np.float16),
             logits_large=teachers[1].logits.numpy(), logits_student=student.logits.numpy(),
             num_params_small=np.array(1000), num_params_large=np.array(50000),
             features_large=teachers[1].features.numpy())  # fmt: skip
    res = diagnose_from_logits_file(path, students=["student"], temperatures=[2.0])
    assert [t.name for t in res.teachers] == ["small", "large"] and res.teachers[1].num_params == 50000
    assert "large" in res.geometry and res.students[0].name == "student"
    direct = teacher_stats(teachers[1].logits, teachers[1].targets, [2.0], tau_star=False)
    assert res.model("large").row(2.0)["nt_var"] == pytest.approx(direct.row(2.0)["nt_var"], rel=1e-6)
    npy = tmp_path / "one.npy"
    np.save(npy, teachers[0].logits.numpy())
    res1 = diagnose_from_logits_file(npy, targets=y, temperatures=[2.0])
    assert res1.teachers[0].name == "one" and res1.ranks is None and len(res1.cards) == 1
    with pytest.raises(UserError):
        diagnose_from_logits_file(npy, temperatures=[2.0])  # no targets


def test_user_errors():
    teachers, student = _ladder(n=40)
    bad = TeacherOutputs("bad", None, teachers[0].logits, (teachers[0].targets + 1) % 12)
    with pytest.raises(UserError, match="different targets"):
        diagnose([teachers[0], bad])
    with pytest.raises(UserError, match="labels"):
        teacher_stats(teachers[0].logits, teachers[0].targets + 100)
    z = teachers[0].logits.clone()
    z[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        teacher_stats(z, teachers[0].targets)
    with pytest.raises(UserError):
        TeacherOutputs("x", None, torch.zeros(3, 4), torch.zeros(2))
    with pytest.raises(UserError, match="unique"):
        diagnose([teachers[0], teachers[0]])


class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU())
        self.classifier = nn.Linear(5, 3)

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def test_collect_outputs():
    model = _TinyModel()
    model.train()
    g = torch.Generator().manual_seed(16)
    batches = [SimpleNamespace(images=torch.randn(7, 3, 2, 2, generator=g), targets=torch.randint(0, 3, (7,), generator=g))
               for _ in range(3)]  # fmt: skip
    out = collect_outputs(model, batches, "cpu", name="tiny")
    assert model.training  # mode restored
    assert out.logits.shape == (21, 3) and out.features.shape == (21, 5) and out.targets.shape == (21,)
    assert out.num_params == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        ref = model(torch.cat([b.images for b in batches]))
    assert torch.allclose(out.logits, ref, atol=1e-6)
    with pytest.raises(UserError):
        collect_outputs(nn.Linear(2, 2), batches)


def test_capacity_plots_join_the_ladder_and_set_same_size_variants_apart():
    from darkknowledge.diagnostics.plots import ladder_positions

    # sizes 10, 20, 40, 40, 40 (a teacher and two variants of it): lines through 10, 20, 40
    ladder, variants = ladder_positions([10.0, 20.0, 40.0, 40.0, 40.0], log_x=True)
    assert ladder == [0, 1, 2]
    assert [j for j, _ in variants] == [3, 4] and 40.0 < variants[0][1] < variants[1][1]
    assert ladder_positions([0.0, 1.0, 2.0], log_x=False) == ([0, 1, 2], [])  # no sizes: given order, all joined
