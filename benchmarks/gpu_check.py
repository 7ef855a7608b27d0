"""The Python half of benchmarks/gpu_check.sh: the bench on a device, the language-model and
full-resolution workloads, and a short capacity check.

    python benchmarks/gpu_check.py bench --device cuda --out OUT/bench
    python benchmarks/gpu_check.py workloads --device cuda --out OUT/workloads
    python benchmarks/gpu_check.py capacity --device cuda --root /tmp/dk-cifar10 --out OUT/capacity --budget-s 300

``workloads`` runs each new workload once, end to end, on the device: a causal LM teacher
trained on the interpreter's standard-library sources (BPE), and a student distilled from
its top-k cache (built on the device); a teacher trained on streamed full-resolution JPEGs
(written by the script: smooth random images in class folders, so nothing is downloaded) and
a student distilled from its view-keyed cache. It writes ``runs.jsonl`` and ``workloads.md``
(metrics, tokens or images per second, wall time, GPU memory).

``capacity`` trains teachers of several sizes with CE, then the student alone (CE) and the
student distilled with each method and seed, largest teacher first, and writes one JSON line
per finished run (``runs.jsonl``, appended as it goes, so a kill keeps what finished) and a
markdown table (``capacity.md``). A run starts only when the time left (``--budget-s`` from
the start) covers the time of the last run of its kind; the rest is listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def _bench(args: argparse.Namespace) -> None:
    from darkknowledge.bench.run import format_report, run_bench, save_result

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_bench(
        teacher=args.teacher,
        student=args.student,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        image_size=args.image_size,
        steps=args.steps,
        repeats=args.repeats,
        loss_student=args.student,
        loss_batch_size=args.batch_size,
        loss_steps=max(2, args.steps // 2),
        methods=args.methods.split(","),
        workers=args.workers,
        device=args.device,
        extra=args.set,
        peak_seconds=args.peak_seconds,
    )
    save_result(result, out / "bench.json")
    (out / "bench.md").write_text(format_report(result) + "\n")
    print(format_report(result), flush=True)


def _common(args: argparse.Namespace, out: Path) -> list[str]:
    common = [
        f"data.name={args.dataset}",
        f"data.batch_size={args.batch_size}",
        f"engine.device={args.device}",
        "engine.progress=false",
        "optim.schedule=cosine",
        f"optim.lr={args.lr}",
        "optim.warmup_epochs=1",
        "optim.nesterov=true",
        f"output_dir={out / 'runs'}",
    ]
    if args.root:
        common.append(f"data.root={args.root}")
    if args.per_class:
        common += [f"data.train_per_class={args.per_class}", f"data.test_per_class={max(1, args.per_class // 5)}"]
    return common + list(args.set)


class Budget:
    """Time left of ``seconds`` from creation; the wall time of the last run of each kind."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.last: dict[str, float] = {}

    def allows(self, kind: str) -> bool:
        return self.end - time.monotonic() > self.last.get(kind, 0.0) * 1.1

    def left(self) -> float:
        return self.end - time.monotonic()


def _fit(overrides: list[str]) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """One run: its config, its summary, and its wall time (and peak GPU memory on CUDA)."""
    from darkknowledge.config import load_config
    from darkknowledge.engine.trainer import build_trainer

    cfg = load_config(overrides=overrides)
    if cfg.engine.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = build_trainer(cfg).fit()
    cost = {"wall_s": time.perf_counter() - t0}
    if cfg.engine.device.startswith("cuda"):
        cost["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return cfg, summary, cost


def _train(overrides: list[str]) -> dict[str, Any]:
    cfg, summary, cost = _fit(overrides)
    out = {
        "test_top1": summary["final"].get("test/top1"),
        "wall_s": cost["wall_s"],
        "epochs": cfg.optim.epochs,
        "run_dir": summary["run_dir"],
    }
    if "gpu_peak_mib" in cost:
        out["gpu_peak_mib"] = cost["gpu_peak_mib"]
    return out


def _write_images(root: Path, classes: int, per_class: int, size: tuple[int, int]) -> None:
    """Class folders of smooth random JPEGs (``train/`` and ``val/``): a full-resolution layout."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(2, per_class // 4))):
        for c in range(classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                coarse[..., c % 3] = 40 + 20 * c  # a class colour the models can learn
                image = Image.fromarray(coarse).resize(size, Image.BILINEAR)
                image.save(folder / f"{i:04d}.jpg", quality=90)


def _workloads(args: argparse.Namespace) -> None:
    import os

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # token caches and tokenizers go under out/data/
    smoke = args.smoke
    device = [f"engine.device={args.device}", f"output_dir={out / 'runs'}", "engine.progress=false", *args.set]
    rows: list[dict[str, Any]] = []

    def run(name: str, overrides: list[str], unit: str, units: int) -> dict[str, Any]:
        cfg, summary, cost = _fit([*device, *overrides, f"name={name}"])
        wall = cost["wall_s"]
        final = summary["final"]
        row = {
            "name": name,
            "metric": "test bpb" if "test/bpb" in final else "test top-1 (%)",
            "value": final.get("test/bpb", final.get("test/top1")),
            "rate": f"{units * cfg.optim.epochs / wall:.0f} {unit}/s (whole run)",
            "run_dir": summary["run_dir"],
            **cost,
        }
        rows.append(row)
        with (out / "runs.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name}: {row['metric']} {row['value']:.3f} in {wall:.0f} s", flush=True)
        return row

    text = [
        "data.name=stdlib",
        f"data.max_bytes={1_000_000 if smoke else 4_000_000}",
        f"data.vocab_size={512 if smoke else 4096}",
        f"data.context={32 if smoke else 256}",
        "data.batch_size=64",
        "optim.optimizer=adamw",
        "optim.lr=0.003",
        "optim.schedule=cosine",
        "optim.grad_clip=1.0",
        "optim.epochs=1",
    ]
    from darkknowledge.config import load_config
    from darkknowledge.data.splits import load_splits

    tokens = load_splits(load_config(overrides=text).data).train.predicted_tokens
    teacher = run("lm-teacher", [*text, f"model.name={'lm_d32_l1' if smoke else 'lm_d256_l4'}"], "tokens", tokens)
    run(
        "lm-student-kd-cached",
        [
            *text,
            f"model.name={'lm_d16_l1' if smoke else 'lm_d64_l2'}",
            "method.name=kd",
            f"teacher.checkpoint={teacher['run_dir']}/best.pt",
            f"teacher.cache={out / 'lm-cache'}",
            "teacher.build=true",
            "teacher.topk=32",
        ],
        "tokens",
        tokens,
    )

    images = out / "images"
    classes, per_class = (4, 8) if smoke else (10, 64)
    _write_images(images, classes, per_class, (96, 80) if smoke else (320, 256))
    full = [
        "data.stream=true",
        "data.name=imagefolder",
        f"data.root={images}",
        f"data.crop_size={32 if smoke else 160}",
        f"data.workers={0 if smoke else 4}",
        f"data.batch_size={8 if smoke else 64}",
        "optim.epochs=1",
        "optim.lr=0.05",
    ]
    if smoke:
        full += ["engine.precision=fp32", "engine.channels_last=false"]
    n_images = classes * per_class
    teacher = run("image-teacher", [*full, f"model.name={'cnn_w8' if smoke else 'resnet20'}"], "images", n_images)
    run(
        "image-student-kd-view-cache",
        [
            *full,
            f"model.name={'cnn_w4' if smoke else 'resnet8'}",
            "method.name=kd",
            f"teacher.checkpoint={teacher['run_dir']}/last.pt",
            f"teacher.cache={out / 'view-cache'}",
            "teacher.build=true",
        ],
        "images",
        n_images,
    )
    table = [
        f"device {args.device}; language models on the standard library's sources (BPE), full-resolution "
        "images streamed from JPEG class folders the script wrote (smooth random images: the numbers say "
        "that the path runs, not how well it learns)",
        "",
        "| run | metric | value | rate | wall (s) | GPU peak (MiB) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        peak = f"{r['gpu_peak_mib']:.0f}" if "gpu_peak_mib" in r else "-"
        table.append(f"| {r['name']} | {r['metric']} | {r['value']:.3f} | {r['rate']} | {r['wall_s']:.0f} | {peak} |")
    (out / "workloads.md").write_text("\n".join(table) + "\n")
    print("\n".join(table), flush=True)


def _capacity(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    common = _common(args, out)
    lines = out / "runs.jsonl"
    rows: list[dict[str, Any]] = []

    def run(kind: str, name: str, overrides: list[str], meta: dict[str, Any]) -> dict[str, Any] | None:
        if not budget.allows(kind):
            rows.append({**meta, "name": name, "skipped": f"time ({budget.left():.0f} s left)"})
            print(f"skip {name}: {budget.left():.0f} s left", flush=True)
            return None
        res = _train(common + overrides + [f"name={name}"])
        budget.last[kind] = res["wall_s"]
        row = {**meta, "name": name, **res}
        rows.append(row)
        with lines.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name}: test top-1 {res['test_top1']:.2f} % in {res['wall_s']:.0f} s", flush=True)
        return row

    teachers: dict[str, str] = {}
    for model in args.teachers.split(","):
        r = run(
            "teacher",
            f"teacher-{model}",
            [f"model.name={model}", f"optim.epochs={args.teacher_epochs}"],
            {"role": "teacher", "model": model, "method": "ce", "seed": 0},
        )
        if r is not None:
            teachers[model] = str(Path(r["run_dir"]) / "last.pt")
    order = list(reversed(list(teachers)))  # largest (last given) first
    if args.student_teachers == "largest":
        order = order[:1]
    student = [f"model.name={args.student}", f"optim.epochs={args.student_epochs}"]
    for seed in args.seeds:
        run(
            "student",
            f"student-ce-s{seed}",
            [*student, f"seed={seed}"],
            {"role": "student", "model": args.student, "method": "ce", "seed": seed, "teacher": None},
        )
    for teacher in order:
        for method in args.methods.split(","):
            for seed in args.seeds:
                run(
                    "student",
                    f"student-{method}-from-{teacher}-s{seed}",
                    [*student, f"seed={seed}", f"method.name={method}", f"teacher.checkpoint={teachers[teacher]}"],
                    {"role": "student", "model": args.student, "method": method, "seed": seed, "teacher": teacher},
                )
    table = [
        f"{args.dataset}, device {args.device}, batch {args.batch_size}, teachers {args.teacher_epochs} epochs, "
        f"students {args.student_epochs} epochs, cosine lr {args.lr}; overrides {' '.join(args.set) or 'none'}",
        "",
        "| run | role | model | method | teacher | seed | test top-1 (%) | wall (s) |",
        "|---|---|---|---|---|---|---:|---:|",
    ]
    for r in rows:
        acc = f"{r['test_top1']:.2f}" if "test_top1" in r else r["skipped"]
        wall = f"{r['wall_s']:.0f}" if "wall_s" in r else "-"
        table.append(
            f"| {r['name']} | {r['role']} | {r['model']} | {r['method']} | {r.get('teacher') or '-'} | {r['seed']} "
            f"| {acc} | {wall} |"
        )
    done = [r for r in rows if r["role"] == "teacher" and "test_top1" in r]
    reached = sum(r["test_top1"] >= args.target for r in done)
    table += ["", f"teachers at >= {args.target:.0f} % test top-1: {reached} of {len(args.teachers.split(','))}"]
    (out / "capacity.md").write_text("\n".join(table) + "\n")
    print("\n".join(table), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--device", default="cuda")
    b.add_argument("--out", required=True)
    b.add_argument("--teacher", default="resnet56")
    b.add_argument("--student", default="resnet20")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--num-classes", type=int, default=100)
    b.add_argument("--image-size", type=int, default=32)
    b.add_argument("--steps", type=int, default=40)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--methods", default="kd,isats,dist,ttm")
    b.add_argument("--workers", type=int, default=4)
    b.add_argument("--peak-seconds", type=float, default=1.0)
    b.add_argument("--set", nargs="*", default=[], help="config overrides of our loops")
    w = sub.add_parser("workloads")
    w.add_argument("--device", default="cuda")
    w.add_argument("--out", required=True)
    w.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, seconds)")
    w.add_argument("--set", nargs="*", default=[], help="config overrides of every run")
    c = sub.add_parser("capacity")
    c.add_argument("--device", default="cuda")
    c.add_argument("--out", required=True)
    c.add_argument("--dataset", default="cifar10")
    c.add_argument("--root", default=None)
    c.add_argument("--per-class", type=int, default=None, help="training images per class (default: all)")
    c.add_argument("--teachers", default="resnet20,resnet32,resnet56", help="smallest to largest")
    c.add_argument("--teacher-epochs", type=int, default=30)
    c.add_argument("--student", default="resnet8")
    c.add_argument("--student-epochs", type=int, default=15)
    c.add_argument("--student-teachers", choices=["all", "largest"], default="all")
    c.add_argument("--methods", default="kd,isats,dist,ttm")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--lr", type=float, default=0.2)
    c.add_argument("--target", type=float, default=90.0, help="teacher test top-1 the check aims at (%%)")
    c.add_argument("--budget-s", type=float, default=300.0)
    c.add_argument("--set", nargs="*", default=[], help="config overrides of every run")
    args = ap.parse_args()
    {"bench": _bench, "workloads": _workloads, "capacity": _capacity}[args.command](args)


if __name__ == "__main__":
    main()
