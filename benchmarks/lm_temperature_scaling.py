"""Is a language-model student's loss its ranking or its scale? Test NLL of trained checkpoints with
their logits divided by T, for several T: a student whose NLL falls well below its own at T = 1 is
miscalibrated (its logits too large or too small), not wrong about which tokens are likely.

    .venv/bin/python benchmarks/lm_temperature_scaling.py runs/lm-capacity/runs/student-*-isats-*-s0-*/last.pt \
        runs/lm-capacity/runs/student-*-ce-s0-*/last.pt [--windows 256 --temperatures 0.5,1,2,3,4]

For each checkpoint: its data settings from the checkpoint, the first ``--windows`` test windows,
every predicted token; NLL in nats per token at each T, next-token top-1 (the same at every T), and
bits per byte at T = 1 and at the best T over these windows (the split's bytes per token).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from darkknowledge.data.splits import load_split
from darkknowledge.engine.checkpoint import load_model
from darkknowledge.engine.factory import checkpoint_data_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--temperatures", default="0.5,1,2,3,4")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    head = " | ".join(f"NLL at T = {t:g}" for t in temperatures)
    print(f"| checkpoint | tokens | top-1 (%) | {head} | bpb at T = 1 | best T | bpb at best T |")
    print("|---|---:|---:|" + "---:|" * len(temperatures) + "---:|---:|---:|")
    for path in args.checkpoints:
        model, ckpt = load_model(path, torch.device("cpu"))
        test = load_split(checkpoint_data_config(ckpt, [], "lm_temperature_scaling"), "test")
        tokens, mask = test.rows(torch.arange(min(args.windows, len(test))))
        with torch.no_grad():
            logits = model(tokens[:, :-1]).float()[mask]
        targets = tokens[:, 1:][mask]
        nll = {t: float(F.cross_entropy(logits / t, targets)) for t in temperatures}
        best = min(nll, key=lambda t: nll[t])
        top1 = float((logits.argmax(-1) == targets).float().mean()) * 100
        per_byte = 1 / (math.log(2) * test.array.bytes_per_token)
        cells = " | ".join(f"{nll[t]:.3f}" for t in temperatures)
        name = Path(path).parent.name
        print(
            f"| {name} | {len(targets)} | {top1:.1f} | {cells} | {nll.get(1.0, float('nan')) * per_byte:.3f} "
            f"| {best:g} | {nll[best] * per_byte:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
