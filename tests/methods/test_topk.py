"""KL against a top-k teacher without its full rows: equal to the dense KL of the expanded rows
(values and gradients), and the token runner takes it for KD from a top-k cache and only there."""

from __future__ import annotations

import pytest
import torch

from darkknowledge.engine.cache import expand_topk
from darkknowledge.engine.lm_cache import TopKTeacher
from darkknowledge.methods import build_method
from darkknowledge.methods.functional import tempered_kl
from darkknowledge.methods.lm_losses import reverse_kl_rows
from darkknowledge.methods.tokens import token_terms
from darkknowledge.methods.topk import TopKRows, topk_tempered_kl, topk_tempered_reverse_kl


def _dense_reverse_kl(student, teacher, temperature):
    log_q = torch.log_softmax(student / temperature, -1)
    log_p = torch.log_softmax(teacher / temperature, -1)
    return reverse_kl_rows(log_q, log_p)


DIVERGENCES = {"kl": (tempered_kl, topk_tempered_kl), "reverse_kl": (_dense_reverse_kl, topk_tempered_reverse_kl)}


def _teacher(n: int, vocab: int, k: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=g, dtype=torch.float64) * 3).to(dtype)
    values, ids = logits.topk(k, -1)
    return ids, values, logits.logsumexp(-1)


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
@pytest.mark.parametrize(("vocab", "k", "temperature"), [(50, 7, 1.0), (50, 7, 4.0), (50, 50, 2.0), (997, 64, 0.5)])
def test_equals_the_dense_divergence_of_the_expanded_rows(divergence, vocab, k, temperature):
    dense_fn, topk_fn = DIVERGENCES[divergence]
    ids, values, lse = _teacher(9, vocab, k)
    student = (torch.randn(9, vocab, dtype=torch.float64) * 2).requires_grad_()
    grad = torch.randn(9, dtype=torch.float64)
    dense = dense_fn(student, expand_topk(values, ids, lse, vocab), temperature)
    sparse = topk_fn(student, TopKRows(ids, values, lse, vocab), temperature)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-12)
    (g_dense,) = torch.autograd.grad(dense, student, grad)
    (g_sparse,) = torch.autograd.grad(sparse, student, grad)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_half_precision_inputs_give_float32_values_and_their_own_gradient_dtype(divergence):
    ids, values, lse = _teacher(4, 300, 16)
    student = torch.randn(4, 300).bfloat16().requires_grad_()
    kl = DIVERGENCES[divergence][1](student, TopKRows(ids, values.half(), lse.float(), 300), 2.0)
    assert kl.dtype == torch.float32 and torch.isfinite(kl).all() and (kl >= -1e-5).all()
    (g,) = torch.autograd.grad(kl.sum(), student)
    assert g.dtype == torch.bfloat16


def _cache(batch: int, length: int, vocab: int, k: int, missing_mass: str = "uniform"):
    ids, values, lse = _teacher(batch * length, vocab, k, dtype=torch.float32, seed=1)
    shape = (batch, length)
    cache = TopKTeacher(
        ids.int().reshape(*shape, k), values.half().reshape(*shape, k), lse.reshape(shape), vocab, missing_mass
    )
    return cache


@pytest.mark.parametrize(
    ("name", "params"),
    [("kd", {}), ("kd", {"temperature": 1.0, "ce_weight": 0.0, "kd_weight": 1.0}), ("reverse_kl", {}),
     ("reverse_kl", {"temperature": 2.0, "ce_weight": 0.5})],
)  # fmt: skip
def test_token_methods_from_a_topk_cache_use_it_and_match_the_expanded_rows(name, params, monkeypatch):
    batch, length, vocab, k = 3, 11, 203, 17
    cache = _cache(batch, length, vocab, k)
    dense = cache.dense().clone()
    targets = torch.randint(0, vocab, (batch, length))
    targets[0, :3] = -100
    method = build_method(name, params)
    student = torch.randn(batch, length, vocab, requires_grad=True)
    expected = token_terms(method, student, dense, targets, chunk_tokens=8)
    g_expected = torch.autograd.grad(sum(expected.values()), student)[0]

    def no_rows(index):
        raise AssertionError(f"{name} from a uniform top-k cache must not expand the rows")

    monkeypatch.setattr(cache, "rows", no_rows)
    got = token_terms(method, student, cache, targets, chunk_tokens=8)
    g_got = torch.autograd.grad(sum(got.values()), student)[0]
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    ("method_name", "params", "missing_mass"),
    [
        ("kd", {"logit_standardization": True, "temperature": 2.0}, "uniform"),  # needs the full rows
        ("kd", {}, "ignore"),  # a tail TopKRows does not describe
        ("dist", {}, "uniform"),  # a method without a top-k path
    ],
)
def test_other_cases_expand_the_rows_as_before(method_name, params, missing_mass):
    batch, length, vocab, k = 2, 5, 101, 9
    cache = _cache(batch, length, vocab, k, missing_mass)
    method = build_method(method_name, params)
    targets = torch.randint(0, vocab, (batch, length))
    student = torch.randn(batch, length, vocab)
    calls = []
    rows = cache.rows
    cache.rows = lambda index: calls.append(index) or rows(index)  # type: ignore[method-assign]
    got = token_terms(method, student, cache, targets, chunk_tokens=4)
    assert calls
    expected = token_terms(method, student, cache.dense(), targets, chunk_tokens=4)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
