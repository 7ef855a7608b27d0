"""The language-model section of `darkknowledge bench` runs its three loops on tiny sizes
(numbers only in the docs: no timing is asserted)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


def test_lm_bench_measures_reference_live_and_cached_loops(tmp_path):
    from darkknowledge.bench.lm import format_lm_report, run_lm_bench
    from darkknowledge.data.text import stdlib_files

    text = "".join(f.read_text(encoding="utf-8", errors="replace") for f in stdlib_files()[:30])
    (tmp_path / "corpus").mkdir()
    for i in range(60):
        (tmp_path / "corpus" / f"doc{i:03d}.txt").write_text(text[i * 1000 : (i + 1) * 1000])

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
        log=lambda _: None,
    )
    assert set(result["tokens_per_s"]) == {"reference", "ours_live", "ours_cached"}
    assert all(math.isfinite(v) and v > 0 for v in result["tokens_per_s"].values())
    assert result["ratios"]["live_over_reference"] == pytest.approx(
        result["tokens_per_s"]["ours_live"] / result["tokens_per_s"]["reference"]
    )
    assert result["teacher_forward"]["fraction_of_peak"] > 0 and (tmp_path / "cache" / "meta.json").is_file()
    assert "ours, cached teacher" in format_lm_report(result)
