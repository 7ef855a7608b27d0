"""Tables of docs/results.md from a capacity sweep's results.csv (methods as rows, teachers as columns).

    .venv/bin/python benchmarks/capacity_tables.py docs/capacity/results.csv

Prints, as markdown: test top-1 per method and teacher (last epoch and best-on-validation,
mean ± std over seeds); the validation top-1 of the ablations (what the defaults were chosen
on); and the paired differences behind the claims (same seed = same initial weights and batches).
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict

from darkknowledge.experiments.calibration import paired as paired_by_seed


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def signed(values: list[float]) -> str:
    if not values:
        return "–"
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):+.2f}{sd} ({sum(v > 0 for v in values)}/{len(values)} > 0)"


def main(path: str) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cell: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    teachers: dict[str, int] = {}
    methods: list[str] = []
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
        if r["teacher"]:
            teachers[r["teacher"]] = int(r["teacher_params"] or 0)
        for col in ("last_top1", "best_top1", "best_val_top1", "last_val_top1"):
            if r.get(col):
                cell[(r["teacher"], r["method"], col)][r["seed"]] = float(r[col])
    order = sorted(teachers, key=lambda t: (teachers[t], t))

    def values(t: str, m: str, col: str) -> list[float]:
        return list(cell.get((t, m, col), {}).values())

    for col, title in (
        ("last_top1", "test top-1, last epoch"),
        ("best_top1", "test top-1 of the best-on-validation checkpoint"),
        ("best_val_top1", "validation top-1, best epoch"),
    ):
        print(f"\n#### {title} (mean ± std over seeds)\n")
        print("| method | " + " | ".join(order) + " |")
        print("|---|" + "---:|" * len(order))
        print(
            "| ce (student alone) | " + " | ".join([mean_std(values("", "ce", col))] + [""] * (len(order) - 1)) + " |"
        )
        for m in methods:
            if m == "ce":
                continue
            print(f"| {m} | " + " | ".join(mean_std(values(t, m, col)) for t in order) + " |")

    def paired(a: tuple[str, str], b: tuple[str, str]) -> list[float]:
        return paired_by_seed(rows, a, b, "last_top1")

    print("\n#### paired differences, test top-1, last epoch (mean ± std over seeds, seeds > 0)\n")
    print("| comparison | difference |")
    print("|---|---:|")
    ladder = [t for i, t in enumerate(order) if i == 0 or teachers[t] != teachers[order[i - 1]]]  # first of each size
    for i, t in enumerate(ladder[1:], 1):
        print(f"| kd from {t} − kd from {ladder[i - 1]} | {signed(paired((t, 'kd'), (ladder[i - 1], 'kd')))} |")
    for t in order:
        base = next(b for b in ladder if teachers[b] == teachers[t])
        if t != base:  # a remedy teacher of the same size (ESKD, RegT): against the plain one
            print(f"| kd from {t} − kd from {base} | {signed(paired((t, 'kd'), (base, 'kd')))} |")
    big = ladder[-1]
    for m in methods:
        if m not in ("ce", "kd") and values(big, m, "last_top1"):
            print(f"| {m} from {big} − kd from {big} | {signed(paired((big, m), (big, 'kd')))} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/capacity/results.csv")
