"""`darkknowledge diagnose --cache`: language-model teachers diagnosed from their top-k caches,
with the statistics the caches recorded from the full distributions reported beside."""

from __future__ import annotations

import json

import pytest
import torch

from darkknowledge.cli.main import main
from darkknowledge.engine.lm_cache import LMCacheKey, expand_topk_rows, write_lm_cache
from darkknowledge.errors import UserError
from darkknowledge.runs.diagnose import diagnose_lm_caches

V, L, K = 40, 8, 6


def _windows_and_logits(seed: int, scale: float):
    g = torch.Generator().manual_seed(0)  # the same windows for every teacher
    windows = torch.randint(0, V, (6, L + 1), generator=g)
    logits = torch.randn(6, L, V, generator=torch.Generator().manual_seed(seed)) * scale
    return windows, logits


def _cache(tmp_path, name: str, seed: int, scale: float, corpus: str = "corpus"):
    windows, logits = _windows_and_logits(seed, scale)
    key = LMCacheKey(corpus, "tok", name)
    write_lm_cache(tmp_path / name, key, [(windows[:3], logits[:3]), (windows[3:], logits[3:])], k=K)
    return tmp_path / name, windows, logits


def test_two_caches_are_diagnosed_from_their_rebuilt_rows_with_the_exact_statistics_beside(tmp_path):
    small, windows, z_small = _cache(tmp_path, "small", seed=1, scale=1.0)
    large, _, z_large = _cache(tmp_path, "large", seed=2, scale=4.0)
    result = diagnose_lm_caches([str(small), str(large)], out_dir=tmp_path / "out", max_rows=20)
    saved = json.loads((tmp_path / "out" / "diagnostics.json").read_text())
    teachers = {t["name"]: t for t in saved["teachers"]}
    assert [t["name"] for t in saved["teachers"]] == ["small", "large"] and result.files
    targets = windows[:, 1:].reshape(-1)[:20]
    exact = saved["data"]["full_distribution_at_T1"]
    for name, z in (("small", z_small), ("large", z_large)):
        log_p = z.reshape(-1, V)[:20].log_softmax(-1)
        target_prob = log_p.gather(1, targets[:, None]).exp().mean()
        assert exact[name]["target_prob"] == pytest.approx(float(target_prob), rel=1e-5)
        # the diagnosis itself sees the rebuilt rows (top-k + uniform tail): its T = 1 target
        # probability is that of the rebuild, exact for tokens in the top-k
        flat = z.reshape(-1, V)[:20]
        values, ids = flat.topk(K, dim=-1)
        rebuilt = expand_topk_rows(ids, values.half().float(), flat.logsumexp(-1), V).log_softmax(-1)
        expected = rebuilt.gather(1, targets[:, None]).exp().mean()
        at_1 = next(r for r in teachers[name]["per_temperature"] if r["temperature"] == 1.0)
        got = at_1["target_prob"]
        assert got == pytest.approx(float(expected), rel=1e-3)


def test_caches_of_other_windows_are_refused(tmp_path):
    small, _, _ = _cache(tmp_path, "small", seed=1, scale=1.0)
    other, _, _ = _cache(tmp_path, "other", seed=2, scale=1.0, corpus="another-corpus")
    with pytest.raises(UserError, match="not over the same token windows"):
        diagnose_lm_caches([str(small), str(other)], out_dir=None)


def test_the_command_line_diagnoses_caches(tmp_path, capsys):
    small, _, _ = _cache(tmp_path, "small", seed=1, scale=1.0)
    large, _, _ = _cache(tmp_path, "large", seed=2, scale=4.0)
    out = tmp_path / "diag"
    assert main(["diagnose", "--cache", str(small), "--cache", str(large), "--out", str(out), "--no-plots"]) == 0
    assert (out / "diagnostics.json").is_file() and (out / "report.html").is_file()
