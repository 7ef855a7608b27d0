"""Sweep overhead: wall time of a 2-teacher x 2-method x 2-seed digits sweep, cold and
resumed, per executor; per-stage overhead (everything but the training epochs).

    .venv/bin/python benchmarks/sweep_overhead.py [--epochs 10] [--out runs/bench-sweep]

Run it on a quiet machine (no other training). Prints a Markdown table and writes
``<out>/sweep_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from darkknowledge.experiments import open_sweep
from darkknowledge.experiments.spec import parse_spec
from darkknowledge.experiments.stage import Stage


def spec(epochs: int):
    return parse_spec(
        {
            "base": {
                "data": {"name": "digits", "batch_size": 64},
                "optim": {"epochs": epochs, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 1},
                "engine": {"precision": "fp32", "channels_last": False},
            },
            "teachers": [{"model": "mlp_h64"}, {"model": "mlp_h256"}],
            "student": {"model": "mlp_h16"},
            "methods": [{"name": "kd", "temperature": 4.0}, {"name": "dkd"}],
            "seeds": [0, 1],
            "diagnose": False,
        },
        "benchmark",
    )


def measure(out: Path, epochs: int, executor: str, jobs: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    sweep = open_sweep(spec(epochs), out, executor=executor, jobs=jobs, log=lambda *_: None)
    t0 = time.perf_counter()
    counts = sweep.run()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweep.run()
    resumed = time.perf_counter() - t0
    stages = [s for s in sweep.stages() if isinstance(s, Stage)]
    train_s = sum(
        sum(json.loads(line)["train_time_s"] for line in (s.dir / "metrics.jsonl").read_text().splitlines())
        for s in stages
    )
    job_s = sum(s.result()["job_wall_s"] for s in stages)
    return {
        "executor": executor,
        "jobs": jobs,
        "stages": len(stages),
        "counts": counts,
        "cold_s": cold,
        "resumed_s": resumed,
        "training_epochs_s": train_s,
        "job_wall_s": job_s,
        "overhead_per_stage_s": (cold * jobs - train_s) / len(stages),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default="runs/bench-sweep")
    args = ap.parse_args()
    out = Path(args.out)
    rows = [measure(out / "inline", args.epochs, "inline", 1), measure(out / "local2", args.epochs, "local", 2)]
    machine = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(f"CPU capability: {machine['cpu_capability']}, torch {machine['torch']}, {args.epochs} epochs per stage")
    print("| executor | stages | cold sweep (s) | resumed (s) | training epochs (s, summed) | overhead per stage (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['executor']} --jobs {r['jobs']} | {r['stages']} | {r['cold_s']:.1f} | {r['resumed_s']:.2f} | "
            f"{r['training_epochs_s']:.1f} | {r['overhead_per_stage_s']:.2f} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_overhead.json").write_text(
        json.dumps({"machine": machine, "epochs": args.epochs, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
