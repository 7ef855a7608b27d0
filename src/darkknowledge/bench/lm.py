"""``darkknowledge bench --lm``: tokens/s of a language-model distillation step.

Three loops on the same token windows (the standard library's sources, or ``text_root``'s text
files; a byte-level BPE),
the same teacher and student (random weights: speed does not depend on them):

* reference: as LM distillation scripts are usually written — the teacher's forward every
  step, then the full-vocabulary softmax and KL of every position at once, fp32, AdamW;
* ours, live teacher: the trainer (bf16 autocast where native, the method over tokens in
  chunks of the vocabulary, fused AdamW);
* ours, cached teacher: the same with the teacher's top-k logits replayed from a cache
  (built once; its build time is reported).

Also: the teacher's forward alone, eager and compiled with frozen weights (as
``engine.compile_teacher`` does), in GFLOP/s against
the machine's matmul peak in the same precision; the cache build's rate with and without the
full-distribution statistics it records; and the peak memory of the loss (reference vs ours
with the default chunk, each in a fresh process: :mod:`darkknowledge.bench.loss_memory`).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from darkknowledge.bench import loss_memory, rss
from darkknowledge.bench.peak import forward_flops, matmul_peak
from darkknowledge.config import load_config
from darkknowledge.data.splits import Splits, load_splits
from darkknowledge.data.tokens import TokenBatchLoader
from darkknowledge.engine.compile import compile_module
from darkknowledge.engine.factory import build_parts
from darkknowledge.engine.lm_cache import LMCachedTeacher, LMCacheKey, write_lm_cache
from darkknowledge.engine.precision import autocast, resolve_precision
from darkknowledge.engine.teacher import LiveTeacher
from darkknowledge.engine.trainer import Trainer
from darkknowledge.methods.tokens import CHUNK_TOKENS
from darkknowledge.models import build_model


@contextlib.contextmanager
def _inside(directory: Path) -> Iterator[None]:
    here = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(here)


def _median(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    rates = [fn() for _ in range(repeats)]
    return statistics.median(rates), rates


def reference_epoch(student, teacher, loader, optimizer, temperature: float = 1.0) -> float:
    """One pass of the usual script: teacher forward, then softmax and KL over every position at once."""
    student.train()
    tokens = 0
    t0 = time.perf_counter()
    for batch in loader.epoch(0):
        with torch.no_grad():
            t_logits = teacher(batch.inputs)
        s_logits = student(batch.inputs)
        mask = batch.mask.reshape(-1)
        s = s_logits.reshape(-1, s_logits.shape[-1])[mask] / temperature
        t = t_logits.reshape(-1, t_logits.shape[-1])[mask] / temperature
        kd = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean") * temperature**2
        ce = F.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]), batch.targets.reshape(-1), ignore_index=-100)
        loss = 0.1 * ce + 0.9 * kd
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens += int(batch.mask.sum())
    return tokens / (time.perf_counter() - t0)


def run_lm_bench(
    *,
    teacher: str = "lm_d256_l4",
    student: str = "lm_d64_l2",
    context: int = 256,
    batch_size: int = 8,
    vocab_size: int = 4096,
    steps: int = 12,
    repeats: int = 3,
    topk: int = 64,
    corpus_bytes: int = 1_500_000,
    text_root: str | None = None,
    workdir: str | None = None,
    compile_teacher: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    work = Path(workdir or tempfile.mkdtemp(prefix="dk-bench-lm-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = (
        ["data.name=textfiles", f"data.root={Path(text_root).resolve()}"]
        if text_root
        else ["data.name=stdlib", f"data.max_bytes={corpus_bytes}"]
    )
    common = [
        *corpus,
        f"data.vocab_size={vocab_size}",
        f"data.context={context}",
        f"data.batch_size={batch_size}",
        f"model.name={student}",
        "method.name=kd",
        "optim.optimizer=adamw",
        "optim.lr=0.001",
        "optim.epochs=1000",
        "optim.schedule=constant",
        "engine.progress=false",
        "engine.channels_last=false",
    ]
    with _inside(work):
        cfg = load_config(overrides=common)
        splits = load_splits(cfg.data)
        windows = splits.train.head(steps * batch_size)  # one timed epoch = ``steps`` steps
        bench_splits = Splits(windows, None, splits.test.head(batch_size))
        vocab = windows.spec.num_classes
        device = torch.device("cpu")
        precision = resolve_precision(cfg.engine.precision, device)
        torch.manual_seed(0)
        t_model = build_model(teacher, num_classes=vocab, in_channels=1).eval()
        result: dict[str, Any] = {
            "teacher": teacher,
            "student": student,
            "vocab": vocab,
            "context": context,
            "batch_size": batch_size,
            "steps": steps,
            "repeats": repeats,
            "precision": precision,
            "threads": torch.get_num_threads(),
            "tokens_per_s": {},
            "raw": {},
        }

        # (a) the reference loop
        torch.manual_seed(0)
        s_ref = build_model(student, num_classes=vocab, in_channels=1)
        optimizer = torch.optim.AdamW(s_ref.parameters(), lr=1e-3)
        loader = TokenBatchLoader(windows, batch_size, train=True, seed=0)
        reference_epoch(s_ref, t_model, loader, optimizer)  # warm-up
        med, raw = _median(lambda: reference_epoch(s_ref, t_model, loader, optimizer), repeats)
        result["tokens_per_s"]["reference"], result["raw"]["reference"] = med, raw
        log(f"  reference (fp32, teacher every step, full softmax/KL): {med:8.0f} tokens/s")

        def ours(signal) -> float:
            trainer = Trainer(build_parts(cfg, splits=bench_splits, teacher=signal), run_dir=work / "unused")
            trainer.train_epoch(0)  # warm-up
            rates = [trainer.train_epoch(r + 1) for r in range(repeats)]
            tokens = sum(int(b.mask.sum()) for b in TokenBatchLoader(windows, batch_size, train=True).epoch(0))
            return statistics.median(tokens / r["train_time_s"] for r in rates)

        # (b) ours with the live teacher
        live = LiveTeacher(t_model, precision=precision, channels_last=False, fold_batchnorm=False)
        result["tokens_per_s"]["ours_live"] = ours(live)
        log(
            f"  ours, live teacher ({precision}, chunked loss):        {result['tokens_per_s']['ours_live']:8.0f} tokens/s"
        )

        # (c) ours with a top-k cache of the teacher
        in_order = TokenBatchLoader(windows, batch_size, train=False)
        builds: dict[str, float] = {}
        for with_statistics in (False, True):  # the cache used below is the full one, written last
            where = work / ("cache" if with_statistics else "cache-without-statistics")
            t0 = time.perf_counter()
            cache = write_lm_cache(
                where,
                LMCacheKey("bench", "bench", "bench"),
                ((b.tokens, live(b), b.targets) for b in in_order.epoch(0)),
                k=min(topk, vocab),
                statistics=with_statistics,
            )
            builds["with_statistics" if with_statistics else "without_statistics"] = windows.predicted_tokens / (
                time.perf_counter() - t0
            )
        result["cache_build_tokens_per_s"] = builds["with_statistics"]
        result["cache_build_without_statistics_tokens_per_s"] = builds["without_statistics"]
        result["tokens_per_s"]["ours_cached"] = ours(LMCachedTeacher(cache, device))
        log(
            f"  ours, cached teacher (top-{min(topk, vocab)}):                 {result['tokens_per_s']['ours_cached']:8.0f} tokens/s"
        )

        # the teacher's forward against the matmul peak
        tokens = next(iter(in_order.epoch(0))).inputs
        flops = forward_flops(t_model, tokens)
        peak = matmul_peak(precision, device)

        def forward_gflops(model: Callable[[torch.Tensor], torch.Tensor], reps: int = 5) -> float:
            with torch.inference_mode(), autocast(device, precision):
                model(tokens)  # warm-up (compilation)
                t0 = time.perf_counter()
                for _ in range(reps):
                    model(tokens)
            return flops / ((time.perf_counter() - t0) / reps) / 1e9

        achieved = forward_gflops(t_model)
        compiled = forward_gflops(compile_module(t_model, device, frozen=True)) if compile_teacher else None
        result["teacher_forward"] = {
            "gflop_per_batch": flops / 1e9,
            "gflops": achieved,
            "peak_gflops": peak["gflops"],
            "fraction_of_peak": achieved / peak["gflops"],
            "compiled_gflops": compiled,
            "compiled_fraction_of_peak": None if compiled is None else compiled / peak["gflops"],
        }
        if rss.can_reset_peak():
            ref_mem = loss_memory.measure_in_child(loss_memory.REFERENCE, batch_size, context, vocab)
            ours_mem = loss_memory.measure_in_child("kd", batch_size, context, vocab, CHUNK_TOKENS)
            result["loss_memory_mib"] = {
                "reference": ref_mem["extra_mib"],
                "ours": ours_mem["extra_mib"],
                "ours_chunk_tokens": CHUNK_TOKENS,
                "fraction": ours_mem["extra_mib"] / ref_mem["extra_mib"],
            }
        ref = result["tokens_per_s"]["reference"]
        result["ratios"] = {
            "live_over_reference": result["tokens_per_s"]["ours_live"] / ref,
            "cached_over_reference": result["tokens_per_s"]["ours_cached"] / ref,
        }
        log(
            f"  teacher forward: {achieved:.1f} GFLOP/s = {100 * achieved / peak['gflops']:.0f} % of the {precision} "
            f"matmul peak ({peak['gflops']:.0f})"
            + (
                ""
                if compiled is None
                else f"; compiled {compiled:.1f} GFLOP/s = {100 * compiled / peak['gflops']:.0f} %"
            )
        )
    return result


def format_lm_report(result: dict[str, Any]) -> str:
    tps, ratios, fwd = result["tokens_per_s"], result["ratios"], result["teacher_forward"]
    mem = result.get("loss_memory_mib")
    return "\n".join(
        [
            f"LM distillation step: teacher {result['teacher']} -> student {result['student']}, vocabulary "
            f"{result['vocab']}, batch {result['batch_size']} x {result['context']} tokens, {result['precision']}, "
            f"{result['threads']} threads",
            "| loop | tokens/s | vs reference |",
            "|---|---:|---:|",
            f"| reference (fp32, teacher every step, full softmax + KL) | {tps['reference']:.0f} | 1.00x |",
            f"| ours, live teacher | {tps['ours_live']:.0f} | {ratios['live_over_reference']:.2f}x |",
            f"| ours, cached teacher | {tps['ours_cached']:.0f} | {ratios['cached_over_reference']:.2f}x |",
            f"Cache build: {result['cache_build_tokens_per_s']:.0f} tokens/s "
            f"({result['cache_build_without_statistics_tokens_per_s']:.0f} without the full-distribution statistics). "
            f"Teacher forward: {fwd['gflops']:.1f} GFLOP/s, {100 * fwd['fraction_of_peak']:.0f} % of the measured "
            f"matmul peak ({fwd['peak_gflops']:.0f} GFLOP/s)"
            + (
                ""
                if fwd["compiled_gflops"] is None
                else f"; compiled {fwd['compiled_gflops']:.1f} GFLOP/s, {100 * fwd['compiled_fraction_of_peak']:.0f} %"
            )
            + ".",
        ]
        + (
            []
            if mem is None
            else [
                f"Peak memory of the loss (forward + backward, above its inputs): reference {mem['reference']:.0f} MiB, "
                f"ours {mem['ours']:.0f} MiB ({100 * mem['fraction']:.0f} %; chunks of {mem['ours_chunk_tokens']} tokens)."
            ]
        )
    )
