"""Training throughput of our trainer (student alone, CE) per model and engine setting.

    flock /tmp/dk-heavy.lock .venv/bin/python benchmarks/train_speed.py --models resnet20 --steps 20 --repeats 5

Synthetic CIFAR-shaped data (32x32, 100 classes) through the real trainer (in-memory
uint8, batched crop/flip/normalise, SGD). Each setting is a precision, a memory format and
config overrides (``engine.compile=true``, ``engine.fused_optimizer=false``, ...). Every
setting gets a warm-up epoch (compilation happens there; its time is printed), then the
measured epochs run interleaved across settings (round r of every setting, then round r+1),
so that a change in the machine's load hits all settings alike. Prints images/s (median),
the achieved GFLOP/s as a share of the matmul peak of the setting's precision, and a
markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from darkknowledge.bench.peak import capability, matmul_peak, train_step_flops
from darkknowledge.bench.run import _trainer, synthetic_dataset
from darkknowledge.models import build_model

# name: (precision, channels_last, overrides)
SETTINGS: dict[str, tuple[str, bool, list[str]]] = {
    "fp32": ("fp32", False, []),
    "fp32+cl": ("fp32", True, []),
    "fp32+cl unfused": ("fp32", True, ["engine.fused_bn_relu=false"]),
    "fp32+cl+compile": ("fp32", True, ["engine.compile=true"]),
    "bf16": ("bf16", False, []),
    "bf16+compile": ("bf16", False, ["engine.compile=true"]),
    "bf16+cl": ("bf16", True, []),
    "bf16+cl unfused": ("bf16", True, ["engine.fused_bn_relu=false"]),
    "bf16+cl+compile": ("bf16", True, ["engine.compile=true"]),
    "bf16+cl foreach-SGD": ("bf16", True, ["engine.fused_optimizer=false"]),
    "bf16+cl check-every-step": ("bf16", True, ["engine.finite_check_every=1"]),
    "bf16+cl+compile check-every-step": ("bf16", True, ["engine.compile=true", "engine.finite_check_every=1"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="steps per measured epoch")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cap = capability("cpu")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cap['name']}, "
        f"capability {cap['torch_cpu_capability']}, flags {' '.join(cap['flags'])}",
        flush=True,
    )
    names = args.settings.split(",")
    peaks = {p: matmul_peak(p)["gflops"] for p in dict.fromkeys(SETTINGS[n][0] for n in names)}
    print("matmul peak: " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()), flush=True)
    ds = synthetic_dataset(args.steps * args.batch_size, 100, 32)
    rows = []
    for model in args.models.split(","):
        flops = train_step_flops(build_model(model, 100, 3), ds.images[: args.batch_size].float()) / args.batch_size
        trainers = {}
        for name in names:
            precision, cl, extra = SETTINGS[name]
            tr = _trainer(model, {"name": "ce"}, ds, args.batch_size, None, precision, cl, extra)
            t0 = time.perf_counter()
            tr.train_epoch(0)  # warm-up (compilation)
            print(f"  {model} {name}: warm-up epoch {time.perf_counter() - t0:.1f} s", flush=True)
            trainers[name] = tr
        rates: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeats):
            for name, tr in trainers.items():
                rates[name].append(tr.train_epoch(r + 1)["train_images_per_s"])
        for name in names:
            med = statistics.median(rates[name])
            frac = med * flops / 1e9 / peaks[SETTINGS[name][0]]
            print(f"  {model} {name}: {med:.1f} img/s ({100 * frac:.1f} % of peak)  {sorted(rates[name])}", flush=True)
            rows.append((model, name, med, frac))
        print(f"  {model}: {flops / 1e6:.1f} MFLOP per image per training step", flush=True)
    print()
    print("| model | setting | images/s | share of the matmul peak of its precision |")
    print("|---|---|---:|---:|")
    for model, name, med, frac in rows:
        print(f"| {model} | {name} | {med:.0f} | {100 * frac:.1f} % |")


if __name__ == "__main__":
    main()
