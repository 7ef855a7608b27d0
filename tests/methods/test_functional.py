"""The shared building blocks. KL: values and first-order gradients equal the plain autograd
formula; at a zero-probability entry of p the gradient is 0 (the plain formula's is NaN). Weighted CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darkknowledge.methods.functional import kl_from_log_probs


def _plain(log_p, log_q):
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def test_kl_from_log_probs_matches_autograd_in_both_arguments():
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(6, 7, generator=g, dtype=torch.float64) * 3).log_softmax(-1)
    b = (torch.randn(6, 7, generator=g, dtype=torch.float64) * 3).log_softmax(-1)
    a[0, 2] = float("-inf")  # a zero-probability entry of p
    a = a.log_softmax(-1)
    w = torch.randn(6, generator=g, dtype=torch.float64)
    grads = []
    for fn in (kl_from_log_probs, _plain):
        x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        value = fn(x, y)
        (value * w).sum().backward()
        grads.append((value.detach(), x.grad, y.grad))
    ours, ref = grads
    assert torch.isnan(ref[1][0, 2]) and ours[1][0, 2] == 0  # 0 * log 0 := 0, its gradient too
    ref[1][0, 2] = 0.0
    for mine, plain in zip(ours, ref):
        assert torch.allclose(mine, plain, rtol=1e-12, atol=1e-14)


def test_kl_from_log_probs_gradcheck_and_broadcast():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 5, generator=g, dtype=torch.float64).log_softmax(-1).requires_grad_(True)
    b = torch.randn(3, 5, generator=g, dtype=torch.float64).log_softmax(-1).requires_grad_(True)
    assert torch.autograd.gradcheck(kl_from_log_probs, (a, b))
    one = b[:1].detach()
    assert torch.allclose(kl_from_log_probs(a, one), _plain(a, one.expand_as(a)))


def test_weighted_cross_entropy_is_exactly_zero_at_weight_zero_and_ce_otherwise():
    from darkknowledge.methods.dkd import dkd_loss
    from darkknowledge.methods.functional import weighted_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(5, 7, generator=g) * 3, torch.randint(0, 7, (5,), generator=g)
    assert float(weighted_cross_entropy(logits, targets, 0.3)) == pytest.approx(
        0.3 * float(F.cross_entropy(logits, targets))
    )
    broken = logits.clone()
    broken[0, 0] = float("nan")  # not even read at weight 0: the LM recipes skip a full-vocabulary log-softmax
    zero = weighted_cross_entropy(broken, targets, 0.0)
    assert float(zero) == 0.0 and zero.dtype == torch.float32
    assert weighted_cross_entropy(logits.double(), targets, 0.0).dtype == torch.float64
    assert weighted_cross_entropy(logits.bfloat16(), targets, 0.0).dtype == torch.float32
    # DKD and KD with logit standardisation: CE on the logits as given, not the z-scored ones
    teacher = torch.randn(5, 7, generator=g)
    terms = dkd_loss(logits, teacher, targets, ce_weight=1.0, tckd_weight=1.0, nckd_weight=1.0, temperature=4.0,
                     logit_standardization=True)  # fmt: skip
    assert float(terms["ce"]) == pytest.approx(float(F.cross_entropy(logits, targets)))
