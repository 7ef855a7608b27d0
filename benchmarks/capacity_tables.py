"""Tables of docs/results.md from a capacity sweep's results.csv (methods as rows, teachers as columns).

    .venv/bin/python benchmarks/capacity_tables.py docs/capacity/results.csv
    .venv/bin/python benchmarks/capacity_tables.py runs/lm-capacity/results.csv   # language models

Prints, as markdown: the test metric per method and teacher (last epoch and best-on-validation,
mean ± std over seeds); the validation metric of the best epoch (what the defaults were chosen
on); and the paired differences behind the claims (same seed = same initial weights and batches),
among them, where a smaller teacher of the ladder teaches best, every method from the largest
teacher against that best student (does a method close the gap?).
The metric is top-1 (higher is better), or bits per byte (lower is better) for a language-model
sweep (its results.csv has `last_bpb`); every (teacher, method) is also paired with the CE student.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict

from darkknowledge.experiments.calibration import paired as paired_by_seed
from darkknowledge.experiments.results import BITS_PER_BYTE, Headline, headline_of


def mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def signed(values: list[float], head: Headline) -> str:
    """Mean ± std of paired differences, and how many seeds went the better way."""
    if not values:
        return "–"
    digits = head.digits
    sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    sign = ">" if head.higher_is_better else "<"
    return f"{statistics.mean(values):+.{digits}f}{sd} ({sum(map(head.better, values))}/{len(values)} {sign} 0)"


def main(path: str) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"{path}: no student has finished yet")
        return
    head = headline_of(rows)
    lm = head is BITS_PER_BYTE
    metric, name = head.metric, "bits per byte" if lm else "top-1"
    cell: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    teachers: dict[str, int] = {}
    methods: list[str] = []
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
        if r["teacher"]:
            teachers[r["teacher"]] = int(r["teacher_params"] or 0)
        extra = ("last_top1", "last_teacher_agreement") if lm else ()
        for col in (f"last_{metric}", f"best_{metric}", f"best_val_{metric}", f"last_val_{metric}", *extra):
            if r.get(col):
                cell[(r["teacher"], r["method"], col)][r["seed"]] = float(r[col])
    order = sorted(teachers, key=lambda t: (teachers[t], t))

    def values(t: str, m: str, col: str) -> list[float]:
        return list(cell.get((t, m, col), {}).values())

    tables = [
        (f"last_{metric}", f"test {name}, last epoch", head.digits),
        (f"best_{metric}", f"test {name} of the best-on-validation checkpoint", head.digits),
        (f"best_val_{metric}", f"validation {name}, best epoch", head.digits),
    ]
    if lm:  # what the student predicts: its own next-token top-1, and how often that is the teacher's
        tables += [
            ("last_top1", "test next-token top-1 (%), last epoch", 1),
            ("last_teacher_agreement", "test next-token agreement with the teacher (%), last epoch", 1),
        ]
    for col, title, digits in tables:
        print(f"\n#### {title} (mean ± std over seeds)\n")
        print("| method | " + " | ".join(order) + " |")
        print("|---|" + "---:|" * len(order))
        print(
            "| ce (student alone) | "
            + " | ".join([mean_std(values("", "ce", col), digits)] + [""] * (len(order) - 1))
            + " |"
        )
        for m in methods:
            if m == "ce":
                continue
            print(f"| {m} | " + " | ".join(mean_std(values(t, m, col), digits) for t in order) + " |")

    def paired(a: tuple[str, str], b: tuple[str, str]) -> list[float]:
        return paired_by_seed(rows, a, b, f"last_{metric}")

    def diff(values: list[float]) -> str:
        return signed(values, head)

    better = "> 0" if head.higher_is_better else "< 0"
    print(f"\n#### paired differences, test {name}, last epoch (mean ± std over seeds, seeds {better})\n")
    print("| comparison | difference |")
    print("|---|---:|")
    ladder = [t for i, t in enumerate(order) if i == 0 or teachers[t] != teachers[order[i - 1]]]  # first of each size
    spanning = [m for m in methods if m != "ce" and sum(bool(values(t, m, f"last_{metric}")) for t in ladder) > 1]
    for m in spanning:  # neighbouring teachers of the ladder, for every method measured along it
        for i, t in enumerate(ladder[1:], 1):
            if values(t, m, f"last_{metric}"):
                print(f"| {m} from {t} − {m} from {ladder[i - 1]} | {diff(paired((t, m), (ladder[i - 1], m)))} |")
    for t in order:
        base = next(b for b in ladder if teachers[b] == teachers[t])
        if t != base:  # a remedy teacher of the same size (ESKD, RegT): against the plain one
            print(f"| kd from {t} − kd from {base} | {diff(paired((t, 'kd'), (base, 'kd')))} |")
    big = ladder[-1]
    for m in methods:
        if m not in ("ce", "kd") and values(big, m, f"last_{metric}"):
            print(f"| {m} from {big} − kd from {big} | {diff(paired((big, m), (big, 'kd')))} |")
    # where a smaller teacher teaches best (a gap): does a method from the largest close it?
    measured = [(t, m) for t in ladder for m in spanning if values(t, m, f"last_{metric}")]
    pick = max if head.higher_is_better else min
    best_t, best_m = (
        pick(measured, key=lambda tm: statistics.mean(values(*tm, f"last_{metric}"))) if measured else (big, "")
    )
    if best_t != big:
        for m in methods:
            if m != "ce" and values(big, m, f"last_{metric}"):
                label = f"{m} from {big} − {best_m} from {best_t} (the best student of the ladder)"
                print(f"| {label} | {diff(paired((big, m), (best_t, best_m)))} |")
    if lm:  # every distilled student against the student alone
        for t in order:
            for m in methods:
                if m != "ce" and values(t, m, f"last_{metric}"):
                    print(f"| {m} from {t} − ce | {diff(paired((t, m), ('', 'ce')))} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/capacity/results.csv")
