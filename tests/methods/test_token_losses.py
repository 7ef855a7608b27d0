"""LM divergences (golden values, stability, gradients) and every method over masked, chunked tokens."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from darkknowledge.methods import METHODS, SetupContext, StepContext, build_method
from darkknowledge.methods.lm_losses import (
    jsd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    total_variation_loss,
)
from darkknowledge.methods.tokens import IGNORE_INDEX, TokenMethod, token_terms

LM_LOSSES = {
    "reverse_kl": (reverse_kl_loss, {}),
    "jsd": (jsd_loss, {"beta": 0.3}),
    "skew_kl": (skew_kl_loss, {"alpha": 0.2}),
    "skew_reverse_kl": (skew_reverse_kl_loss, {"alpha": 0.2}),
    "tv": (total_variation_loss, {}),
}


def direct_divergence(name: str, s, t, temperature: float, beta: float = 0.5, alpha: float = 0.1):
    """The divergence per row from float64 probabilities, written from the definitions."""
    q = torch.softmax(s.double() / temperature, -1)
    p = torch.softmax(t.double() / temperature, -1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "skew_kl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if name == "skew_reverse_kl":
        return kl(q, alpha * q + (1 - alpha) * p)
    return 0.5 * (p - q).abs().sum(-1)


def rows(seed: int, n: int = 6, v: int = 11, scale: float = 2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, v, (n,), generator=g)
    return s.to(dtype), t.to(dtype), y


@pytest.mark.parametrize("name", list(LM_LOSSES))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_lm_divergence_matches_direct_float64(name, temperature):
    fn, extra = LM_LOSSES[name]
    s, t, y = rows(1)
    terms = fn(s, t, y, ce_weight=0.5, kd_weight=1.5, temperature=temperature, **extra)
    expected = 1.5 * temperature**2 * direct_divergence(name, s, t, temperature, **extra).mean()
    ce = torch.nn.functional.cross_entropy(s, y)
    torch.testing.assert_close(terms["kd"], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(terms["ce"], 0.5 * ce)


@pytest.mark.parametrize("name", list(LM_LOSSES))
def test_lm_divergence_zero_at_equal_and_positive_otherwise(name):
    fn, extra = LM_LOSSES[name]
    s, t, y = rows(2)
    assert float(fn(s, s.clone(), y, **extra)["kd"]) == pytest.approx(0.0, abs=1e-12)
    assert float(fn(s, t, y, **extra)["kd"]) > 1e-3


@pytest.mark.parametrize("name", list(LM_LOSSES))
def test_lm_divergence_gradcheck(name):
    fn, extra = LM_LOSSES[name]
    s, t, y = rows(3, n=3, v=5)
    s.requires_grad_(True)
    t.requires_grad_(True)

    def total(a, b):
        terms = fn(a, b, y, ce_weight=0.3, temperature=1.7, **extra)
        return terms["ce"] + terms["kd"]

    assert torch.autograd.gradcheck(total, (s, t))


@pytest.mark.parametrize("name", list(LM_LOSSES))
def test_lm_divergence_extreme_logits_and_bf16(name):
    fn, extra = LM_LOSSES[name]
    s, t, y = rows(4, n=5, v=40, scale=1.0)
    s[:, 0] += 1e4  # the student is certain of class 0, the teacher of class 1
    t[:, 1] += 1e4
    s32 = s.float().requires_grad_(True)
    terms = fn(s32, t.float(), y, ce_weight=1.0, **extra)
    total = terms["ce"] + terms["kd"]
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s32.grad).all()
    # a log-space float64 reference for the same extreme inputs
    log_q, log_p = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    if name == "reverse_kl":
        ref = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
        torch.testing.assert_close(terms["kd"].double(), ref, rtol=1e-5, atol=1e-3)
    if name == "tv":
        assert float(terms["kd"].detach()) == pytest.approx(1.0, abs=1e-6)
    # bf16 input: computed in float32, equal to the float32 computation of the rounded logits
    sb, tb, yb = rows(5, v=64, dtype=torch.bfloat16)
    got = fn(sb, tb, yb, **extra)["kd"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fn(sb.float(), tb.float(), yb, **extra)["kd"])


@pytest.mark.parametrize("name", ["jsd", "skew_kl", "skew_reverse_kl"])
def test_mixture_parameters_validated(name):
    from darkknowledge.errors import UserError

    key = "beta" if name == "jsd" else "alpha"
    with pytest.raises(UserError, match=key):
        build_method(name, {key: 1.0})


# -- every method over [B, T, V] tokens ------------------------------------------------------------

B, T, V = 3, 7, 9


def prepared(name: str):
    method = build_method(name, num_classes=V)
    if name == "fgcr":  # needs its class relations from a teacher pass first
        g = torch.Generator().manual_seed(0)
        batches = [SimpleNamespace(targets=torch.arange(V).repeat(2))]
        logits = torch.randn(2 * V, V, generator=g)
        method.setup(SetupContext(num_classes=V, teacher_logits_fn=lambda b: logits, train_batches=lambda: batches))
    return method


def token_batch(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    t = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, 5:] = IGNORE_INDEX  # padding at the end of one sequence
    y[2, 0] = IGNORE_INDEX
    return s, t, y


def grads(method, s, t, y, chunk, weights=None):
    s = s.detach().clone().requires_grad_(True)
    params = [p for p in method.parameters() if p.requires_grad]
    terms = token_terms(method, s, t, y, StepContext(epoch=30), chunk_tokens=chunk)
    w = weights or {}
    total = sum(w.get(k, 1.0) * v for k, v in terms.items())
    got = torch.autograd.grad(total, [s, *params])
    return {k: v.detach() for k, v in terms.items()}, got


@pytest.mark.parametrize("name", METHODS.names())
def test_chunked_equals_unchunked_for_every_method(name):
    method = prepared(name)
    s, t, y = token_batch(10)
    ref_terms, ref_grads = grads(method, s, t, y, None)
    for chunk in (1, 4, 1000):
        terms, got = grads(method, s, t, y, chunk)
        assert list(terms) == list(ref_terms)
        for k in terms:
            torch.testing.assert_close(terms[k], ref_terms[k], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got[0], ref_grads[0], rtol=1e-9, atol=1e-12)
        for a, b in zip(got[1:], ref_grads[1:]):  # float32 method parameters (CTKD's temperature)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert ref_grads[0][0, 5:].abs().sum() == 0  # padded tokens get no gradient


@pytest.mark.parametrize("name", ["kd", "dkd", "ctkd", "jsd"])
def test_weighted_terms_recompute_the_gradient(name):
    method = prepared(name)
    s, t, y = token_batch(11)
    weights = {"ce": 2.0, "kd": 0.25, "tckd": 3.0, "nckd": 0.5}
    _, ref = grads(method, s, t, y, None, weights)
    _, got = grads(method, s, t, y, 4, weights)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-9, atol=1e-12)
    for a, b in zip(got[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["kd", "ttm", "reverse_kl", "isats"])
def test_token_loss_is_the_method_over_valid_rows(name):
    method = prepared(name)
    s, t, y = token_batch(12)
    keep = y != IGNORE_INDEX
    direct = method(s[keep], t[keep], y[keep], StepContext())
    # garbage in the padded positions must not matter
    s2, t2 = s.clone(), t.clone()
    s2[~keep] = 1e6
    t2[~keep] = -1e6
    got = TokenMethod(method, chunk_tokens=5)(s2, t2, y)
    for k in direct:
        torch.testing.assert_close(got[k], direct[k], rtol=1e-9, atol=1e-12)


def test_dist_batch_is_one_sequence():
    method = prepared("dist")
    s, t, y = token_batch(13)
    keep = y != IGNORE_INDEX
    total = int(keep.sum())
    expected = {}
    for b in range(B):
        part = method(s[b][keep[b]], t[b][keep[b]], y[b][keep[b]], StepContext())
        for k, v in part.items():
            expected[k] = expected.get(k, 0.0) + v * int(keep[b].sum()) / total
    got = token_terms(method, s, t, y, chunk_tokens=2)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])


def test_isats_batch_scope_is_one_sequence():
    method = build_method("isats", {"temperature_scope": "batch"}, num_classes=V)
    s, t, y = token_batch(18)
    ref_terms, ref_grads = grads(method, s, t, y, None)
    terms, got = grads(method, s, t, y, 2)
    for k in terms:
        torch.testing.assert_close(terms[k], ref_terms[k], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[0], ref_grads[0], rtol=1e-9, atol=1e-12)
    keep = y != IGNORE_INDEX
    first = method(s[0][keep[0]], t[0][keep[0]], y[0][keep[0]], StepContext())  # one sequence = one batch
    assert not torch.allclose(first["kd"], method(s[keep], t[keep], y[keep], StepContext())["kd"])


def test_all_tokens_ignored_gives_zero_terms_and_gradient():
    method = prepared("kd")
    s, t, _ = token_batch(14)
    y = torch.full((B, T), IGNORE_INDEX)
    terms, got = grads(method, s, t, y, 4)
    assert set(terms) == {"ce", "kd"} and all(float(v) == 0.0 for v in terms.values())
    assert got[0].abs().sum() == 0


def test_bf16_logits_and_no_grad_path():
    method = prepared("kd")
    s, t, y = token_batch(15, dtype=torch.bfloat16)
    with torch.no_grad():
        a = token_terms(method, s, t, y, chunk_tokens=3)
    b = token_terms(method, s, t, y, chunk_tokens=None)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
        assert math.isfinite(float(a[k]))
    sg = s.clone().requires_grad_(True)
    terms = token_terms(method, sg, t, y, chunk_tokens=3)
    sum(terms.values()).backward()
    assert sg.grad is not None and sg.grad.dtype == torch.bfloat16 and torch.isfinite(sg.grad.float()).all()


def test_isats_records_tau_once_per_token_even_when_recomputed():
    method = prepared("isats")
    s, t, y = token_batch(16)
    grads(method, s, t, y, 4, {"ce": 2.0})
    stats = method.epoch_stats()
    assert stats and math.isfinite(stats["isats_tau/mean"])
    assert sum(len(v) for v in method._stats.values()) == 0
    grads(method, s, t, y, 4, {"ce": 2.0})
    assert torch.cat(method._stats["isats_tau"]).numel() == int((y != IGNORE_INDEX).sum())


def test_shape_errors():
    method = prepared("kd")
    s, t, y = token_batch(17)
    with pytest.raises(ValueError, match="vocabulary"):
        token_terms(method, s, t[..., :-1], y)
    with pytest.raises(ValueError, match="targets"):
        token_terms(method, s, t, y[:, :-1])
    with pytest.raises(ValueError, match="chunk_tokens"):
        token_terms(method, s, t, y, chunk_tokens=0)


def test_method_without_teacher_over_tokens():
    method = prepared("ce")
    s, _, y = token_batch(19)
    keep = y != IGNORE_INDEX
    got = TokenMethod(method, chunk_tokens=4)(s, None, y)
    expected = torch.nn.functional.cross_entropy(s.reshape(-1, V), y.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(got["ce"], expected)
    assert int(keep.sum()) < y.numel()
