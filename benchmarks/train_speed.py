"""Training throughput of our trainer (student alone, CE) per model and precision.

    .venv/bin/python benchmarks/train_speed.py --models resnet8,resnet56 --batch-size 64

Synthetic CIFAR-shaped data (32x32, 100 classes) through the real trainer (in-memory
uint8, batched crop/flip/normalise, SGD): images/s, median over repeats, for
fp32 (contiguous), fp32 + channels_last and bf16 autocast + channels_last. Prints a
markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from darkknowledge.bench.run import _trainer, synthetic_dataset
from darkknowledge.engine.precision import bf16_is_fast

CONFIGS = [("fp32", False), ("fp32", True), ("bf16", True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet8,resnet56")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="steps per measured epoch")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {bf16_is_fast('cpu')}"
    )
    ds = synthetic_dataset(args.steps * args.batch_size, 100, 32)
    rows = []
    for model in args.models.split(","):
        rates = {}
        for precision, cl in CONFIGS:
            tr = _trainer(model, {"name": "ce"}, ds, args.batch_size, None, precision, cl)
            tr.train_epoch(0)  # warm-up
            rates[(precision, cl)] = statistics.median(
                tr.train_epoch(e + 1)["train_images_per_s"] for e in range(args.repeats)
            )
            print(f"  {model} {precision} channels_last={cl}: {rates[(precision, cl)]:.1f} img/s", flush=True)
        rows.append((model, rates))
    print()
    print("| model | fp32 | fp32 + channels_last | bf16 + channels_last |")
    print("|---|---|---|---|")
    for model, r in rows:
        print(f"| {model} | " + " | ".join(f"{r[c]:.0f}" for c in CONFIGS) + " |")


if __name__ == "__main__":
    main()
