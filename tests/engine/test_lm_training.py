"""Language models through the one trainer: a text corpus becomes token windows, the factory
wraps any method over tokens, AdamW with clipping trains, next-token metrics select best.pt."""

from __future__ import annotations

import json
import math

import pytest

from darkknowledge.config import load_config
from darkknowledge.errors import UserError
from darkknowledge.runs import train
from support import FAST, write_corpus

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TEXT = [
    "data.name=textfiles",
    "data.root=corpus",
    "data.vocab_size=320",
    "data.context=32",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "optim.optimizer=adamw",
    "optim.lr=0.003",
    "optim.weight_decay=0.01",
    "optim.schedule=cosine",
    "optim.grad_clip=1.0",
    "optim.epochs=1",
]


@pytest.fixture(scope="module")
def lm_teacher(tmp_path_factory):
    work = tmp_path_factory.mktemp("lm")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the corpus is ./corpus, token caches go to ./data/tokens
        write_corpus(work / "corpus")
        summary = train(load_config(overrides=[f"output_dir={work}", *FAST, *TEXT, "model.name=lm_d32_l2", "name=t"]))
    return work, summary


def test_a_language_model_trains_with_next_token_metrics(lm_teacher):
    work, summary = lm_teacher
    final = summary["final"]
    for split in ("val", "test"):
        assert math.isfinite(final[f"{split}/nll"]) and final[f"{split}/nll"] > 0
        assert final[f"{split}/ppl"] == pytest.approx(math.exp(final[f"{split}/nll"]), rel=1e-6)
        assert 0 < final[f"{split}/bpb"] < 8 and 0 <= final[f"{split}/top1"] <= 100
    assert summary["selection"] == "val" and "val/nll" in summary["best"]
    # a byte-level BPE of 320 tokens predicts less than 8 bits per byte after one epoch of Python source
    assert final["val/bpb"] < 8.0
    assert (work / "data" / "tokens").is_dir()


@pytest.mark.parametrize("method", ["kd", "reverse_kl", "jsd"])
def test_a_small_language_model_is_distilled_from_a_larger_one(lm_teacher, method, monkeypatch):
    work, teacher = lm_teacher
    monkeypatch.chdir(work)
    cfg = load_config(
        overrides=[
            f"output_dir={work}",
            *FAST,
            *TEXT,
            "model.name=lm_d16_l1",
            f"method.name={method}",
            f"teacher.checkpoint={teacher['run_dir']}/last.pt",
            f"name=s-{method}",
        ]
    )
    summary = train(cfg)
    final = summary["final"]
    assert summary["teacher"]["kind"] == "live" and 0 <= final["val/teacher_agreement"] <= 100
    lines = [json.loads(line) for line in (work / f"s-{method}" / "metrics.jsonl").read_text().splitlines()]
    losses = {k: v for k, v in lines[-1].items() if k.startswith("loss/")}
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses.values()), losses
    # throughput counts tokens for a language model, not windows
    assert lines[-1]["train_tokens_per_s"] > 0 and "train_images_per_s" not in lines[-1]


def test_a_pretrained_teacher_needs_the_data_to_use_its_tokenizer(tmp_path, monkeypatch):
    from darkknowledge.engine.factory import build_parts

    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "corpus", documents=40)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    cfg = load_config(overrides=[*FAST, *TEXT, "model.name=lm_d16_l1", "method.name=kd", "teacher.gguf=model.gguf"])
    with pytest.raises(UserError, match="set data.tokenizer=model.gguf"):
        build_parts(cfg)


def test_dark_knowledge_of_language_models_is_diagnosed_over_the_vocabulary(lm_teacher, monkeypatch):
    from darkknowledge.runs.diagnose import diagnose_checkpoints

    work, teacher = lm_teacher
    monkeypatch.chdir(work)
    small = train(
        load_config(overrides=[f"output_dir={work}", *FAST, *TEXT, "model.name=lm_d16_l1", "name=small-teacher"])
    )
    result = diagnose_checkpoints(
        [f"{small['run_dir']}/last.pt", f"{teacher['run_dir']}/last.pt"],
        [],
        [],
        split="val",
        out_dir=work / "diag",
        max_rows=500,
    )
    assert result.data["num_classes"] == 320 and [t.num_params for t in result.teachers] == sorted(
        t.num_params for t in result.teachers
    )
    big = result.teachers[-1]
    assert 0 <= big.top1 <= 1
    assert big.at(4.0, "nt_var") > 0 and -1 <= result.ranks.value("spearman", result.teachers[0].name, big.name) <= 1
    assert (work / "diag" / "report.html").is_file()


def test_a_student_distils_from_a_top_k_cache_of_the_teacher(lm_teacher, monkeypatch):
    work, teacher = lm_teacher
    monkeypatch.chdir(work)
    common = [f"output_dir={work}", *FAST, *TEXT, "model.name=lm_d16_l1", "method.name=kd"]
    source = f"teacher.checkpoint={teacher['run_dir']}/last.pt"
    with pytest.raises(UserError, match="does not exist"):
        train(load_config(overrides=[*common, source, "teacher.cache=none", "name=no-cache"]))
    # k = the whole vocabulary: the cache holds the teacher itself (fp16 values), so the student learns as from it live
    full = train(
        load_config(
            overrides=[*common, source, "teacher.cache=c320", "teacher.topk=320", "teacher.build=true", "name=c320"]
        )
    )
    live = train(load_config(overrides=[*common, source, "name=live"]))
    assert full["teacher"]["kind"] == "lm_cache" and "val/teacher_agreement" not in full["final"]
    assert full["final"]["val/nll"] == pytest.approx(live["final"]["val/nll"], abs=0.02)
    top16 = train(
        load_config(
            overrides=[*common, source, "teacher.cache=c16", "teacher.topk=16", "teacher.build=true", "name=c16"]
        )
    )
    assert json.loads((work / "c16" / "meta.json").read_text())["k"] == 16 and math.isfinite(top16["final"]["val/nll"])
    with pytest.raises(UserError, match="windows"):
        train(load_config(overrides=[*common, "teacher.cache=c16", "data.context=16", "name=other"]))


def test_each_evaluation_prints_a_greedy_sample_decoded_by_the_tokenizer(lm_teacher, capsys, monkeypatch):
    work, _ = lm_teacher
    monkeypatch.chdir(work)
    common = [f"output_dir={work}", *FAST, *TEXT, "model.name=lm_d16_l1", "optim.epochs=2"]
    train(load_config(overrides=[*common, "name=sampled", "engine.sample_tokens=5"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  sample (val): ")]
    assert len(lines) == 2  # one per evaluated epoch
    prompt, continuation = lines[0].removeprefix("  sample (val): ").split(" -> ")
    assert prompt.startswith("'") and continuation.startswith("'") and len(continuation) > 2
    train(load_config(overrides=[*common, "name=silent", "engine.sample_tokens=0"]))
    assert "sample (" not in capsys.readouterr().out
