"""The distillation loss of a language-model step from a top-k teacher cache: CE alone, and KD
(T = 1 without CE; T = 4 with CE 0.1) and reverse KL computed from the top-k rows
(``methods/topk.py``, the default) or from the full-vocabulary rows rebuilt from them; forward + backward of
``token_terms`` over one batch, chunked as in training (docs/methods.md, "Language models").

    .venv/bin/python benchmarks/lm_cached_kd_loss.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from darkknowledge.engine.lm_cache import TopKTeacher
from darkknowledge.methods import build_method
from darkknowledge.methods.tokens import token_terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b, t, v, k = args.batch, args.context, args.vocab, args.k
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(b, t, v, generator=g) * 2).requires_grad_()
    targets = torch.randint(0, v, (b, t), generator=g)
    teacher_logits = torch.randn(b * t, v, generator=g) * 3
    values, ids = teacher_logits.topk(k, dim=-1)
    cache = TopKTeacher(
        ids.int().reshape(b, t, k), values.half().reshape(b, t, k), teacher_logits.logsumexp(-1).reshape(b, t), v
    )
    del teacher_logits

    def seconds(method, teacher) -> float:
        best = float("inf")
        for _ in range(args.repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            terms = token_terms(method, student, teacher, targets)
            sum(terms.values()).backward()
            student.grad = None
            best = min(best, time.perf_counter() - start)
        return best

    print(f"{b} x {t} tokens, vocabulary {v}, top-{k} cache, {args.threads} thread(s); best of {args.repeats}")
    print("| loss | from the top-k rows (s) | from rebuilt full rows (s) |")
    print("|---|---:|---:|")
    print(f"| CE alone | {seconds(build_method('ce', {}), None):.2f} | — |", flush=True)
    topk_rows = cache.topk_rows
    for label, name, params in (
        ("KD, T = 1, no CE", "kd", {"temperature": 1.0, "ce_weight": 0.0, "kd_weight": 1.0}),
        ("KD, T = 4, CE 0.1 (defaults)", "kd", {}),
        ("reverse KL, T = 1, no CE (defaults)", "reverse_kl", {}),
    ):
        method = build_method(name, params)
        sparse = seconds(method, cache)
        cache.topk_rows = lambda index: None  # type: ignore[method-assign]
        dense = seconds(method, cache)
        cache.topk_rows = topk_rows  # type: ignore[method-assign]
        print(f"| {label} | {sparse:.2f} | {dense:.2f} |", flush=True)


if __name__ == "__main__":
    main()
