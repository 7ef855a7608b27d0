"""Peak memory of a token-level distillation loss, each measurement in a fresh process.

A child process allocates float32 student and teacher logits ``[batch, context, vocab]``
(5 % of the targets ignored), resets its peak resident set (Linux ``VmHWM``, through
``/proc/self/clear_refs``) and runs one forward and backward of one loss:

* ``floor``: ``student.sum()``, the ``[batch*context, vocab]`` gradient every loss returns;
* ``reference``: the usual script's loss — CE plus KL of the full-vocabulary softmaxes of
  every position at once (``F.kl_div(log_softmax(s), softmax(t))``), plain autograd;
* a method name: :func:`darkknowledge.methods.tokens.token_terms` with ``chunk`` tokens per
  group (``None``: unchunked).

Reported: the peak resident memory above the inputs, in MiB, and the wall time. Large
allocations are forced onto ``mmap`` in the child (``MALLOC_MMAP_THRESHOLD_``) so freed
memory leaves the resident set and the peak counts what is alive at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from darkknowledge.bench import rss

FLOOR = "floor"
REFERENCE = "reference"


def measure(loss_name: str, batch: int, context: int, vocab: int, chunk: int | None, threads: int) -> dict[str, Any]:
    """One measurement in this process (call it in a fresh one: :func:`measure_in_child`)."""
    import torch
    import torch.nn.functional as F

    from darkknowledge.methods import build_method
    from darkknowledge.methods.tokens import IGNORE_INDEX, token_terms

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)

    def loss(s, t, y):
        if loss_name == FLOOR:
            return {"sum": s.sum()}
        if loss_name == REFERENCE:
            mask = (y != IGNORE_INDEX).reshape(-1)
            flat_s, flat_t = s.reshape(-1, vocab)[mask], t.reshape(-1, vocab)[mask]
            kd = F.kl_div(F.log_softmax(flat_s, -1), F.softmax(flat_t, -1), reduction="batchmean")
            return {"ce": F.cross_entropy(s.reshape(-1, vocab), y.reshape(-1), ignore_index=IGNORE_INDEX), "kd": kd}
        return token_terms(build_method(loss_name, num_classes=vocab), s, t, y, chunk_tokens=chunk)

    warm = torch.randn(1, 4, vocab, generator=g).requires_grad_(True)  # lazy initialisation outside the measurement
    sum(loss(warm, warm.detach(), torch.zeros(1, 4, dtype=torch.long)).values()).backward()
    student = torch.randn(batch, context, vocab, generator=g).mul_(3).requires_grad_(True)
    teacher = torch.randn(batch, context, vocab, generator=g).mul_(3)
    targets = torch.randint(0, vocab, (batch, context), generator=g)
    targets[torch.rand(batch, context, generator=g) < 0.05] = IGNORE_INDEX
    base = rss.current_mib()
    if base is None or not rss.reset_peak():
        raise RuntimeError("the peak resident set cannot be reset here (needs Linux /proc/self/clear_refs)")
    start = time.perf_counter()
    terms = loss(student, teacher, targets)
    sum(terms.values()).backward()
    seconds = time.perf_counter() - start
    peak = rss.peak_mib()
    return {
        "loss": loss_name,
        "chunk": chunk,
        "extra_mib": peak - base,
        "seconds": seconds,
        "input_mib": 2 * student.numel() * 4 / 2**20,
        "grad_mib": student.numel() * 4 / 2**20,
        "value": float(sum(v.detach() for v in terms.values())),
    }


def measure_in_child(
    loss_name: str, batch: int, context: int, vocab: int, chunk: int | None = None, threads: int = 1
) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process; raises RuntimeError with its stderr if it fails."""
    cmd = [sys.executable, "-m", "darkknowledge.bench.loss_memory", loss_name]
    cmd += ["--batch", str(batch), "--context", str(context), "--vocab", str(vocab), "--threads", str(threads)]
    cmd += ["--chunk", "none" if chunk is None else str(chunk)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"loss memory of {loss_name} (chunk {chunk}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("loss", help=f"{FLOOR}, {REFERENCE} or a method name")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--chunk", default="none")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    chunk = None if a.chunk == "none" else int(a.chunk)
    print(json.dumps(measure(a.loss, a.batch, a.context, a.vocab, chunk, a.threads)))


if __name__ == "__main__":
    main()
