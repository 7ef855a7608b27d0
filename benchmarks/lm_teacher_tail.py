"""What a top-k cache keeps of trained language-model teachers: mean tail mass and KL of the
truncation, per k, on the teachers' own validation windows.

    .venv/bin/python benchmarks/lm_teacher_tail.py runs/lm-capacity/runs/teacher-lm_d64_l2-*/best.pt \
        runs/lm-capacity/runs/teacher-lm_d96_l3-*/best.pt [--windows 32 --rows 2048 --ks 64,256]

For each checkpoint: its data settings (corpus, tokenizer, context) from the checkpoint, the
first ``--windows`` validation windows, the first ``--rows`` predicted tokens; per k, the mean of
1 - sum of the top-k probabilities and of KL(p || p_k) with the tail spread uniformly
(:func:`darkknowledge.engine.lm_cache.truncation_kl`), nats per token.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from darkknowledge.data.splits import load_split
from darkknowledge.engine.checkpoint import load_model
from darkknowledge.engine.factory import checkpoint_data_config
from darkknowledge.engine.lm_cache import truncation_kl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--ks", default="64,256")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    print("| teacher | k | mean tail mass | KL(p ‖ p_k), uniform tail (nats/token) |")
    print("|---|---:|---:|---:|")
    for path in args.checkpoints:
        model, ckpt = load_model(path, torch.device("cpu"))
        val = load_split(checkpoint_data_config(ckpt, [], "lm_teacher_tail"), "val")
        tokens, mask = val.rows(torch.arange(min(args.windows, len(val))))
        with torch.no_grad():
            logits = model(tokens[:, :-1]).float()
        z = logits[mask][: args.rows]
        log_p = z.log_softmax(-1)
        for k in ks:
            tail = float((1 - log_p.topk(k, dim=-1).values.exp().sum(-1)).mean())
            kl = float(truncation_kl(z, k).mean())
            print(f"| {ckpt['model_name']} ({Path(path).parent.name}) | {k} | {tail:.4f} | {kl:.4f} |", flush=True)


if __name__ == "__main__":
    main()
