"""Parity of our losses with torchdistill's implementations (``torchdistill.losses.mid_level``).

Parameter mapping (read from torchdistill's source):

* ``KDLoss(temperature=T, alpha=a, beta=b, reduction="batchmean")`` returns
  ``a * CE + b * T^2 * KL_batchmean`` (``b`` defaults to ``1 - a``; with ``alpha=None``
  (and any beta) it returns the bare batch-mean KL without T^2) -> our ``kd_loss`` with
  ``ce_weight=a``, ``kd_weight=b``.
* ``DISTLoss(beta, gamma, tau)`` returns ``beta * tau^2 * inter + gamma * tau^2 * intra``
  (no CE) -> our ``dist_loss`` inter + intra terms with ``kd_weight=1``.
* ``LogitStdKDLoss(temperature, alpha, beta)``: KD on z-scored logits (unbiased std,
  eps 1e-7) with CE on the raw student logits -> our ``kd_loss(...,
  logit_standardization=True)`` / ``lskd_loss``.

Its losses take ``student_io_dict[module_path][io]`` dictionaries; we wrap the logits.
"""

from __future__ import annotations

import pytest
import torch

mid_level = pytest.importorskip("torchdistill.losses.mid_level")

from darkknowledge.methods.dist import dist_loss  # noqa: E402
from darkknowledge.methods.kd import kd_loss  # noqa: E402
from darkknowledge.methods.lskd import lskd_loss  # noqa: E402

PATH, IO = ".", "output"


def io(logits: torch.Tensor) -> dict:
    return {PATH: {IO: logits}}


def batch(seed: int, batch_size: int = 16, classes: int = 100, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch_size, classes, generator=g, dtype=torch.float64) * scale
    t = torch.randn(batch_size, classes, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, classes, (batch_size,), generator=g)
    return s, t, y


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(terms.values())


@pytest.mark.parametrize("temperature, ce_weight, kd_weight", [(4.0, 0.1, 0.9), (2.0, 1.0, 3.0), (1.0, 0.5, 0.5)])
def test_kd_matches_torchdistill(temperature, ce_weight, kd_weight):
    s, t, y = batch(0)
    theirs = mid_level.KDLoss(PATH, IO, PATH, IO, temperature=temperature, alpha=ce_weight, beta=kd_weight)
    ours = kd_loss(s, t, y, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
    assert total(ours).item() == pytest.approx(theirs(io(s), io(t), y).item(), rel=1e-10)
    # alpha=None: bare batch-mean KL (no CE, no T^2)
    bare = mid_level.KDLoss(PATH, IO, PATH, IO, temperature=temperature, alpha=None, beta=1.0)
    ours_kl = kd_loss(s, t, y, ce_weight=0.0, kd_weight=1.0 / temperature**2, temperature=temperature)["kd"]
    assert ours_kl.item() == pytest.approx(bare(io(s), io(t), y).item(), rel=1e-10)


@pytest.mark.parametrize("tau, beta, gamma", [(4.0, 1.0, 1.0), (1.0, 2.0, 0.5)])
def test_dist_matches_torchdistill(tau, beta, gamma):
    s, t, y = batch(1)
    theirs = mid_level.DISTLoss(PATH, IO, PATH, IO, beta=beta, gamma=gamma, tau=tau)
    ours = dist_loss(s, t, y, ce_weight=0.0, kd_weight=1.0, temperature=tau, inter_weight=beta, intra_weight=gamma)
    assert (ours["inter"] + ours["intra"]).item() == pytest.approx(theirs(io(s), io(t)).item(), rel=1e-9)


@pytest.mark.parametrize("temperature, ce_weight, kd_weight", [(2.0, 0.1, 9.0), (3.0, 1.0, 12.0)])
def test_logit_standardised_kd_matches_torchdistill(temperature, ce_weight, kd_weight):
    s, t, y = batch(2, scale=5.0)
    s, t = 2.0 * s + 1.0, t - 3.0  # LS-KD is scale/shift invariant; torchdistill must agree anyway
    theirs = mid_level.LogitStdKDLoss(PATH, IO, PATH, IO, temperature=temperature, alpha=ce_weight, beta=kd_weight)
    expected = theirs(io(s), io(t), y).item()
    ours = kd_loss(
        s, t, y, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature, logit_standardization=True
    )
    assert total(ours).item() == pytest.approx(expected, rel=1e-9)
    ours_ls = lskd_loss(s, t, y, ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature)
    assert total(ours_ls).item() == pytest.approx(expected, rel=1e-9)


def test_gradients_match_torchdistill_kd():
    s, t, y = batch(3)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    mid_level.KDLoss(PATH, IO, PATH, IO, temperature=4.0, alpha=0.1, beta=0.9)(io(s1), io(t), y).backward()
    total(kd_loss(s2, t, y)).backward()
    assert torch.allclose(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)
