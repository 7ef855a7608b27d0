"""`darkknowledge cache info` reads every kind of cache; a language-model cache also says how much
probability its top-k leaves out."""

from __future__ import annotations

import json

import pytest
import torch

from darkknowledge.cli.main import main
from darkknowledge.engine.lm_cache import LMCacheKey, write_lm_cache
from darkknowledge.runs.cache import cache_info

V, L, K = 30, 5, 4


def test_lm_cache_info_reports_the_tail_mass_of_its_tokens(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, V, (4, L + 1), generator=g)
    logits = torch.randn(4, L, V, generator=g) * 2
    write_lm_cache(tmp_path / "c", LMCacheKey("c", "t", "w"), [(windows, logits)], k=K, value_dtype="float32")
    info = cache_info(str(tmp_path / "c"))
    p = logits.reshape(-1, V).softmax(-1)
    tail = 1 - p.topk(K, dim=-1).values.sum(-1)
    assert info["format"] == "darkknowledge-lm-teacher-cache" and info["sample"]["tokens"] == 4 * L
    assert info["sample"]["mean_tail_mass"] == pytest.approx(float(tail.mean()), rel=1e-5)
    entropy = -(p * p.log()).sum(-1).mean()
    assert info["sample"]["mean_entropy"] == pytest.approx(float(entropy), rel=1e-4)
    assert main(["cache", "info", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out)["sample"]["tokens"] == 4 * L
