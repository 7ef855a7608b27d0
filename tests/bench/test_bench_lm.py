"""The language-model section of `darkknowledge bench` runs its three loops on tiny sizes
(numbers only in the docs: no timing is asserted)."""

from __future__ import annotations

import math

import pytest

from darkknowledge.bench import loss_memory, rss
from support import write_corpus

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


def test_lm_bench_measures_reference_live_and_cached_loops(tmp_path):
    from darkknowledge.bench.lm import format_lm_report, run_lm_bench

    write_corpus(tmp_path / "corpus", documents=60, size=1000, source_files=30)

    result = run_lm_bench(
        teacher="lm_d32_l1",
        student="lm_d16_l1",
        context=16,
        batch_size=4,
        vocab_size=300,
        steps=2,
        repeats=1,
        topk=8,
        text_root=str(tmp_path / "corpus"),
        workdir=str(tmp_path),
        compile_teacher=False,
        log=lambda _: None,
    )
    assert set(result["tokens_per_s"]) == {"reference", "ours_live", "ours_cached"}
    assert all(math.isfinite(v) and v > 0 for v in result["tokens_per_s"].values())
    assert result["ratios"]["live_over_reference"] == pytest.approx(
        result["tokens_per_s"]["ours_live"] / result["tokens_per_s"]["reference"]
    )
    assert result["teacher_forward"]["fraction_of_peak"] > 0 and (tmp_path / "cache" / "meta.json").is_file()
    assert result["cache_build_without_statistics_tokens_per_s"] > 0
    assert result["teacher_forward"]["compiled_gflops"] is None
    report = format_lm_report(result)
    assert "ours, cached teacher" in report
    if rss.can_reset_peak():
        mem = result["loss_memory_mib"]
        assert mem["reference"] > 0 and mem["fraction"] == pytest.approx(mem["ours"] / mem["reference"])
        assert "Peak memory of the loss" in report


@pytest.mark.skipif(not rss.can_reset_peak(), reason="needs Linux /proc/self/clear_refs")
def test_loss_memory_child_measures_the_reference_above_the_gradient_floor():
    floor = loss_memory.measure_in_child(loss_memory.FLOOR, 4, 64, 4096)
    ref = loss_memory.measure_in_child(loss_memory.REFERENCE, 4, 64, 4096)
    ours = loss_memory.measure_in_child("kd", 4, 64, 4096, chunk=16)
    grad = floor["grad_mib"]  # 4 MiB: the student logits' gradient that every loss returns
    assert floor["extra_mib"] >= 0.9 * grad
    # the reference keeps several full-size tensors (log-softmaxes, probabilities, their gradients)
    assert ref["extra_mib"] >= 3 * grad
    assert ours["extra_mib"] < ref["extra_mib"]
    assert ours["value"] == pytest.approx(ours["value"]) and ref["value"] > 0
