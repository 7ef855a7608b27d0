"""Peak memory and time of a token-level distillation loss, chunked against unchunked.

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/lm_token_loss_memory.py \
        [--methods kd,reverse_kl,jsd,dist] [--batch 8 --context 512 --vocab 49152] [--chunks none,256,1024]

Each (method, chunking) runs in a fresh process: float32 student and teacher logits
``[batch, context, vocab]`` (5 % of the targets ignored) are allocated, the peak resident
set (Linux ``VmHWM``) is reset through ``/proc/self/clear_refs``, then one forward and
backward of :func:`darkknowledge.methods.tokens.token_terms` runs. Reported: the peak
resident memory above the inputs and the wall time. The ``floor`` row backpropagates
``student.sum()``: the ``[batch*context, vocab]`` gradient of the student logits that any
loss produces, plus the process's constant overhead. Prints the table of
docs/methods.md ("Language models").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

FLOOR = "floor"


def _status_mib() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out


def measure(method_name: str, batch: int, context: int, vocab: int, chunk: int | None, threads: int) -> dict:
    import torch

    from darkknowledge.methods import build_method
    from darkknowledge.methods.tokens import IGNORE_INDEX, token_terms

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)

    def loss(s, t, y):
        if method_name == FLOOR:  # the gradient of the logits and nothing else
            return {"sum": s.sum()}
        return token_terms(build_method(method_name, num_classes=vocab), s, t, y, chunk_tokens=chunk)

    warm = torch.randn(1, 4, vocab, generator=g).requires_grad_(True)  # lazy initialisation outside the measurement
    sum(loss(warm, warm.detach(), torch.zeros(1, 4, dtype=torch.long)).values()).backward()
    student = torch.randn(batch, context, vocab, generator=g).mul_(3).requires_grad_(True)
    teacher = torch.randn(batch, context, vocab, generator=g).mul_(3)
    targets = torch.randint(0, vocab, (batch, context), generator=g)
    targets[torch.rand(batch, context, generator=g) < 0.05] = IGNORE_INDEX
    base = _status_mib()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current resident set
    start = time.perf_counter()
    terms = loss(student, teacher, targets)
    sum(terms.values()).backward()
    seconds = time.perf_counter() - start
    peak = _status_mib()["VmHWM"]
    return {
        "method": method_name,
        "chunk": chunk,
        "extra_mib": peak - base,
        "seconds": seconds,
        "input_mib": 2 * student.numel() * 4 / 2**20,
        "grad_mib": student.numel() * 4 / 2**20,
        "loss": float(sum(v.detach() for v in terms.values())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="kd,reverse_kl,jsd,dist")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--chunks", default="none,256,1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        name, chunk = args.child.split(":")
        print(
            json.dumps(
                measure(
                    name, args.batch, args.context, args.vocab, None if chunk == "none" else int(chunk), args.threads
                )
            )
        )
        return
    rows = []
    for name in [FLOOR, *args.methods.split(",")]:
        for chunk in ["none"] if name == FLOOR else args.chunks.split(","):
            cmd = [sys.executable, __file__, "--child", f"{name}:{chunk}", "--batch", str(args.batch)]
            cmd += ["--context", str(args.context), "--vocab", str(args.vocab), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name} chunk {chunk}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not rows:
        return
    first = rows[0]
    print(
        f"\nlogits [{args.batch}, {args.context}, {args.vocab}] float32: inputs {first['input_mib']:.0f} MiB, "
        f"gradient of the student logits {first['grad_mib']:.0f} MiB\n"
    )
    floor = rows[0]["extra_mib"] if rows[0]["method"] == FLOOR else 0.0
    print("| method | chunk (tokens) | peak above inputs (MiB) | above the floor (MiB) | fwd+bwd (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        chunk = "unchunked" if r["chunk"] is None else str(r["chunk"])
        print(f"| {r['method']} | {chunk} | {r['extra_mib']:.0f} | {r['extra_mib'] - floor:.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
