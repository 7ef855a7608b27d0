"""Tests of the method zoo (src/darkknowledge/methods/*).

Golden values were computed once with an independent float64 NumPy implementation
written from the papers' formulas (explicit probabilities, ``np.corrcoef`` for DIST, the
literal pairwise relative-confidence vectors for RCKD, the power transform p_t^gamma for
TTM/WTTM, mdistiller-style renormalised probabilities for DKD), not with this package.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from darkknowledge.errors import UserError
from darkknowledge.methods import METHODS, SetupContext, StepContext, build_method
from darkknowledge.methods.ats import ats_loss
from darkknowledge.methods.ctkd import ctkd_lambda, ctkd_temperature, grad_reverse
from darkknowledge.methods.dist import dist_loss
from darkknowledge.methods.dkd import dkd_components, dkd_loss, dkd_warmup
from darkknowledge.methods.fgcr import class_relation_matrix, fgcr_loss, fgcr_teacher_log_probs
from darkknowledge.methods.functional import tempered_kl
from darkknowledge.methods.isats import ISATSParams, isats_loss, isats_loss_and_temperature, isats_temperatures
from darkknowledge.methods.kd import kd_loss
from darkknowledge.methods.lskd import lskd_loss
from darkknowledge.methods.rckd import rckd_loss
from darkknowledge.methods.ttm import ttm_loss
from darkknowledge.methods.wttm import wttm_loss, wttm_weights
from darkknowledge.nontarget import TARGET_RATIO, isats_search
from support import gold_inputs

# ---------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------

# A fixed row-stochastic relation matrix for the FGCR golden value.
GOLD_M = [[0, 4, 3, 2, 1], [1, 0, 1, 1, 1], [2, 2, 0, 1, 1], [5, 1, 1, 0, 3], [1, 2, 3, 4, 0]]

# Default parameters of every method; values from the independent NumPy computation.
GOLDEN = {
    "kd": (kd_loss, {"ce": 0.2472465828, "kd": 3.272103221}),
    "ats": (ats_loss, {"ce": 1.236232914, "kd": 1.397739161}),
    "dkd": (dkd_loss, {"ce": 2.472465828, "tckd": 1.565834866, "nckd": 22.09892473}),
    "dist": (dist_loss, {"ce": 2.472465828, "inter": 31.64712292, "intra": 36.42305224}),
    "rckd": (rckd_loss, {"ce": 2.472465828, "kd": 74.46473821}),
    "ttm": (ttm_loss, {"ce": 2.472465828, "kd": 9.499114394}),
    "wttm": (wttm_loss, {"ce": 2.472465828, "kd": 8.523600624}),
    "lskd": (lskd_loss, {"ce": 0.2472465828, "kd": 6.43222104}),
}
GOLDEN_FGCR = {"ce": 0.2472465828, "kd": 2.827742665}


def fake_setup_ctx(num_classes: int, teacher: torch.Tensor, targets: torch.Tensor, batch_size: int = 3) -> SetupContext:
    """A SetupContext whose 'images' are the teacher logits themselves."""

    def batches():
        for i in range(0, len(targets), batch_size):
            yield SimpleNamespace(images=teacher[i : i + batch_size], targets=targets[i : i + batch_size])

    return SetupContext(num_classes=num_classes, teacher_logits_fn=lambda b: b.images, train_batches=batches)


def ready_method(name: str, num_classes: int, params: dict | None = None, seed: int = 0):
    """Build a registered method and run its setup on a small random 'training set'."""
    method = build_method(name, params or {}, num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    n = 4 * num_classes
    teacher = torch.randn(n, num_classes, generator=g) * 3
    targets = torch.arange(n) % num_classes
    method.setup(fake_setup_ctx(num_classes, teacher, targets))
    return method


def distill_terms(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in terms.items() if k != "ce")


def random_batch(batch=8, classes=10, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g) * scale
    t = torch.randn(batch, classes, generator=g) * scale
    y = torch.randint(0, classes, (batch,), generator=g)
    return s, t, y


ALL = METHODS.names()
DISTILLERS = [n for n in ALL if METHODS.get(n).needs_teacher]

# ---------------------------------------------------------------------------------------
# registry round-trip
# ---------------------------------------------------------------------------------------


def test_expected_methods_registered():
    for name in ["ce", "kd", "ats", "isats", "fgcr", "rckd", "dkd", "dist", "ctkd", "lskd", "ttm", "wttm"]:
        assert name in METHODS


@pytest.mark.parametrize("name", ALL)
def test_registry_roundtrip(name):
    method = ready_method(name, 10)
    cls = METHODS.get(name)
    assert cls.summary and cls.name == name
    for fname, field in cls.Params.model_fields.items():
        assert field.description, f"{name}.{fname} has no description"
    s, t, y = random_batch(classes=10)
    s.requires_grad_(True)
    terms = method(s, t, y, StepContext(epoch=30, num_epochs=240, step_in_epoch=3, steps_per_epoch=10))
    assert isinstance(terms, dict) and terms
    for key, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, key)
    sum(terms.values()).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    method.epoch_stats()  # summarises whatever was recorded


@pytest.mark.parametrize("name", ALL)
def test_bad_params_name_the_key(name):
    with pytest.raises(UserError, match="no_such_param"):
        build_method(name, {"no_such_param": 1.0}, num_classes=10)
    fields = METHODS.get(name).Params.model_fields
    for key in ("ce_weight", "temperature", "kd_weight"):
        if key in fields:
            with pytest.raises(UserError, match=key):
                build_method(name, {key: -1.0}, num_classes=10)


def test_isats_param_cross_checks():
    with pytest.raises(UserError, match="tau_max"):
        build_method("isats", {"tau_min": 5.0, "tau_max": 2.0})
    with pytest.raises(UserError, match="target_temperature"):
        build_method("isats", {"search_rule": "C", "tau_min": 1.0, "target_temperature": 0.5})
    with pytest.raises(UserError, match="search_rule"):
        build_method("isats", {"search_rule": "D"})


# ---------------------------------------------------------------------------------------
# robustness: C = 2, huge logits, bf16, for every method
# ---------------------------------------------------------------------------------------


def _extreme_cases():
    g = torch.Generator().manual_seed(1)
    yield (
        "c2",
        torch.randn(6, 2, generator=g) * 3,
        torch.randn(6, 2, generator=g) * 3,
        torch.randint(0, 2, (6,), generator=g),
    )
    sign_s = torch.randint(0, 2, (6, 7), generator=g).float() * 2 - 1
    sign_t = torch.randint(0, 2, (6, 7), generator=g).float() * 2 - 1
    yield "huge", sign_s * 1e4, sign_t * 1e4, torch.randint(0, 7, (6,), generator=g)
    yield (
        "huge_c2",
        torch.tensor([[1e4, -1e4], [-1e4, 1e4]]),
        torch.tensor([[-1e4, 1e4], [-1e4, 1e4]]),
        torch.tensor([0, 1]),
    )
    s, t, y = random_batch(batch=5, classes=9, seed=2)
    yield "bf16", s.bfloat16(), t.bfloat16(), y
    yield "constant_rows", torch.zeros(3, 4), torch.ones(3, 4), torch.tensor([0, 1, 2])


@pytest.mark.parametrize("case", [c[0] for c in _extreme_cases()])
@pytest.mark.parametrize("name", ALL)
def test_finite_on_extreme_inputs(name, case):
    _, s, t, y = next(c for c in _extreme_cases() if c[0] == case)
    method = ready_method(name, s.shape[1])
    s = s.clone().requires_grad_(True)
    terms = method(s, t, y, StepContext(epoch=100, steps_per_epoch=10))
    for key, value in terms.items():
        assert value.dtype == torch.float32, (name, key)
        assert torch.isfinite(value), (name, case, key, value)
    sum(terms.values()).backward()
    assert s.grad.dtype == s.dtype
    assert torch.isfinite(s.grad.float()).all(), (name, case)
    for param in method.parameters():
        assert param.grad is None or torch.isfinite(param.grad).all()


# ---------------------------------------------------------------------------------------
# golden values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_values(name):
    fn, expected = GOLDEN[name]
    terms = fn(*gold_inputs())
    assert set(terms) == set(expected)
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=2e-5), (name, key)
    # the registered module gives the same numbers with its defaults
    module_terms = build_method(name, {}, num_classes=5)(*gold_inputs(), StepContext(epoch=1000))
    for key, value in expected.items():
        assert module_terms[key].item() == pytest.approx(value, rel=2e-5), (name, key)


def test_golden_fgcr():
    relation = torch.tensor(GOLD_M, dtype=torch.float32)
    relation = relation / relation.sum(1, keepdim=True)
    terms = fgcr_loss(*gold_inputs(), relation=relation)
    for key, value in GOLDEN_FGCR.items():
        assert terms[key].item() == pytest.approx(value, rel=2e-5)


# ---------------------------------------------------------------------------------------
# student == teacher
# ---------------------------------------------------------------------------------------


def _zero_check(fn, student_of_teacher=lambda t: t.clone(), atol=1e-5, **kw):
    s, t, y = random_batch(batch=16, classes=10, seed=3)
    s = student_of_teacher(t).requires_grad_(True)
    terms = fn(s, t, y, **kw)
    loss = distill_terms(terms)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=atol)
    assert s.grad.abs().max().item() < atol
    return terms


@pytest.mark.parametrize(
    "fn, kw",
    [
        (kd_loss, {}),
        (kd_loss, {"logit_standardization": True}),
        (lskd_loss, {}),
        (dkd_loss, {}),
        (dkd_loss, {"logit_standardization": True}),
        (dist_loss, {}),
        (rckd_loss, {}),
    ],
)
def test_zero_loss_and_gradient_when_student_equals_teacher(fn, kw):
    _zero_check(fn, **kw)


def test_zero_loss_under_affine_maps_where_invariant():
    # LS-KD and RCKD only see standardised / correlated logits: a positive affine map is free.
    _zero_check(lskd_loss, student_of_teacher=lambda t: 3.0 * t - 2.0)
    _zero_check(rckd_loss, student_of_teacher=lambda t: 0.5 * t + 7.0)


def test_ttm_zero_only_against_tempered_teacher():
    T = 1 / 0.3
    _zero_check(ttm_loss, student_of_teacher=lambda t: t / T + 1.0)
    _zero_check(wttm_loss, student_of_teacher=lambda t: t / T)
    s, t, y = random_batch(seed=3)
    assert distill_terms(ttm_loss(t.clone(), t, y)).item() > 1e-3  # the untempered copy is not a minimiser


def test_ats_symmetric_equals_kd_up_to_entropy():
    # tau1 = tau2 = tau_s: soft CE = KL + H(q); zero gradient at student == teacher.
    s, t, y = random_batch(batch=16, classes=10, seed=4)
    T = 3.0
    kw = dict(target_temperature=T, nontarget_temperature=T, student_temperature=T, ce_weight=0.0, kd_weight=1.0)
    ats = ats_loss(s, t, y, **kw)["kd"]
    q = F.softmax(t / T, -1)
    entropy = -(q * q.log()).sum(-1).mean()
    kl = tempered_kl(s, t, T).mean()
    assert ats.item() == pytest.approx((T**2 * (kl + entropy)).item(), rel=1e-5)
    s_eq = t.clone().requires_grad_(True)
    ats_loss(s_eq, t, y, **kw)["kd"].backward()
    assert s_eq.grad.abs().max().item() < 1e-6


def test_ctkd_zero_when_student_equals_teacher():
    method = build_method("ctkd", {}, num_classes=10)
    s, t, y = random_batch(seed=5)
    s = t.clone().requires_grad_(True)
    terms = method(s, t, y, StepContext(epoch=20))
    terms["kd"].backward()
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-5)
    assert s.grad.abs().max() < 1e-5 and method.theta.grad.abs() < 1e-5


# ---------------------------------------------------------------------------------------
# ATS
# ---------------------------------------------------------------------------------------


def test_ats_teacher_label_and_shift_dependence():
    from darkknowledge.methods.ats import ats_teacher_log_probs

    z = torch.tensor([[15.0, 0.5, -1.0, 2.0]])
    y = torch.tensor([0])
    q = ats_teacher_log_probs(z, y, target_temperature=4.0, nontarget_temperature=2.0).exp()
    expected = torch.softmax(torch.tensor([15 / 4, 0.5 / 2, -1 / 2, 2 / 2]), -1)
    assert torch.allclose(q, expected.unsqueeze(0), atol=1e-6)
    # raw logits: a constant shift changes q; centring removes the dependence
    shifted = ats_teacher_log_probs(z + 5, y, target_temperature=4.0, nontarget_temperature=2.0).exp()
    assert (shifted[0, 0] - q[0, 0]).abs() > 0.01
    c1 = ats_teacher_log_probs(z, y, target_temperature=4.0, nontarget_temperature=2.0, center_logits=True)
    c2 = ats_teacher_log_probs(z + 5, y, target_temperature=4.0, nontarget_temperature=2.0, center_logits=True)
    assert torch.allclose(c1, c2, atol=1e-5)


def test_ats_target_is_ground_truth_not_argmax():
    from darkknowledge.methods.ats import ats_teacher_log_probs

    z = torch.tensor([[5.0, 1.0, 0.0]])
    q_gt1 = ats_teacher_log_probs(z, torch.tensor([1]), target_temperature=4.0, nontarget_temperature=1.0).exp()
    expected = torch.softmax(torch.tensor([5.0, 1 / 4, 0.0]), -1)
    assert torch.allclose(q_gt1[0], expected, atol=1e-6)


# ---------------------------------------------------------------------------------------
# ISATS
# ---------------------------------------------------------------------------------------


def _brute_force_tau(z: np.ndarray, y: int, rule: str, lo=0.5, hi=20.0, k=2.0, tau1=4.0, n=20_000) -> float:
    """Dense float64 grid argmax of the ddof-0 variance of the non-target full-softmax entries."""
    if rule == "C":
        hi = min(hi, tau1)
    taus = np.exp(np.linspace(np.log(lo), np.log(hi), n))
    scaled = z[None, :] / taus[:, None]
    if rule == "B":
        scaled[:, y] = z[y] / (k * taus)
    if rule == "C":
        scaled[:, y] = z[y] / tau1
    scaled -= scaled.max(1, keepdims=True)
    p = np.exp(scaled)
    p /= p.sum(1, keepdims=True)
    var = np.delete(p, y, axis=1).var(axis=1)
    return float(taus[var.argmax()])


def _confidence_ladder(batch=40, classes=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.3, 4.0, batch).unsqueeze(1)
    z = torch.randn(batch, classes, generator=g) * spread
    y = torch.randint(0, classes, (batch,), generator=g)
    z[torch.arange(batch), y] += torch.linspace(0.0, 30.0, batch)  # from unsure to very confident
    return z, y


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("rule", ["A", "B"])
def test_isats_search_matches_dense_brute_force(rule, classes):
    z, y = _confidence_ladder(classes=classes, seed=classes)
    tau = isats_search(z, y, search_rule=rule, tau_min=0.5, tau_max=20.0, target_ratio=2.0)
    reference = np.array([_brute_force_tau(z[i].double().numpy(), int(y[i]), rule) for i in range(len(y))])
    rel = np.abs(tau.numpy() / reference - 1)
    assert rel.max() < 0.01, rel.max()
    assert (tau >= 0.5 - 1e-6).all() and (tau <= 20.0 + 1e-4).all()


@pytest.mark.parametrize("classes", [10, 100])
def test_isats_loss_default_search_matches_dense_brute_force(classes):
    """The loss's default search settings (one 64-point grid + a parabola: the cheap
    setting for training) keep tau* within 1 % of a dense brute force."""
    p = build_method("isats", {}, num_classes=classes).params
    z, y = _confidence_ladder(classes=classes, seed=classes + 1)
    tau = isats_search(
        z,
        y,
        search_rule=p.search_rule,
        tau_min=p.tau_min,
        tau_max=p.tau_max,
        grid_size=p.grid_size,
        refine_size=p.refine_size,
    )
    reference = np.array([_brute_force_tau(z[i].double().numpy(), int(y[i]), "A") for i in range(len(y))])
    assert np.abs(tau.numpy() / reference - 1).max() < 0.01


def test_isats_single_grid_option_and_custom_range():
    z, y = _confidence_ladder(batch=24, seed=5)
    tau = isats_search(z, y, grid_size=64, refine_size=0, tau_min=0.25, tau_max=40.0)
    reference = np.array(
        [_brute_force_tau(z[i].double().numpy(), int(y[i]), "A", lo=0.25, hi=40.0) for i in range(len(y))]
    )
    assert np.abs(tau.numpy() / reference - 1).max() < 0.01


def test_isats_logit_standardization_uses_z_scores_but_raw_ce():
    from darkknowledge.methods.functional import standardize_logits

    s, t, y = random_batch(batch=10, classes=12, seed=19)
    got = isats_loss(s, t, y, logit_standardization=True)
    zs, zt = standardize_logits(s), standardize_logits(t)
    ref = isats_loss(zs, zt, y)
    assert torch.allclose(got["kd"], ref["kd"], atol=1e-6)
    assert torch.allclose(got["ce"], ISATSParams().ce_weight * F.cross_entropy(s, y))
    # z-scoring makes the method invariant to positive affine maps of the teacher
    again = isats_loss(s, 4.0 * t + 3.0, y, logit_standardization=True)
    assert torch.allclose(got["kd"], again["kd"], atol=1e-5)


def test_isats_rule_a_interior_optimum_grows_with_confidence():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 100, generator=g) * 2
    z = base.repeat(4, 1)
    y = torch.zeros(4, dtype=torch.long)
    z[:, 0] = torch.tensor([9.0, 12.0, 18.0, 30.0])
    tau = isats_search(z, y, search_rule="A")
    assert (tau[1:] > tau[:-1]).all()  # more confident teacher -> higher optimal temperature
    assert (tau > 0.5).all() and (tau < 20).all()


def test_isats_rule_c_stays_in_bounds_and_matches_brute_force():
    z, y = _confidence_ladder(seed=1)
    tau = isats_search(z, y, search_rule="C", tau_min=0.5, tau_max=20.0, target_temperature=3.0)
    assert (tau >= 0.5 - 1e-6).all() and (tau <= 3.0 + 1e-5).all()
    reference = np.array([_brute_force_tau(z[i].double().numpy(), int(y[i]), "C", tau1=3.0) for i in range(len(y))])
    assert np.abs(tau.numpy() / reference - 1).max() < 0.01


def test_isats_temperature_rules():
    z, y = _confidence_ladder(batch=16)
    tau1, tau2 = isats_temperatures(
        z, y, search_rule="A", target_rule="ratio", target_ratio=1.5, misclassified_temperature=None
    )
    assert torch.allclose(tau1, 1.5 * tau2)
    tau1, tau2 = isats_temperatures(
        z, y, search_rule="A", target_rule="fixed", target_temperature=4.0, misclassified_temperature=None
    )
    assert torch.allclose(tau1, tau2.clamp(min=4.0)) and (tau1 >= tau2).all()
    tau1, tau2 = isats_temperatures(z, y, search_rule="B", target_ratio=3.0, misclassified_temperature=None)
    assert torch.allclose(tau1, 3.0 * tau2)
    tau1, tau2 = isats_temperatures(z, y, search_rule="C", target_temperature=2.5, misclassified_temperature=None)
    assert (tau1 == 2.5).all() and (tau2 <= 2.5 + 1e-5).all()
    tau1, tau2 = isats_temperatures(z, y, temperature_scope="batch", misclassified_temperature=None)
    per_row = isats_search(z, y)
    assert torch.allclose(tau2, per_row.median().expand_as(tau2)) and torch.allclose(tau1, TARGET_RATIO * tau2)
    assert per_row.unique().numel() > 1  # the batch scope really replaced different temperatures
    # rows the teacher gets wrong: the search always ends at tau_min there; a fixed symmetric T replaces it
    wrong = z.argmax(-1) != y
    assert wrong.any() and (~wrong).any() and torch.allclose(per_row[wrong], torch.full_like(per_row[wrong], 0.5))
    tau1, tau2 = isats_temperatures(z, y)  # the default: misclassified rows at T = 4
    assert (tau1[wrong] == 4.0).all() and (tau2[wrong] == 4.0).all()
    assert torch.allclose(tau2[~wrong], per_row[~wrong]) and torch.allclose(
        tau1[~wrong], TARGET_RATIO * per_row[~wrong]
    )
    # the rules are genuinely different searches
    a = isats_search(z, y, search_rule="A")
    b = isats_search(z, y, search_rule="B", target_ratio=2.0)
    assert not torch.allclose(a, b)


def test_isats_loss_equals_ats_at_searched_temperatures_and_records():
    s, t, y = random_batch(batch=12, classes=20, seed=6)
    tau1, tau2 = isats_temperatures(t, y)
    d = ISATSParams()
    expected = ats_loss(
        s,
        t,
        y,
        target_temperature=tau1,
        nontarget_temperature=tau2,
        ce_weight=d.ce_weight,
        kd_weight=d.kd_weight,
        student_temperature=d.student_temperature,
    )
    got = isats_loss(s, t, y)
    for key in expected:
        assert torch.allclose(got[key], expected[key])
    method = build_method("isats", {}, num_classes=20)
    for step in range(3):
        method(s, t, y, StepContext(step_in_epoch=step, steps_per_epoch=3))
    stats = method.epoch_stats()
    assert stats["isats_tau/mean"] == pytest.approx(tau2.mean().item(), rel=1e-5)
    assert {"isats_tau/q05", "isats_tau/q50", "isats_tau/q95"} <= set(stats)


def test_isats_search_has_no_gradient_path_and_degenerate_c2():
    s, t, y = random_batch(batch=4, classes=2, seed=7)
    t.requires_grad_(True)
    tau = isats_search(t, y)
    assert not tau.requires_grad
    assert torch.allclose(tau, torch.full_like(tau, 0.5))  # flat objective -> tau_min


def test_isats_rule_c_interior_optimum_matches_brute_force():
    # negative non-target logits: as tau2 -> 0 their mass vanishes against the fixed-
    # temperature target, as tau2 grows they flatten, so V(tau1, .) peaks inside the range
    z, y = _confidence_ladder(batch=24, seed=11)
    z = z - z.amax(1, keepdim=True) - 3.0
    z[torch.arange(24), y] += 6.0
    for tau1 in (4.0, 20.0):
        tau = isats_search(z, y, search_rule="C", tau_min=0.5, tau_max=20.0, target_temperature=tau1)
        reference = np.array(
            [_brute_force_tau(z[i].double().numpy(), int(y[i]), "C", tau1=tau1) for i in range(len(y))]
        )
        assert ((reference > 0.6) & (reference < 0.95 * tau1)).sum() >= 8  # interior optima, not just bounds
        assert np.abs(tau.numpy() / reference - 1).max() < 0.01


@pytest.mark.parametrize("rule", ["A", "B", "C"])
def test_isats_search_is_batch_invariant(rule):
    z, y = _confidence_ladder(batch=97, classes=15, seed=12)
    full = isats_search(z, y, search_rule=rule)
    parts = [isats_search(z[lo:hi], y[lo:hi], search_rule=rule) for lo, hi in [(0, 1), (1, 40), (40, 41), (41, 97)]]
    assert torch.equal(torch.cat(parts), full)


def test_isats_search_undefined_rows_and_precision():
    z, y = _confidence_ladder(batch=6, classes=10, seed=13)
    z[2] = 1.0  # all logits equal: the variance is 0 at every tau
    z[4] = 0.5
    z[4, y[4]] = 7.0  # equal non-target logits: still no optimum
    default = isats_search(z, y)
    nan = isats_search(z, y, undefined=float("nan"))
    flat = torch.tensor([False, False, True, False, True, False])
    assert torch.isnan(nan[flat]).all() and torch.isfinite(nan[~flat]).all()
    assert torch.equal(default[flat], torch.full((2,), 0.5)) and torch.equal(default[~flat], nan[~flat])
    assert torch.isnan(isats_search(z[:, :2], y.clamp(max=1), undefined=float("nan"))).all()  # C = 2
    # float64 logits give float64 tau*, float16 ones are searched in float32
    assert isats_search(z.double(), y).dtype == torch.float64
    assert isats_search(z.half(), y).dtype == torch.float32
    assert isats_search(z[:0], y[:0]).shape == (0,)
    # more golden-section iterations or a finer grid change tau* by well under 1 %
    fine = isats_search(z, y, grid_size=40, refine_size=30)
    assert torch.allclose(default[~flat], fine[~flat], rtol=5e-3)
    with pytest.raises(ValueError):
        isats_search(z, y, search_rule="D")


def test_nontarget_variance_helper_matches_numpy():
    from darkknowledge.methods.functional import target_mask
    from darkknowledge.nontarget import nontarget_variance

    s, t, y = random_batch(batch=5, classes=7, seed=20)
    p = F.softmax(t, -1)
    got = nontarget_variance(p, target_mask(y, 7))
    expected = [np.delete(p[i].double().numpy(), int(y[i])).var() for i in range(5)]
    assert np.allclose(got.numpy(), expected, rtol=1e-5, atol=1e-12)


# ---------------------------------------------------------------------------------------
# RCKD
# ---------------------------------------------------------------------------------------


def _rckd_literal(student, teacher, temperature):
    """The O(C^2) definition: cosine of strict-upper-triangle pairwise log-prob differences."""
    ls = F.log_softmax(student / temperature, -1)
    lt = F.log_softmax(teacher / temperature, -1)
    j, k = torch.triu_indices(student.shape[1], student.shape[1], offset=1)
    rs, rt = ls[:, j] - ls[:, k], lt[:, j] - lt[:, k]
    cos = (rs * rt).sum(-1) / (rs.norm(dim=-1) * rt.norm(dim=-1))
    return temperature**2 * (1 - cos.mean())


@pytest.mark.parametrize("classes", [2, 3, 7, 16])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_rckd_pearson_equals_pairwise_cosine(classes, temperature):
    s, t, y = random_batch(batch=6, classes=classes, seed=classes)
    s, t = s.double(), t.double()
    fast = rckd_loss(s, t, y, ce_weight=0.0, kd_weight=1.0, temperature=temperature)["kd"]
    assert fast.item() == pytest.approx(_rckd_literal(s, t, temperature).item(), rel=1e-10, abs=1e-12)
    # gradients agree too
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    rckd_loss(s1, t, y, ce_weight=0.0, kd_weight=1.0, temperature=temperature)["kd"].backward()
    _rckd_literal(s2, t, temperature).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-10)


# ---------------------------------------------------------------------------------------
# DKD
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_identity_kd_equals_tckd_plus_weighted_nckd(temperature):
    s, t, y = random_batch(batch=16, classes=10, seed=8)
    parts = dkd_components(s, t, y, temperature=temperature)
    kl = tempered_kl(s, t, temperature)
    rebuilt = parts["tckd"] + (1 - parts["teacher_target_prob"]) * parts["nckd"]
    assert torch.allclose(rebuilt, kl, atol=1e-5)


def test_dkd_c2_nckd_is_exactly_zero():
    s, t, y = random_batch(batch=8, classes=2, seed=9)
    parts = dkd_components(s, t, y)
    assert (parts["nckd"] == 0).all()
    assert torch.allclose(parts["tckd"], tempered_kl(s, t, 4.0), atol=1e-6)


def test_dkd_warmup_uses_step_progress():
    assert dkd_warmup(0, 0, 100, 20) == 0.0
    assert dkd_warmup(5, 50, 100, 20) == pytest.approx(5.5 / 20)
    assert dkd_warmup(25, 0, 100, 20) == 1.0
    assert dkd_warmup(0, 0, 100, 0) == 1.0
    method = build_method("dkd", {}, num_classes=10)
    s, t, y = random_batch(seed=10)
    full = dkd_loss(s, t, y)
    half = method(s, t, y, StepContext(epoch=10, step_in_epoch=0, steps_per_epoch=50))
    assert half["nckd"].item() == pytest.approx(0.5 * full["nckd"].item(), rel=1e-6)
    assert half["ce"].item() == pytest.approx(full["ce"].item())


def test_dkd_weights_scale_terms():
    s, t, y = random_batch(seed=11)
    a = dkd_loss(s, t, y, tckd_weight=1.0, nckd_weight=1.0)
    b = dkd_loss(s, t, y, tckd_weight=2.0, nckd_weight=6.0)
    assert b["tckd"].item() == pytest.approx(2 * a["tckd"].item(), rel=1e-6)
    assert b["nckd"].item() == pytest.approx(6 * a["nckd"].item(), rel=1e-6)


# ---------------------------------------------------------------------------------------
# DIST
# ---------------------------------------------------------------------------------------


def test_dist_terms_are_row_and_column_correlations():
    s, t, y = random_batch(batch=6, classes=8, seed=12)
    terms = dist_loss(s, t, y, kd_weight=1.0, temperature=1.0)
    ys, yt = F.softmax(s, -1).numpy(), F.softmax(t, -1).numpy()
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(6)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(8)])
    assert terms["inter"].item() == pytest.approx(inter, rel=1e-5)
    assert terms["intra"].item() == pytest.approx(intra, rel=1e-5)


# ---------------------------------------------------------------------------------------
# CTKD
# ---------------------------------------------------------------------------------------


def test_ctkd_lambda_curriculum():
    assert ctkd_lambda(0) == pytest.approx(0.0)
    assert ctkd_lambda(5) == pytest.approx(-0.5)
    assert ctkd_lambda(10) == pytest.approx(-1.0)
    assert ctkd_lambda(20) == pytest.approx(-1.0)
    assert ctkd_lambda(2.5) == pytest.approx(-(1 - (math.cos(math.pi / 4) + 1) / 2))


def test_grad_reverse_layer():
    x = torch.tensor(2.0, requires_grad=True)
    y = grad_reverse(x, -0.25)
    assert y.item() == 2.0
    (3 * y).backward()
    assert x.grad.item() == pytest.approx(-0.75)


@pytest.mark.parametrize("epoch, lam", [(0, 0.0), (5, -0.5), (10, -1.0), (20, -1.0)])
def test_ctkd_theta_gets_reversed_gradient(epoch, lam):
    s, t, y = random_batch(seed=13)
    method = build_method("ctkd", {}, num_classes=10)
    terms = method(s, t, y, StepContext(epoch=epoch))
    sum(terms.values()).backward()
    # the same loss with an ordinary (non-reversed) temperature path
    theta = torch.tensor(1.0, requires_grad=True)
    temperature = 1.0 + 20.0 * torch.sigmoid(theta)
    plain = kd_loss(s, t, y, ce_weight=0.1, kd_weight=0.9, temperature=temperature)
    sum(plain.values()).backward()
    assert theta.grad.abs() > 1e-4
    assert method.theta.grad.item() == pytest.approx(lam * theta.grad.item(), abs=1e-7)
    # forward value is the plain value and T is recorded
    assert sum(terms.values()).item() == pytest.approx(sum(plain.values()).item(), rel=1e-6)
    stats = method.epoch_stats()
    assert stats["ctkd_temperature/mean"] == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)


def test_ctkd_theta_is_a_module_parameter():
    method = build_method("ctkd", {"init_theta": 0.0}, num_classes=10)
    params = dict(method.named_parameters())
    assert list(params) == ["theta"]
    assert ctkd_temperature(method.theta, -1.0).item() == pytest.approx(11.0)


# ---------------------------------------------------------------------------------------
# LS-KD, TTM, WTTM
# ---------------------------------------------------------------------------------------


def test_lskd_is_kd_with_standardisation():
    s, t, y = random_batch(seed=14)
    a = lskd_loss(s, t, y)
    b = kd_loss(s, t, y, ce_weight=0.1, kd_weight=9.0, temperature=2.0, logit_standardization=True)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_wttm_weights_range_and_relation_to_ttm():
    one_hot = torch.tensor([[1e4, 0.0, 0.0, 0.0]])
    uniform = torch.zeros(1, 4)
    gamma = 0.25
    assert wttm_weights(one_hot, 1 / gamma).item() == pytest.approx(1.0)
    assert wttm_weights(uniform, 1 / gamma).item() == pytest.approx(4 ** (1 - gamma), rel=1e-6)
    # with a constant teacher power sum WTTM = U * TTM
    s, t, y = random_batch(seed=15)
    t_const = torch.zeros_like(t)
    w = wttm_loss(s, t_const, y, kd_weight=1.0, temperature=4.0)["kd"]
    plain = ttm_loss(s, t_const, y, kd_weight=1.0, temperature=4.0)["kd"]
    assert w.item() == pytest.approx(10 ** (1 - 0.25) * plain.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------
# FGCR
# ---------------------------------------------------------------------------------------


def _hand_relation(teacher: np.ndarray, targets: np.ndarray, num_classes: int, temperature: float) -> np.ndarray:
    m = np.zeros((num_classes, num_classes))
    counts = np.zeros(num_classes)
    for z, y in zip(teacher, targets):
        p = np.exp(z / temperature - np.max(z / temperature))
        p /= p.sum()
        p[y] = 0.0
        m[y] += p / p.sum()
        counts[y] += 1
    for c in range(num_classes):
        if counts[c]:
            m[c] /= counts[c]
        else:
            m[c] = 1.0 / (num_classes - 1)
            m[c, c] = 0.0
    return m


def test_fgcr_setup_builds_relation_matrix_by_hand():
    g = torch.Generator().manual_seed(16)
    teacher = torch.randn(11, 5, generator=g) * 2
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 1])  # class 4 never appears
    method = build_method("fgcr", {"relation_temperature": 2.0}, num_classes=5)
    method.setup(fake_setup_ctx(5, teacher, targets, batch_size=4))
    expected = _hand_relation(teacher.double().numpy(), targets.numpy(), 5, 2.0)
    assert np.allclose(method.relation.numpy(), expected, atol=1e-6)
    assert np.allclose(method.relation.sum(1).numpy(), 1.0, atol=1e-6)
    assert torch.equal(method.relation_counts, torch.tensor([4.0, 3.0, 2.0, 2.0, 0.0]))
    assert torch.allclose(method.relation, class_relation_matrix(teacher, targets, 5, temperature=2.0))
    # saved in the state dict and restored into a fresh module
    state = method.state_dict()
    assert "relation" in state and "relation_counts" in state
    fresh = build_method("fgcr", {"relation_temperature": 2.0}, num_classes=5)
    fresh.load_state_dict(state)
    s, t, y = random_batch(batch=4, classes=5, seed=17)
    assert torch.equal(fresh(s, t, y, StepContext())["kd"], method(s, t, y, StepContext())["kd"])


def test_fgcr_requires_setup():
    method = build_method("fgcr", {}, num_classes=5)
    s, t, y = random_batch(batch=4, classes=5)
    with pytest.raises(UserError, match="setup"):
        method(s, t, y, StepContext())


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_fgcr_fusion_keeps_target_mass_and_normalises(eta):
    s, t, y = random_batch(batch=8, classes=6, seed=18)
    relation = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)).fill_diagonal_(0)
    relation = relation / relation.sum(1, keepdim=True)
    fused = fgcr_teacher_log_probs(t, y, relation, temperature=4.0, fusion_weight=eta).exp()
    base = F.softmax(t / 4.0, -1)
    rows = torch.arange(8)
    assert torch.allclose(fused.sum(-1), torch.ones(8), atol=1e-6)
    assert torch.allclose(fused[rows, y], base[rows, y], atol=1e-7)
    if eta == 1.0:  # the non-target mass is distributed exactly along M[y]
        nontarget = fused.clone()
        nontarget[rows, y] = 0
        assert torch.allclose(nontarget / nontarget.sum(-1, keepdim=True), relation[y], atol=1e-6)
    if eta == 0.0:  # plain KD
        a = fgcr_loss(s, t, y, relation=relation, fusion_weight=0.0)
        b = kd_loss(s, t, y)
        assert torch.allclose(a["kd"], b["kd"], atol=1e-6)


# ----------------------------------------------------------------------------- schedule warnings


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("dkd", "ctkd", "eskd")])
def test_methods_without_epoch_parameters_never_warn(name):
    assert build_method(name, {}, num_classes=10).check_schedule(1) == []


def test_dkd_warns_when_warmup_exceeds_the_run():
    (warning,) = build_method("dkd", {}, num_classes=10).check_schedule(15)  # default warm-up: 20 epochs
    assert "warmup_epochs=20" in warning and "15 epochs" in warning and "75%" in warning
    assert "method.warmup_epochs" in warning and "\n" not in warning
    assert build_method("dkd", {}, num_classes=10).check_schedule(20) == []  # ends exactly at full weight
    assert build_method("dkd", {"warmup_epochs": 0}, num_classes=10).check_schedule(1) == []


def test_ctkd_warns_when_curriculum_exceeds_the_run():
    (warning,) = build_method("ctkd", {}, num_classes=10).check_schedule(5)  # default curriculum: 10 epochs
    assert "curriculum_epochs=10" in warning and "5 epochs" in warning
    assert f"{ctkd_lambda(4, curriculum_epochs=10):.2f}" in warning  # the weight of the last epoch, -0.35
    assert build_method("ctkd", {}, num_classes=10).check_schedule(10) == []
    assert build_method("ctkd", {"curriculum_epochs": 3}, num_classes=10).check_schedule(5) == []


# ---------------------------------------------------------------------------------------
# one definition per method: the plain function and the registered module agree
# ---------------------------------------------------------------------------------------

from darkknowledge.methods.aid import aid_loss  # noqa: E402
from darkknowledge.methods.ce import ce_loss  # noqa: E402
from darkknowledge.methods.ctkd import ctkd_loss  # noqa: E402
from darkknowledge.methods.eskd import eskd_loss  # noqa: E402
from darkknowledge.methods.lm_losses import (  # noqa: E402
    jsd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    total_variation_loss,
)
from darkknowledge.methods.regt import regt_loss  # noqa: E402
from darkknowledge.methods.sckd import sckd_loss  # noqa: E402

# The public function of every method, called as a user would.
FUNCTIONS = {
    "ce": ce_loss,
    "kd": kd_loss,
    "lskd": lskd_loss,
    "ats": ats_loss,
    "isats": isats_loss,
    "fgcr": fgcr_loss,
    "rckd": rckd_loss,
    "dkd": dkd_loss,
    "dist": dist_loss,
    "ctkd": ctkd_loss,
    "ttm": ttm_loss,
    "wttm": wttm_loss,
    "regt": regt_loss,
    "aid": aid_loss,
    "eskd": eskd_loss,
    "sckd": sckd_loss,
    "reverse_kl": reverse_kl_loss,
    "jsd": jsd_loss,
    "skew_kl": skew_kl_loss,
    "skew_reverse_kl": skew_reverse_kl_loss,
    "tv": total_variation_loss,
}
# Non-default parameters: together the sets of a method change every field.
NON_DEFAULT = {
    "ce": [{"ce_weight": 0.7, "label_smoothing": 0.1}],
    "kd": [{"ce_weight": 0.3, "kd_weight": 2.0, "temperature": 2.5, "logit_standardization": True}],
    "lskd": [{"ce_weight": 0.2, "kd_weight": 4.0, "temperature": 3.0}],
    "ats": [
        {
            "ce_weight": 0.3,
            "kd_weight": 0.7,
            "target_temperature": 5.0,
            "nontarget_temperature": 1.5,
            "student_temperature": 2.0,
            "center_logits": True,
        }
    ],
    "isats": [
        {
            "ce_weight": 0.3,
            "kd_weight": 0.7,
            "student_temperature": 2.0,
            "tau_min": 0.3,
            "tau_max": 30.0,
            "grid_size": 16,
            "refine_size": 5,
            "target_rule": "fixed",
            "target_temperature": 3.0,
            "center_logits": True,
        },
        {
            "search_rule": "B",
            "target_ratio": 1.5,
            "logit_standardization": True,
            "tau_min": 0.02,
            "tau_max": 2.0,
            "temperature_scope": "batch",
            "misclassified_temperature": 3.0,
        },
    ],
    "fgcr": [
        {"ce_weight": 0.2, "kd_weight": 1.5, "temperature": 3.0, "fusion_weight": 0.3, "relation_temperature": 2.0}
    ],
    "rckd": [{"ce_weight": 0.5, "kd_weight": 2.0, "temperature": 3.0, "eps": 1e-6}],
    "dkd": [
        {
            "ce_weight": 0.5,
            "tckd_weight": 2.0,
            "nckd_weight": 3.0,
            "temperature": 2.0,
            "warmup_epochs": 5.0,
            "logit_standardization": True,
        }
    ],
    "dist": [
        {"ce_weight": 0.5, "kd_weight": 1.0, "temperature": 2.0, "inter_weight": 0.5, "intra_weight": 2.0, "eps": 1e-6}
    ],
    "ctkd": [
        {
            "ce_weight": 0.2,
            "kd_weight": 0.5,
            "t_start": 2.0,
            "t_range": 10.0,
            "init_theta": -0.5,
            "curriculum_epochs": 4.0,
        }
    ],
    "ttm": [{"ce_weight": 0.5, "kd_weight": 3.0, "temperature": 2.0}],
    "wttm": [{"ce_weight": 0.5, "kd_weight": 2.0, "temperature": 5.0}],
    "regt": [
        {
            "ce_weight": 0.5,
            "variance_weight": 2.0,
            "variance_temperature": 2.0,
            "confidence_weight": 0.1,
            "label_smoothing": 0.1,
        }
    ],
    "aid": [{"ce_weight": 0.5, "kd_weight": 2.0, "temperature": 2.0, "part": "intra_class"}, {"part": "full"}],
    "eskd": [
        {"ce_weight": 0.3, "kd_weight": 2.0, "temperature": 2.5, "logit_standardization": True, "stop_epoch": 5},
        {"stop_epoch": 1, "ce_weight_after_stop": 0.5},
    ],  # ROUTE_CTX is epoch 2: after the stop
    "sckd": [
        {"ce_weight": 0.3, "kd_weight": 2.0, "temperature": 2.5, "threshold": -0.5, "gate_scope": "logits"},
        {"threshold": 0.5, "gate_scope": "last_layer"},
    ],
    "reverse_kl": [{"ce_weight": 0.5, "kd_weight": 2.0, "temperature": 2.0}],
    "jsd": [{"ce_weight": 0.5, "kd_weight": 2.0, "temperature": 2.0, "beta": 0.2}],
    "skew_kl": [{"ce_weight": 0.5, "kd_weight": 2.0, "temperature": 2.0, "alpha": 0.3}],
    "skew_reverse_kl": [{"ce_weight": 0.5, "kd_weight": 2.0, "temperature": 2.0, "alpha": 0.3}],
    "tv": [{"ce_weight": 0.5, "kd_weight": 2.0, "temperature": 2.0}],
}
ROUTE_CASES = [(n, None) for n in ALL] + [(n, p) for n in sorted(NON_DEFAULT) for p in NON_DEFAULT[n]]
ROUTE_CTX = StepContext(epoch=2, num_epochs=10, step_in_epoch=1, steps_per_epoch=4)


def route_inputs(classes=10, batch=12, seed=3):
    """Confident teacher rows, so that ISATS's tau* lies inside its search range."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g) * 2
    t = torch.randn(batch, classes, generator=g) * 2
    y = torch.randint(0, classes, (batch,), generator=g)
    t[torch.arange(batch), y] += torch.linspace(8.0, 16.0, batch)
    return s, t, y


def function_route(name, s, t, y, params, relation_data):
    """Loss of the plain function with the same parameters (None: its own defaults)."""
    fn = FUNCTIONS[name]
    kw = dict(params or {})
    given = params is not None
    defaults = METHODS.get(name).Params()
    if name in ("ce", "regt"):
        return fn(s, y, **kw), {}
    if name == "eskd":
        kw["epoch"] = ROUTE_CTX.epoch
    if name == "sckd":  # without a student model the module's gate uses the logits, as the function does
        kw.pop("gate_scope", None)
    if name == "dkd":
        warmup = kw.pop("warmup_epochs", defaults.warmup_epochs)
        kw["warmup_factor"] = dkd_warmup(ROUTE_CTX.epoch, ROUTE_CTX.step_in_epoch, ROUTE_CTX.steps_per_epoch, warmup)
    if name == "fgcr":
        rel_t = kw.pop("relation_temperature", defaults.relation_temperature)
        kw["relation"] = class_relation_matrix(*relation_data, t.shape[1], temperature=rel_t)
    if name == "ctkd":
        p = METHODS.get(name).Params(**kw)
        theta = torch.tensor(p.init_theta, requires_grad=True)
        lam = (
            ctkd_lambda(ROUTE_CTX.epoch, curriculum_epochs=p.curriculum_epochs)
            if given
            else ctkd_lambda(ROUTE_CTX.epoch)
        )
        temp = (
            ctkd_temperature(theta, lam, t_start=p.t_start, t_range=p.t_range)
            if given
            else ctkd_temperature(theta, lam)
        )
        kw = {k: v for k, v in kw.items() if k in ("ce_weight", "kd_weight")}
        return fn(s, t, y, temperature=temp, **kw), {"theta": theta}
    return fn(s, t, y, **kw), {}


@pytest.mark.parametrize(
    "name,params", ROUTE_CASES, ids=[f"{n}-{'default' if p is None else i}" for i, (n, p) in enumerate(ROUTE_CASES)]
)
def test_function_and_module_routes_are_identical(name, params):
    s, t, y = route_inputs()
    g = torch.Generator().manual_seed(9)
    relation_data = (torch.randn(40, 10, generator=g) * 3, torch.arange(40) % 10)
    s_fn, s_mod = s.clone().requires_grad_(True), s.clone().requires_grad_(True)

    terms_fn, extra = function_route(name, s_fn, t, y, params, relation_data)
    method = build_method(name, params or {}, num_classes=10)
    method.setup(fake_setup_ctx(10, *relation_data))
    terms_mod = method(s_mod, t, y, ROUTE_CTX)

    assert set(terms_fn) == set(terms_mod)
    for key in terms_fn:
        assert torch.equal(terms_fn[key], terms_mod[key]), (name, key, terms_fn[key], terms_mod[key])
    sum(terms_fn.values()).backward()
    sum(terms_mod.values()).backward()
    assert torch.equal(s_fn.grad, s_mod.grad)
    if "theta" in extra:  # CTKD's learnable temperature gets the same (reversed) gradient
        assert torch.equal(extra["theta"].grad, method.theta.grad)


def test_route_cases_cover_every_method_and_field():
    assert set(FUNCTIONS) == set(ALL) == set(NON_DEFAULT)
    for name, sets in NON_DEFAULT.items():
        fields = METHODS.get(name).Params.model_fields
        changed = {k for p in sets for k in p}
        assert changed == set(fields), (name, set(fields) - changed)
        for p in sets:
            assert all(v != fields[k].default for k, v in p.items()), name


def test_route_inputs_put_isats_tau_inside_the_search_range():
    s, t, y = route_inputs()
    for params in [{}] + NON_DEFAULT["isats"]:
        p = METHODS.get("isats").Params(**params)
        z = t - t.mean(1, keepdim=True) if p.center_logits else t
        if p.logit_standardization:
            from darkknowledge.methods.functional import standardize_logits

            z = standardize_logits(t)
        tau = isats_search(
            z,
            y,
            search_rule=p.search_rule,
            tau_min=p.tau_min,
            tau_max=p.tau_max,
            target_ratio=p.target_ratio,
            grid_size=p.grid_size,
            refine_size=p.refine_size,
        )
        inside = (tau > p.tau_min * 1.05) & (tau < p.tau_max / 1.05)
        assert inside.float().mean() >= 0.75, (params, tau)


def test_loss_function_defaults_come_from_params():
    import inspect

    for name, fn in FUNCTIONS.items():
        fields = METHODS.get(name).Params.model_fields
        sig = inspect.signature(fn if name != "isats" else isats_loss_and_temperature)
        for pname, par in sig.parameters.items():
            if pname in fields:
                assert par.default == fields[pname].default, (name, pname)


def test_drifted_defaults_are_refused_at_import():
    from darkknowledge.methods.base import param_defaults
    from darkknowledge.methods.kd import KDParams

    with pytest.raises(TypeError, match="belong in KDParams"):

        @param_defaults(KDParams)
        def drifted(s, t, y, *, ce_weight=0.2, kd_weight, temperature, logit_standardization):
            return {}

    with pytest.raises(TypeError, match="missing"):

        @param_defaults(KDParams)
        def incomplete(s, t, y, *, ce_weight, kd_weight):
            return {}


def _isats_reference(s, t, y, tau_min=0.5, tau_max=20.0, grid=64, ratio=1.0, student_t=4.0, ce_w=0.1, kd_w=0.9):
    """ISATS at its defaults in float64 NumPy: per row, the log non-target variance on a
    64-point log grid, the vertex of the parabola through the best point's neighbourhood
    (kept if better), then ATS with tau1 = ratio * tau*, tau2 = tau* and the tau_s^2-scaled
    soft CE against the student at tau_s."""
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)

    def log_var(row, yi, u):
        z = row / np.exp(u)
        p = np.exp(z - z.max())
        p /= p.sum()
        return np.log(np.delete(p, yi).var())

    us = np.linspace(np.log(tau_min), np.log(tau_max), grid)
    step = us[1] - us[0]
    taus = []
    for row, yi in zip(t, y):
        vals = np.array([log_var(row, yi, u) for u in us])
        j = int(vals.argmax())
        c = min(max(j, 1), grid - 2)
        fm, f0, fp = vals[c - 1], vals[c], vals[c + 1]
        curv = fm - 2 * f0 + fp
        vertex = c + 0.5 * (fm - fp) / curv if curv < 0 else j
        vertex = min(max(vertex, max(j - 1, 0)), min(j + 1, grid - 1))
        cand = us[0] + vertex * step
        taus.append(np.exp(cand if log_var(row, yi, cand) > vals[j] else us[j]))
    ce, kd = [], []
    for row_s, row_t, yi, tau in zip(s, t, y, taus):
        scaled = row_t / tau
        scaled[yi] = row_t[yi] / (ratio * tau)
        q = np.exp(scaled - scaled.max())
        q /= q.sum()

        def log_softmax(v):
            return v - v.max() - np.log(np.exp(v - v.max()).sum())

        ce.append(-log_softmax(row_s)[yi])
        kd.append(-(q * log_softmax(row_s / student_t)).sum())
    return {"ce": ce_w * np.mean(ce), "kd": kd_w * student_t**2 * np.mean(kd)}, np.array(taus)


def test_golden_isats():
    s, t, y = route_inputs()  # the 4 x 5 golden inputs put two of their four tau* on tau_min
    expected, taus = _isats_reference(s.numpy(), t.numpy(), y.numpy())
    assert ((taus > 0.6) & (taus < 19.0)).all(), taus  # interior optima: the search matters
    for terms in (isats_loss(s, t, y), build_method("isats", {}, num_classes=10)(s, t, y, StepContext())):
        for key, value in expected.items():
            assert terms[key].item() == pytest.approx(value, rel=2e-5), key
