"""The shared KL building block: values and first-order gradients equal the plain autograd
formula; at a zero-probability entry of p the gradient is 0 (the plain formula's is NaN)."""

from __future__ import annotations

import torch

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
