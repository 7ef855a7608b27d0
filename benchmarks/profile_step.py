"""Where a training step's time goes: torch profiler per-op table of our trainer's steps.

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/profile_step.py --model resnet20 --precision bf16

Synthetic CIFAR-shaped data (32x32, 100 classes), the student alone with CE (the step the
bench's student-only loop times), one warm-up epoch, then one profiled epoch of ``--steps``
steps. Prints the ops by self CPU time (a markdown table for docs/performance.md) and the
share of the step spent in convolutions (forward and backward) and in the optimiser.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from darkknowledge.bench.run import _trainer, synthetic_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--method", default="ce")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. engine.compile=true")
    args = ap.parse_args()
    ds = synthetic_dataset(args.steps * args.batch_size, 100, 32)
    tr = _trainer(args.model, {"name": args.method}, ds, args.batch_size, None, args.precision, True, args.overrides)
    tr.train_epoch(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rec = tr.train_epoch(1)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(
        f"{args.model}, {args.precision}, batch {args.batch_size}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads: {rec['train_images_per_s']:.1f} img/s under the profiler"
    )
    print()
    print("| op | calls | self CPU (ms per step) | share |")
    print("|---|---:|---:|---:|")
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.rows]
    for e in rows:
        ms = e.self_cpu_time_total / 1000 / args.steps
        print(f"| `{e.key}` | {e.count // args.steps} | {ms:.2f} | {100 * e.self_cpu_time_total / total:.1f} % |")
    groups = {
        "convolution (forward + backward)": ("conv", "mkldnn_convolution"),
        "batch norm": ("batch_norm",),
        "optimiser": ("Optimizer.step", "_foreach", "_fused_sgd", "sgd"),
    }
    print()
    for name, keys in groups.items():
        t = sum(e.self_cpu_time_total for e in events if any(k in e.key.lower() for k in keys))
        print(f"{name}: {100 * t / total:.1f} % of self CPU time")


if __name__ == "__main__":
    main()
