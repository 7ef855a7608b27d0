"""``darkknowledge demo``: the whole pipeline offline, on scikit-learn's digits, in minutes.

1. trains a teacher ladder of growing capacity with cross-entropy;
2. distils the same small student from each teacher with every demo method
   (KD, and the others registered in ``DEMO_METHODS`` when available);
3. trains the student alone with cross-entropy (the baseline);
4. prints and writes a table: teacher params, teacher accuracy, student accuracy per
   teacher and method (mean ± std over seeds), plus the runs, under ``runs/demo/``.

The digits task is tiny (1,438 training images of 8x8 pixels), so the numbers show
that the pipeline works end to end; they are not evidence about capacity mismatch.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from darkknowledge.config import deep_merge, load_config
from darkknowledge.fileio import atomic_write_json, atomic_write_text
from darkknowledge.engine.assembly import load_datasets
from darkknowledge.engine.trainer import Trainer
from darkknowledge.errors import UserError

TEACHERS = ["mlp_h64", "mlp_h256", "mlp_h1024"]
STUDENT = "mlp_h16"
SEEDS = [0, 1, 2]
DEMO_METHODS: dict[str, dict[str, Any]] = {
    "kd": {"name": "kd", "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
    "isats": {"name": "isats"},
}
EPOCHS = 30


def _base(out: Path, epochs: int) -> dict[str, Any]:
    return {
        "output_dir": str(out),
        "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 512},
        "optim": {"epochs": epochs, "lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4, "warmup_epochs": 1},
        "engine": {"progress": False, "precision": "fp32", "channels_last": False},
    }


def run_demo(out_dir: str = "runs/demo", epochs: int | None = None, overwrite: bool = False, log=print) -> dict[str, Any]:
    from darkknowledge.methods import METHODS

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"demo directory {out} is not empty; pass --overwrite or --out ANOTHER_DIR")
        shutil.rmtree(out)
    epochs = epochs or EPOCHS
    methods = {k: v for k, v in DEMO_METHODS.items() if v["name"] in METHODS}
    base = _base(out, epochs)
    t0 = time.perf_counter()
    probe = load_config(base=base)
    train_set, test_set = load_datasets(probe)
    log(f"darkknowledge demo: digits ({len(train_set)} train / {len(test_set)} test, 8x8), "
        f"{len(TEACHERS)} teachers, student {STUDENT}, methods {', '.join(methods)}, seeds {SEEDS}, {epochs} epochs")

    def run(name: str, extra: dict[str, Any]) -> dict[str, Any]:
        cfg = load_config(base=deep_merge(base, {**extra, "name": name}))
        summary = Trainer(cfg, train_set=train_set, test_set=test_set).fit()
        acc = summary["final"]["test/top1"]
        log(f"  {name:34s} {summary['num_params']:>9,d} params  top-1 {acc:6.2f}%  ({summary['wall_time_s']:.1f}s)")
        return summary

    teachers = []
    for t in TEACHERS:
        s = run(f"teacher-{t}", {"model": {"name": t}, "method": {"name": "ce"}, "seed": 0})
        teachers.append({"model": t, "params": s["num_params"], "top1": s["final"]["test/top1"],
                         "checkpoint": str(Path(s["run_dir"]) / "last.pt")})

    baseline = [run(f"student-{STUDENT}-ce-s{seed}", {"model": {"name": STUDENT}, "method": {"name": "ce"}, "seed": seed})
                for seed in SEEDS]
    base_accs = [s["final"]["test/top1"] for s in baseline]

    rows = []
    for t in teachers:
        row = {"teacher": t["model"], "teacher_params": t["params"], "teacher_top1": t["top1"]}
        for mname, mcfg in methods.items():
            accs = []
            for seed in SEEDS:
                s = run(f"student-{STUDENT}-{mname}-from-{t['model']}-s{seed}",
                        {"model": {"name": STUDENT}, "method": mcfg, "seed": seed, "teacher": {"checkpoint": t["checkpoint"]}})
                accs.append(s["final"]["test/top1"])
            row[mname] = accs
        rows.append(row)

    log("\ndiagnostics of the teacher ladder (training split) with the CE student ...")
    from darkknowledge.experiments.diagnose import diagnose_checkpoints
    from darkknowledge.diagnostics import DiagnoseOptions

    diag = diagnose_checkpoints([t["checkpoint"] for t in teachers],
                                [str(Path(baseline[0]["run_dir"]) / "last.pt")], [], split="train",
                                out_dir=out / "diagnostics", options=DiagnoseOptions(temperatures=(1.0, 2.0, 4.0, 8.0)))
    for card in diag.cards:
        log(card.to_text())

    result = {
        "dataset": "digits", "student": STUDENT, "seeds": SEEDS, "epochs": epochs,
        "student_ce_top1": base_accs, "rows": rows, "methods": list(methods),
        "diagnostics": diag.files,
        "wall_time_s": time.perf_counter() - t0,
    }
    table = format_table(result)
    log("\n" + table)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", table + "\n")
    log(f"\nwrote {out / 'results.md'} and {out / 'results.json'} ({result['wall_time_s']:.0f}s)")
    return result


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_table(result: dict[str, Any]) -> str:
    methods = result["methods"]
    head = "| teacher | teacher params | teacher top-1 | " + " | ".join(f"student top-1, {m}" for m in methods) + " |"
    sep = "|" + "---|" * (3 + len(methods))
    lines = [
        f"Student {result['student']} on {result['dataset']}, {result['epochs']} epochs, "
        f"mean ± std over seeds {result['seeds']}; student alone (CE): {_ms(result['student_ce_top1'])} %",
        "",
        head,
        sep,
    ]
    for r in result["rows"]:
        cells = [r["teacher"], f"{r['teacher_params']:,d}", f"{r['teacher_top1']:.2f}"] + [_ms(r[m]) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
