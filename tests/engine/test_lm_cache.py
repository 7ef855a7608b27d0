"""The LM teacher cache: round trip, statistics from the full distribution, missing-mass
policies, keys and bad input, and the token losses fed from it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from darkknowledge.engine.lm_cache import (
    IGNORE_INDEX,
    TAU_SEARCH,
    LMCacheKey,
    LMCacheWriter,
    LMTeacherCache,
    expand_topk_rows,
    lm_cache_dir,
    token_bytes,
    token_statistics,
    truncation_kl,
    write_lm_cache,
)
from darkknowledge.errors import UserError
from darkknowledge.methods import build_method
from darkknowledge.methods.tokens import token_terms
from darkknowledge.nontarget import isats_search

V, L, K = 50, 6, 8
KEY = LMCacheKey(corpus="corpus-a", tokenizer="tok-a", teacher="teacher-a")


def batches(n_batches: int = 3, b: int = 2, seed: int = 0, extra_token: bool = True, teacher_right: bool = False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        windows = torch.randint(0, V, (b, L + int(extra_token)), generator=g)
        logits = torch.randn(b, L, V, generator=g) * 3
        if teacher_right:  # the next token is the teacher's top-1 (tau* is searched, not fixed)
            windows[:, 1:] = logits.argmax(-1)[:, : windows.shape[1] - 1]
        out.append((windows, logits))
    return out


def build(tmp_path, data=None, **kw):
    data = data if data is not None else batches()
    kw.setdefault("k", K)
    return write_lm_cache(lm_cache_dir(tmp_path, KEY), KEY, data, **kw), data


def test_round_trip_across_shards(tmp_path):
    cache, data = build(tmp_path, value_dtype="float32", shard_tokens=2 * L)  # one batch of 2 windows per shard
    assert cache.num_windows == 6 and len(cache.meta["shards"]) == 3
    assert isinstance(cache._shards[1]["ids"], np.memmap)
    windows = torch.tensor([5, 0, 3])
    ids = cache.window_arrays(windows, "ids")
    values = cache.window_arrays(windows, "values")
    lse = cache.window_arrays(windows, "lse")
    targets = cache.window_arrays(windows, "targets")
    all_logits = torch.cat([z for _, z in data])
    all_windows = torch.cat([w for w, _ in data])
    for row, w in enumerate(windows.tolist()):
        top_v, top_i = all_logits[w].topk(K, dim=-1)
        assert torch.equal(ids[row].long(), top_i)
        torch.testing.assert_close(values[row], top_v)
        torch.testing.assert_close(lse[row], all_logits[w].logsumexp(-1))
        assert torch.equal(targets[row].long(), all_windows[w, 1:])


def test_statistics_come_from_the_full_distribution(tmp_path):
    cache, data = build(tmp_path, data=batches(extra_token=False, teacher_right=True))
    logits = torch.cat([z for _, z in data]).reshape(-1, V)
    windows = torch.cat([w for w, _ in data])
    targets = torch.cat([windows[:, 1:], torch.full((windows.shape[0], 1), IGNORE_INDEX)], 1).reshape(-1)
    known = targets != IGNORE_INDEX
    tau = cache.statistic("tau_star")
    assert torch.isnan(tau[~known]).all() and torch.isfinite(tau[known]).all()
    torch.testing.assert_close(tau[known], isats_search(logits[known], targets[known], **TAU_SEARCH).float())
    # the search the cache uses agrees with the default one to well within its precision
    torch.testing.assert_close(tau[known], isats_search(logits[known], targets[known]).float(), rtol=5e-3, atol=0)
    p = logits.softmax(-1)
    py = p[known].gather(1, targets[known, None]).squeeze(1)
    torch.testing.assert_close(cache.statistic("target_logprob")[known], py.log())
    nontarget = p[known].clone()
    nontarget.scatter_(1, targets[known, None], float("nan"))
    expected_var = torch.from_numpy(np.nanvar(nontarget.double().numpy(), axis=1)).float()
    torch.testing.assert_close(cache.statistic("nontarget_variance")[known], expected_var)
    torch.testing.assert_close(cache.statistic("entropy"), -(p * p.log()).sum(-1))
    # the truncated copy gives a different tau*: the cache must not be the source
    rebuilt = cache.teacher(torch.arange(cache.num_windows), "ignore").dense().reshape(-1, V)
    assert not torch.allclose(isats_search(rebuilt[known], targets[known]).float(), tau[known])


def test_missing_mass_policies():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, V, generator=g, dtype=torch.float64) * 2
    values, ids = z.topk(K, dim=-1)
    lse = z.logsumexp(-1)
    uniform = expand_topk_rows(ids, values, lse, V, "uniform").double()
    log_p = uniform.log_softmax(-1)
    torch.testing.assert_close(uniform.logsumexp(-1), lse)  # the tail keeps its mass
    torch.testing.assert_close(log_p.gather(1, ids), values - lse[:, None])  # cached tokens exact
    tail = torch.ones_like(z, dtype=torch.bool).scatter_(1, ids, False)
    assert torch.allclose(log_p[tail].reshape(4, -1).std(-1), torch.zeros(4, dtype=torch.float64))
    ignore = expand_topk_rows(ids, values.float(), lse.float(), V, "ignore")
    p = ignore.softmax(-1)
    assert (p[tail] == 0).all()
    torch.testing.assert_close(p.gather(1, ids).double(), values.softmax(-1), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="missing_mass"):
        expand_topk_rows(ids, values, lse, V, "spread")  # type: ignore[arg-type]


def test_truncation_kl_falls_with_k_and_vanishes_at_full_vocabulary():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(16, V, generator=g) * 3
    for policy, reverse in (("uniform", False), ("uniform", True), ("ignore", True)):
        errors = [float(truncation_kl(z, k, policy, reverse=reverse).mean()) for k in (1, 4, 16, 40)]
        assert errors == sorted(errors, reverse=True) and errors[0] > 0.1 and errors[-1] > 0
        assert float(truncation_kl(z, V, policy, reverse=reverse).abs().max()) < 1e-10
    # dropping the tail: KL(p || p_k) is infinite, KL(p_k || p) is the log of the kept mass
    assert torch.isinf(truncation_kl(z, 8, "ignore")).all()
    p = z.double().softmax(-1)
    kept = p.topk(8, dim=-1).values.sum(-1)
    torch.testing.assert_close(truncation_kl(z, 8, "ignore", reverse=True), -kept.log())


def test_token_losses_from_the_cache_equal_the_dense_rebuild(tmp_path):
    cache, data = build(tmp_path)
    windows = torch.tensor([1, 4])
    teacher = cache.teacher(windows)
    targets = cache.window_arrays(windows, "targets").long()
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, L, V, generator=g, requires_grad=True)
    for name in ("kd", "reverse_kl", "dkd"):
        method = build_method(name, num_classes=V)
        a = token_terms(method, student, teacher, targets, chunk_tokens=5)
        b = token_terms(method, student, teacher.dense(), targets, chunk_tokens=None)
        ga = torch.autograd.grad(sum(a.values()), student)[0]
        gb = torch.autograd.grad(sum(b.values()), student)[0]
        for k in a:
            torch.testing.assert_close(a[k], b[k])
        torch.testing.assert_close(ga, gb)


def test_k_larger_than_vocabulary_is_a_user_error_and_leaves_nothing(tmp_path):
    target = lm_cache_dir(tmp_path, KEY)
    with pytest.raises(UserError, match=f"k={V + 1} .*vocabulary of {V} tokens"):
        write_lm_cache(target, KEY, batches(), k=V + 1)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="vocabulary"):
        truncation_kl(torch.zeros(2, 5), 6)


def test_interrupted_write_leaves_nothing(tmp_path):
    target = lm_cache_dir(tmp_path, KEY)

    def broken():
        yield from batches(1)
        raise RuntimeError("teacher died")

    with pytest.raises(RuntimeError):
        write_lm_cache(target, KEY, broken(), k=K)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="no token windows"):
        write_lm_cache(target, KEY, [], k=K)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field", ["corpus", "tokenizer", "teacher"])
def test_cache_of_another_corpus_tokenizer_or_teacher_is_refused(tmp_path, field):
    cache, _ = build(tmp_path)
    other = LMCacheKey(**{**KEY.__dict__, field: "something-else"})
    with pytest.raises(UserError, match=f"another {field} 'something-else'|another {field} '{getattr(KEY, field)}'"):
        LMTeacherCache.open(cache.path, other)
    assert lm_cache_dir(tmp_path, other) != cache.path
    LMTeacherCache.open(cache.path, KEY)  # its own key opens


def test_truncated_or_foreign_files_are_user_errors(tmp_path):
    cache, _ = build(tmp_path)
    with pytest.raises(UserError, match="already exists"):
        LMCacheWriter(cache.path, KEY, k=K)
    shard_file = cache.path / "shard_00000" / "values.npy"
    data = shard_file.read_bytes()
    shard_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        LMTeacherCache.open(cache.path, KEY)
    meta = json.loads((cache.path / "meta.json").read_text())
    (cache.path / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(UserError, match="format"):
        LMTeacherCache.open(cache.path, KEY)
    with pytest.raises(UserError, match="not a teacher cache"):
        LMTeacherCache.open(tmp_path / "nowhere", KEY)


def test_statistics_match_token_statistics_and_can_be_skipped(tmp_path):
    cache, data = build(tmp_path, statistics=False)
    with pytest.raises(UserError, match="no statistic"):
        cache.statistic("tau_star")
    z = data[0][1].reshape(-1, V)
    stats = token_statistics(z, data[0][0][:, 1:].reshape(-1))
    assert set(stats) == {"target_logprob", "entropy", "nontarget_variance", "tau_star"}
    assert all(torch.isfinite(v).all() for v in stats.values())


def test_float16_values(tmp_path):
    cache, data = build(tmp_path, value_dtype="float16")
    values = cache.window_arrays(torch.tensor([0]), "values")
    assert values.dtype == torch.float16
    torch.testing.assert_close(values[0].float(), data[0][1][0].topk(K, dim=-1).values, rtol=1e-3, atol=1e-2)


def test_cache_from_the_token_loader_keeps_padding_and_window_order(tmp_path):
    pytest.importorskip("tokenizers")
    from darkknowledge.data.text import SplitRule, read_text_files, stdlib_root
    from darkknowledge.data.tokenize import train_bpe
    from darkknowledge.data.tokens import TokenBatchLoader, TokenWindows, tokenize_corpus
    from darkknowledge.engine.lm_cache import teacher_logit_batches

    corpus = read_text_files(stdlib_root() / "json", suffixes=(".py",), rule=SplitRule(validation=0.3, test=0.0))
    tokenizer = train_bpe(corpus, vocab_size=300)
    arrays = tokenize_corpus(corpus, tokenizer, tmp_path / "tokens")
    windows = TokenWindows(arrays["train"], context=64, packing="document")  # padded last windows
    g = torch.Generator().manual_seed(4)
    table = torch.randn(tokenizer.vocab_size, tokenizer.vocab_size, generator=g) * 2

    def teacher(inputs):  # a bigram "teacher": logits depend on the current token only
        return table[inputs]

    key = LMCacheKey(corpus=corpus.digest, tokenizer=tokenizer.digest, teacher="bigram-4")
    loader = TokenBatchLoader(windows, batch_size=3, train=False)
    cache = write_lm_cache(tmp_path / "cache", key, teacher_logit_batches(loader, teacher), k=16)
    assert cache.num_windows == len(windows)
    batch = next(iter(TokenBatchLoader(windows, batch_size=len(windows), train=False)))
    assert (batch.targets == IGNORE_INDEX).any()  # the document packing padded something
    assert torch.equal(cache.window_arrays(batch.indices, "targets").long(), batch.targets)
    padded = batch.targets == IGNORE_INDEX
    assert torch.isnan(cache.statistic("entropy")).sum() == 0
    assert torch.isnan(cache.statistic("tau_star").reshape(len(windows), -1)[padded]).all()
    logits = teacher(batch.inputs)
    torch.testing.assert_close(cache.window_arrays(batch.indices, "lse"), logits.logsumexp(-1))
    shuffled = TokenBatchLoader(windows, batch_size=3, train=True, seed=1)
    with pytest.raises(ValueError, match="in order"):
        write_lm_cache(tmp_path / "cache2", key, teacher_logit_batches(shuffled, teacher), k=16)
    assert not (tmp_path / "cache2").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_writing_keeps_the_resident_set_near_the_cached_data(tmp_path):
    # the shard is preallocated: many small retained arrays between full-vocabulary temporaries
    # used to fragment the heap (about 40 MB of resident memory per batch here, 1.6 MB of data)
    script = f"""
import torch
from pathlib import Path
from darkknowledge.engine.lm_cache import LMCacheWriter, LMCacheKey
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
w = LMCacheWriter(Path({str(tmp_path)!r}) / "c", LMCacheKey("a", "b", "c"), k=64, statistics=False)
g = torch.Generator().manual_seed(0)
for i in range(12):
    logits = torch.randn(32, 128, 4096, generator=g)
    w.add(torch.randint(0, 4096, (32, 129), generator=g), logits)
    if i == 1:
        start = rss()
print(rss() - start)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth_mib = float(done.stdout.strip().splitlines()[-1])
    assert growth_mib < 150, f"resident set grew by {growth_mib:.0f} MiB over 10 batches of 4096 tokens"


def test_a_shard_is_sized_in_bytes_whatever_k(tmp_path, monkeypatch):
    import darkknowledge.engine.lm_cache as lm_cache

    # on disk a token takes what token_bytes says: ids int32, values float16, lse, target, 4 statistics
    cache, _ = build(tmp_path / "a", k=K)
    shard = cache.path / "shard_00000"
    payload = sum(np.load(f, mmap_mode="r").nbytes for f in shard.glob("*.npy"))
    assert payload == cache.meta["shards"][0]["rows"] * token_bytes(K, "float16", statistics=True)
    # a 1,024-token k holds 16x fewer tokens per shard than k = 64 in the same memory
    small, large = (LMCacheWriter(tmp_path / f"w{k}", KEY, k=k) for k in (64, 1024))
    assert small.shard_tokens * token_bytes(64, "float16", True) <= lm_cache.SHARD_BYTES
    assert large.shard_tokens * token_bytes(1024, "float16", True) <= lm_cache.SHARD_BYTES
    assert small.shard_tokens > 15 * large.shard_tokens
    small.abort()
    large.abort()
    # a budget of two windows' bytes: the three batches of two windows land in three shards
    monkeypatch.setattr(lm_cache, "SHARD_BYTES", 2 * L * token_bytes(K, "float16", True))
    cache, data = build(tmp_path / "b", k=K)
    assert len(cache.meta["shards"]) == 3
    assert torch.equal(cache.window_arrays(torch.tensor([5]), "ids")[0], data[2][1][1].topk(K, -1).indices.int())


def test_first_predicted_skips_unknown_targets_across_shards(tmp_path):
    # windows of L tokens: each window's last position has no next token (-100); one batch per shard
    cache, _ = build(tmp_path, data=batches(extra_token=False), shard_tokens=2 * L)
    windows, rows = cache.first_predicted(2 * (L - 1) + 1)  # two full windows and one more position
    assert rows.tolist() == [*range(L - 1), *range(L, 2 * L - 1), 2 * L]
    assert windows.tolist() == [0, 1, 2]
    everything = cache.first_predicted(10_000)[1]
    assert len(everything) == cache.num_windows * (L - 1)  # every known target, across the three shards


def test_resident_lm_cache_gathers_the_same_rows_across_shards(tmp_path):
    from types import SimpleNamespace

    from darkknowledge.engine.lm_cache import LMCachedTeacher

    cache, _ = build(tmp_path, shard_tokens=2 * L)  # 3 shards
    mapped, resident = LMCachedTeacher(cache, resident=False), LMCachedTeacher(cache, resident=True)
    assert resident.resident and not mapped.resident and not LMCachedTeacher(cache).resident  # CPU: mapped
    batch = SimpleNamespace(indices=torch.tensor([5, 0, 3, 2]))
    a, b = mapped(batch), resident(batch)
    assert torch.equal(a.dense(), b.dense())  # the rebuilt full-vocabulary rows of windows 5, 0, 3, 2


def test_isats_from_the_cache_uses_the_tau_star_of_the_full_distribution(tmp_path):
    """item 4: tau* needs the full distribution, so ISATS from a top-k cache takes the one the
    cache recorded when written (where its search settings are the cache's), not a search over
    the truncated rows, which differs (test_statistics_come_from_the_full_distribution)."""
    from types import SimpleNamespace

    from darkknowledge.engine.lm_cache import TAU_STAR_SEARCH, LMCachedTeacher

    cache, _ = build(tmp_path, data=batches(extra_token=False, teacher_right=True))
    assert cache.meta["tau_star_search"] == TAU_STAR_SEARCH == {
        "search_rule": "A", "tau_min": 0.5, "tau_max": 20.0, "grid_size": 16, "refine_size": 12
    }  # fmt: skip
    windows = torch.arange(cache.num_windows)
    targets = cache.window_arrays(windows, "targets").long()
    known = targets.reshape(-1) != IGNORE_INDEX
    recorded = cache.statistic("tau_star")[known]  # the teacher is right on every known token: no override
    student = torch.randn(*targets.shape, V, generator=torch.Generator().manual_seed(1))
    for teacher in (cache.teacher(windows), LMCachedTeacher(cache)(SimpleNamespace(indices=windows))):
        same = build_method("isats", {"grid_size": 16, "refine_size": 12}, num_classes=V)
        token_terms(same, student, teacher, targets, chunk_tokens=5)
        torch.testing.assert_close(torch.cat(same._stats["isats_tau"]), recorded)
    other = build_method("isats", {"grid_size": 16, "refine_size": 12, "tau_min": 0.25}, num_classes=V)
    token_terms(other, student, cache.teacher(windows), targets, chunk_tokens=5)  # searches the truncated rows
    assert not torch.allclose(torch.cat(other._stats["isats_tau"]), recorded)
    bare, _ = build(tmp_path / "bare", statistics=False)  # nothing recorded: the search runs as before
    assert bare.tau_search is None and bare.teacher(windows).statistics(torch.arange(3)) is None
