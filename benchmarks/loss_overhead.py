"""Section (c) of `darkknowledge bench` alone: each loss's extra cost over KD.

    .venv/bin/python benchmarks/loss_overhead.py [--methods kd,isats] [--steps 20 --repeats 5]

resnet8 student, batch 128, 100 classes, synthetic data; prints the table of
docs/performance.md.
"""

from __future__ import annotations

import argparse

from darkknowledge.bench.run import loss_overhead
from darkknowledge.engine.precision import resolve_precision
from darkknowledge.methods import METHODS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=None)
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    names = args.methods.split(",") if args.methods else [m for m in METHODS.names() if METHODS.get(m).needs_teacher]
    names = ["kd"] + [n for n in names if n != "kd"]
    out = loss_overhead(
        names,
        args.student,
        args.batch_size,
        args.steps,
        args.repeats,
        100,
        32,
        3,
        resolve_precision("auto", "cpu"),
        True,
    )
    print("\n| method | training step (ms) | loss fwd+bwd (ms) | extra time over KD, % of a KD step |")
    print("|---|---|---|---|")
    for name, v in out.items():
        print(f"| {name} | {1000 * v['step_s']:.1f} | {1000 * v['loss_s']:.3f} | {v['overhead_pct']:+.2f} % |")


if __name__ == "__main__":
    main()
