"""Peak memory and time of a token-level distillation loss, chunked against unchunked and
against the usual script's loss (``reference``: full-vocabulary softmax and KL at once).

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/lm_token_loss_memory.py \
        [--methods reference,kd,reverse_kl,jsd,dist] [--batch 8 --context 512 --vocab 49152] [--chunks none,128,256]

Each (loss, chunking) runs in a fresh process (:mod:`darkknowledge.bench.loss_memory`, which
says what is measured). The ``floor`` row backpropagates ``student.sum()``: the
``[batch*context, vocab]`` gradient of the student logits that any loss produces, plus the
process's constant overhead. Prints the table of docs/methods.md ("Language models").
"""

from __future__ import annotations

import argparse
import json
import sys

from darkknowledge.bench.loss_memory import FLOOR, REFERENCE, measure_in_child


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="reference,kd,reverse_kl,jsd,dist")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--chunks", default="none,128,256")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for name in [FLOOR, *args.methods.split(",")]:
        chunks = ["none"] if name in (FLOOR, REFERENCE) else args.chunks.split(",")
        for chunk in chunks:
            try:
                row = measure_in_child(
                    name, args.batch, args.context, args.vocab, None if chunk == "none" else int(chunk), args.threads
                )
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                continue
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not rows:
        return
    first = rows[0]
    print(
        f"\nlogits [{args.batch}, {args.context}, {args.vocab}] float32: inputs {first['input_mib']:.0f} MiB, "
        f"gradient of the student logits {first['grad_mib']:.0f} MiB\n"
    )
    floor = rows[0]["extra_mib"] if rows[0]["loss"] == FLOOR else 0.0
    print("| loss | chunk (tokens) | peak above inputs (MiB) | above the floor (MiB) | fwd+bwd (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        chunk = "–" if r["loss"] in (FLOOR, REFERENCE) else "unchunked" if r["chunk"] is None else str(r["chunk"])
        print(f"| {r['loss']} | {chunk} | {r['extra_mib']:.0f} | {r['extra_mib'] - floor:.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
