"""Extra cost of the teacher-side remedies (RegT, AID, ESKD, SCKD) against plain KD on the
same teacher/student pair, on digits (CPU, fp32, one thread by default).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/remedy_overhead.py [--teacher resnet20 --student resnet8]
        [--batch-size 64 --repeats 7 --threads 1]

A teacher and a student are first trained for one epoch with CE (untimed; AID needs both
checkpoints). Every configuration is a real ``Trainer`` (live teacher, the trainer's own
step: teacher forward, student forward, loss, backward, optimiser step); each round runs
one training epoch of every configuration in turn (interleaved, so drift on a shared
machine hits all alike) and the table gives the median time per step over the rounds and
the ratio to the KD step. AID and RegT train the *teacher* architecture, so they are also
compared with a CE step of the teacher. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from darkknowledge.config import load_config
from darkknowledge.engine.trainer import build_trainer, train

FAST = ["engine.precision=fp32", "engine.channels_last=false", "engine.progress=false"]


def _cfg(out: Path, *overrides: str):
    return load_config(overrides=[f"output_dir={out}", *FAST, "data.name=digits", *overrides])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="dk-remedy-bench-"))
    bs = f"data.batch_size={args.batch_size}"
    t_ckpt = (
        Path(
            train(_cfg(out, f"model.name={args.teacher}", "method.name=ce", "optim.epochs=1", bs, "name=t"))["run_dir"]
        )
        / "last.pt"
    )
    s_ckpt = (
        Path(
            train(_cfg(out, f"model.name={args.student}", "method.name=ce", "optim.epochs=1", bs, "name=s"))["run_dir"]
        )
        / "last.pt"
    )

    pair = [f"model.name={args.student}", f"teacher.checkpoint={t_ckpt}"]
    configs = {
        "kd (baseline)": [*pair, "method.name=kd"],
        "eskd, before stop_epoch": [*pair, "method.name=eskd", "method.stop_epoch=1000"],
        "eskd, after stop_epoch": [*pair, "method.name=eskd", "method.stop_epoch=0"],
        "sckd, gate_scope=model": [*pair, "method.name=sckd", "method.gate_scope=model"],
        "sckd, gate_scope=last_layer": [*pair, "method.name=sckd", "method.gate_scope=last_layer"],
        "sckd, gate_scope=logits": [*pair, "method.name=sckd", "method.gate_scope=logits"],
        "ce on the teacher": [f"model.name={args.teacher}", "method.name=ce"],
        "regt on the teacher": [f"model.name={args.teacher}", "method.name=regt", "method.confidence_weight=0.1"],
        "aid (teacher adapted to student)": [
            f"model.name={args.teacher}",
            f"model.init={t_ckpt}",
            f"teacher.checkpoint={s_ckpt}",
            "method.name=aid",
        ],
    }
    trainers = {}
    for i, (name, overrides) in enumerate(configs.items()):
        tr = build_trainer(_cfg(out, *overrides, bs, "optim.epochs=1000", "optim.schedule=constant", f"name=b{i}"))
        tr._setup_method()  # what fit() does before training (SCKD's gate parameters)
        tr.train_epoch(0)  # warm-up
        trainers[name] = tr
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for r in range(args.repeats):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            tr.train_epoch(r + 1)
            times[name].append((time.perf_counter() - t0) / len(tr.loader))
    med = {name: statistics.median(v) for name, v in times.items()}
    steps = len(trainers["kd (baseline)"].loader)
    print(
        f"\nteacher {args.teacher}, student {args.student}, digits, batch {args.batch_size} ({steps} steps/epoch), "
        f"fp32, {args.threads} thread(s), median of {args.repeats} epochs"
    )
    print("\n| configuration | ms / step | vs KD step | vs CE step of the teacher |")
    print("|---|---|---|---|")
    for name, value in med.items():
        vs_teacher = f"{value / med['ce on the teacher']:.2f}x" if "teacher" in name else ""
        print(f"| {name} | {1000 * value:.1f} | {value / med['kd (baseline)']:.2f}x | {vs_teacher} |")


if __name__ == "__main__":
    main()
