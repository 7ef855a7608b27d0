"""A sweep's results, read back from its stage directories: ``results.csv`` (a row per
student run), ``teachers.csv``, ``results.md`` (mean ± std over seeds, best and last
epoch, with the CE baseline), ``student_vs_teacher.png`` and the teachers' diagnostics."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darkknowledge.engine.checkpoint import load_checkpoint
from darkknowledge.experiments.calibration import CALIBRATION_COLUMNS, card_checks, checks_markdown, paired
from darkknowledge.experiments.graph import FileInput, StageRef, StageSpec
from darkknowledge.experiments.kinds import DIAGNOSE_REPORT, Kind
from darkknowledge.experiments.store import FINISHED
from darkknowledge.experiments.sweep import Sweep
from darkknowledge.fileio import atomic_write_bytes, atomic_write_text

RESULT_COLUMNS = [
    "teacher",
    "teacher_params",
    "teacher_top1",
    "method",
    "method_params",
    "seed",
    "best_top1",
    "best_epoch",
    "best_val_top1",
    "last_top1",
    "last_val_top1",
    "last_nll",
    "last_ece",
    "last_rank_fidelity",
    "last_teacher_agreement",
    "wall_time_s",
    "run_dir",
]
TEACHER_COLUMNS = ["teacher", "role", "of", "method", "model", "params", "top1", "val_top1", "checkpoint", "run_dir"]
# language-model sweeps add bits per byte (comparable across tokenizers) beside next-token top-1
LM_RESULT_COLUMNS = ["teacher_bpb", "best_bpb", "best_val_bpb", "last_bpb", "last_val_bpb"]
# ``params`` counts every parameter (shared tensors once: the tied embedding), as trained models do
LM_TEACHER_COLUMNS = ["bpb", "val_bpb", "non_embedding_params"]


@dataclass(frozen=True)
class Headline:
    """The metric the tables, paired comparisons and plot report: test top-1 for classifiers,
    test bits per byte for language models."""

    metric: str  # "top1" or "bpb": the column suffix and the metrics key after "test/"
    title: str
    higher_is_better: bool
    digits: int  # decimals in the tables

    def better(self, difference: float) -> bool:
        return difference > 0 if self.higher_is_better else difference < 0


TOP1 = Headline("top1", "top-1 (%)", True, 2)
BITS_PER_BYTE = Headline("bpb", "bits per byte (lower is better)", False, 3)


def headline_of(students: Sequence[dict[str, Any]], teachers: Sequence[dict[str, Any]] = ()) -> Headline:
    """Bits per byte where any student or teacher row has it (a language-model sweep), else top-1."""
    values = [r.get("last_bpb") for r in students] + [t.get("bpb") for t in teachers]
    return BITS_PER_BYTE if any(v not in (None, "") for v in values) else TOP1


def teacher_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per teacher that exists (here or in the records): params, test and validation
    top-1 of the checkpoint the students use (a pretrained teacher's: of its evaluation stage)."""
    rows = []
    evaluations = {s.meta["teacher"]: s for s in sweep.graph.of_kind(Kind.EVALUATE)}
    for t in sweep.spec.teachers:
        label = t.label or ""
        source = sweep.teacher_inputs[label]
        if isinstance(source, FileInput) and label in evaluations:
            stage = evaluations[label]
            if sweep.state(stage) in FINISHED:
                final = (sweep.store.summary(stage) or {}).get("final", {})
                rows.append({**_stage_row(sweep, label, "teacher", "", "", stage, final), "checkpoint": source.path})
            continue
        if isinstance(source, FileInput):
            rows.append(_checkpoint_row(label, "teacher", "", "", source.path))
            continue
        assert isinstance(source, StageRef)
        stage = source.stage
        if sweep.state(stage) not in FINISHED:
            continue
        if source.output != "last.pt":  # an early-stopped snapshot or best.pt
            path = sweep.store.output(source)
            best = (sweep.store.summary(stage) or {}).get("best") or {}
            if source.output == "best.pt" and best:  # its test metrics: read once after training, in the summary
                rows.append({**_stage_row(sweep, label, "teacher", "", "", stage, best), "checkpoint": str(path)})
            elif path.is_file():
                rows.append(_checkpoint_row(label, "teacher", "", "", str(path)))
            else:  # recorded elsewhere: the epoch's record
                epoch = t.epoch or best.get("epoch", -1) + 1
                record = next((h for h in sweep.store.history(stage) if h["epoch"] == epoch - 1), {})
                rows.append(_stage_row(sweep, label, "teacher", "", "", stage, record))
        else:
            final = (sweep.store.summary(stage) or {}).get("final", {})
            rows.append(_stage_row(sweep, label, "teacher", "", "", stage, final))
    return sorted(rows, key=lambda r: r["params"])


def intermediate_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """TAKD assistants and AID-adapted teachers that finished."""
    return [
        _stage_row(
            sweep,
            s.name,
            s.kind.value,
            s.meta["teacher"],
            s.meta["method"],
            s,
            (sweep.store.summary(s) or {}).get("final", {}),
        )
        for s in sweep.stages()
        if s.kind in (Kind.ASSISTANT, Kind.ADAPTED) and sweep.state(s) in FINISHED
    ]


def _stage_row(
    sweep: Sweep, label: str, role: str, of: str, method: str, stage: StageSpec, metrics: dict[str, Any]
) -> dict[str, Any]:
    summary = sweep.store.summary(stage) or {}
    files = sweep.store.files_dir(stage)
    return {
        "teacher": label,
        "role": role,
        "of": of,
        "method": method,
        "model": summary.get("model"),
        "params": int(summary.get("num_params") or 0),
        "non_embedding_params": summary.get("non_embedding_params") or _non_embedding_params(summary.get("model")),
        **_split_metrics(metrics),
        "checkpoint": str(files / "last.pt"),
        "run_dir": str(files),
    }


def _non_embedding_params(model: Any) -> int | str:
    """The non-embedding parameters of an ``lm_dD_lL`` model (they do not depend on the vocabulary;
    built without memory on the meta device); "" for other models."""
    import re

    if not isinstance(model, str) or not re.fullmatch(r"lm_d\d+_l\d+", model):
        return ""
    import torch

    from darkknowledge.models import build_model
    from darkknowledge.models.lm import lm_parameter_counts

    with torch.device("meta"):
        return lm_parameter_counts(build_model(model, num_classes=16))["non_embedding"]


def _split_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "top1": metrics.get("test/top1"),
        "val_top1": metrics.get("val/top1"),
        "bpb": metrics.get("test/bpb"),
        "val_bpb": metrics.get("val/bpb"),
    }


def _checkpoint_row(label: str, role: str, of: str, method: str, path: str) -> dict[str, Any]:
    """A checkpoint's size and accuracies as recorded when it was written (test top-1 only
    where that epoch was evaluated on the test split)."""
    ckpt = load_checkpoint(path)
    metrics = ckpt.get("metrics") or {}
    return {
        "teacher": label,
        "role": role,
        "of": of,
        "method": method,
        "model": ckpt["model_name"],
        "params": int(ckpt.get("num_params") or 0),
        "non_embedding_params": _non_embedding_params(ckpt["model_name"]),
        **_split_metrics(metrics),
        "checkpoint": path,
        "run_dir": str(Path(path).parent),
    }


def student_rows(sweep: Sweep, teachers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_label = {t["teacher"]: t for t in teachers}
    rows = []
    for s in sweep.stages():
        if s.kind != Kind.STUDENT or sweep.state(s) not in FINISHED:
            continue
        summary = sweep.store.summary(s) or {}
        final, best = summary.get("final", {}), summary.get("best", {})
        t = by_label.get(s.meta["teacher"] or "", {})
        rows.append(
            {
                "teacher": s.meta["teacher"] or "",
                "teacher_params": t.get("params", ""),
                "teacher_top1": t.get("top1", ""),
                "method": s.meta["method"],
                "method_params": json.dumps(s.meta["method_params"], sort_keys=True),
                "seed": s.meta["seed"],
                "best_top1": best.get("test/top1"),
                "best_epoch": best["epoch"] + 1 if "epoch" in best else None,
                "best_val_top1": best.get("val/top1", ""),
                "last_top1": final.get("test/top1"),
                "last_val_top1": final.get("val/top1", ""),
                "last_nll": final.get("test/nll"),
                "last_ece": final.get("test/ece"),
                "last_rank_fidelity": final.get("test/rank_fidelity", ""),
                "last_teacher_agreement": final.get("test/teacher_agreement", ""),
                "teacher_bpb": t.get("bpb", ""),
                "best_bpb": best.get("test/bpb"),
                "best_val_bpb": best.get("val/bpb", ""),
                "last_bpb": final.get("test/bpb"),
                "last_val_bpb": final.get("val/bpb", ""),
                "wall_time_s": summary.get("wall_time_s"),
                "run_dir": str(sweep.store.files_dir(s)),
            }
        )
    return rows


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def mean_std(values: list[float], signed: bool = False, digits: int = 2) -> str:
    if not values:
        return "–"
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.{digits}f} (1 seed)"
    return f"{statistics.mean(values):{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _values(rows: list[dict[str, Any]], column: str, **match: Any) -> list[float]:
    return [float(r[column]) for r in rows if all(r[k] == v for k, v in match.items()) and r[column] not in (None, "")]


def markdown_table(
    sweep: Sweep, teachers: list[dict[str, Any]], students: list[dict[str, Any]], diagnostics: str | None
) -> str:
    spec = sweep.spec
    methods = [m.label for m in spec.methods]
    data = spec.base.get("data", {})
    head = headline_of(students, teachers)
    digits = head.digits
    if head is BITS_PER_BYTE:
        best = (
            "the checkpoint with the lowest validation NLL (the corpus's validation documents), "
            "evaluated once on the test split."
        )
    elif data.get("val_per_class"):
        best = (
            "the checkpoint with the best validation accuracy (`data.val_per_class` held out of training), "
            "evaluated once on the test split."
        )
    else:
        best = (
            "the best epoch on the test split itself (an optimistic, selected number: report it only beside *last*; "
            "set `data.val_per_class` to select on a validation split)."
        )
    lines = [
        f"# Sweep: student {spec.student.model}, {len(teachers)} teachers, methods {', '.join(methods)}",
        "",
        f"Dataset `{data.get('name', 'digits')}`; seeds {spec.seeds}; student {head.title} on the test split, "
        "mean ± std over seeds. *Last* is the final epoch; *best* is " + best,
        "",
    ]
    # language models: capacity is counted without the embedding (the vocabulary's share)
    non_embedding_head = " | non-embedding" if head is BITS_PER_BYTE else ""
    for col, title in ((f"last_{head.metric}", "Last epoch"), (f"best_{head.metric}", "Best epoch")):
        ce = _values(students, col, method="ce")
        lines += [
            f"## {title}",
            "",
            f"Student alone (CE): **{mean_std(ce, digits=digits)}**",
            "",
            f"| teacher | params{non_embedding_head} | teacher {head.metric} | " + " | ".join(methods) + " |",
            "|---|---:|" + "---:|" * (len(methods) + 1 + bool(non_embedding_head)),
        ]
        for t in teachers:
            cells = [mean_std(_values(students, col, teacher=t["teacher"], method=m), digits=digits) for m in methods]
            own = t.get(head.metric)
            own_text = f"{own:.{digits}f}" if isinstance(own, (int, float)) else "–"
            sizes = f"{t['params']:,d}"
            if non_embedding_head:
                count = t.get("non_embedding_params")
                sizes += f" | {count:,d}" if isinstance(count, int) else " | –"
            lines.append(f"| {t['teacher']} | {sizes} | {own_text} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += paired_table(teachers, students, methods, head)
    lines += [
        "Per-run rows: [results.csv](results.csv); teachers: [teachers.csv](teachers.csv); "
        "plot: [student_vs_teacher.png](student_vs_teacher.png)."
    ]
    if diagnostics:
        lines.append(f"Teachers' dark-knowledge diagnostics: [{diagnostics}]({diagnostics}).")
    return "\n".join(lines) + "\n"


def paired_table(
    teachers: list[dict[str, Any]], students: list[dict[str, Any]], methods: list[str], head: Headline = TOP1
) -> list[str]:
    """The last-epoch headline metric minus the CE student's of the same seed (same initialisation
    and batches by construction): mean ± std of the paired differences, and wins out of seeds."""
    column = f"last_{head.metric}"
    if not _values(students, column, method="ce"):
        return []
    lines = [
        "## Paired with the student alone (last epoch)",
        "",
        f"Difference in {head.title} to the CE student of the same seed (same initial weights and batches), "
        "mean ± std over seeds, and how many seeds it beat CE.",
        "",
        "| teacher | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for t in teachers:
        cells = []
        for m in methods:
            diffs = paired(students, (t["teacher"], m), ("", "ce"), column)
            wins = sum(head.better(d) for d in diffs)
            text = mean_std(diffs, signed=True, digits=head.digits).replace(" (1 seed)", "")
            cells.append("–" if not diffs else f"{text} ({wins}/{len(diffs)})")
        lines.append(f"| {t['teacher']} | " + " | ".join(cells) + " |")
    return lines + [""]


def plotted_methods(methods: list[Any], teachers: list[dict[str, Any]], students: list[dict[str, Any]]) -> list[str]:
    """Labels of the method entries :func:`plot` draws (see there)."""
    column = f"last_{headline_of(students).metric}"
    measured = {
        m.label: sum(1 for t in teachers if _values(students, column, teacher=t["teacher"], method=m.label))
        for m in methods
    }
    spanning = {m.name for m in methods if measured[m.label] > 1}
    return [
        m.label
        for m in methods
        if measured[m.label] > 1 or (measured[m.label] and (m.name not in spanning or m.assistant or m.adapt))
    ]  # TAKD, AID: a teacher-side step


def capacity_axis(teachers: list[dict[str, Any]], head: Headline) -> tuple[str, str]:
    """The teacher-size column the plot's x axis uses, and its label: language models are sized
    without the embedding (the vocabulary's share), as in the tables, where every teacher has the count."""
    if head is BITS_PER_BYTE and all(isinstance(t.get("non_embedding_params"), int) for t in teachers):
        return "non_embedding_params", "teacher non-embedding parameters"
    return "params", "teacher parameters"


def plot(sweep: Sweep, teachers: list[dict[str, Any]], students: list[dict[str, Any]], path: Path) -> bool:
    """Student headline metric (last epoch, mean ± std) vs teacher parameters; CE as a horizontal band.

    One line per method through the ladder (the first teacher of each size); other teachers
    of the same size (an early-stopped or re-trained variant) are unconnected markers named
    beside them. An entry measured from one teacher only is drawn unless another entry of the
    same method spans several teachers (an ablation variant: left to the tables); entries with
    a teacher-side step (an assistant, an adapted teacher) are always drawn."""
    if not teachers or not students:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from darkknowledge.diagnostics.plots import ladder_positions

    head = headline_of(students, teachers)
    size_key, size_label = capacity_axis(teachers, head)
    ladder, variants = ladder_positions([float(t[size_key]) for t in teachers])
    column = f"last_{head.metric}"

    def point(teacher: str, method: str) -> tuple[float, float] | None:
        v = _values(students, column, teacher=teacher, method=method)
        return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else None

    shown = plotted_methods(sweep.spec.methods, teachers, students)
    height = max(4.2, 1.0 + 0.22 * (len(shown) + 1))
    fig, ax = plt.subplots(figsize=(8.4, height), dpi=120)
    ce = _values(students, column, method="ce")
    if ce:
        mu = statistics.mean(ce)
        sd = statistics.stdev(ce) if len(ce) > 1 else 0.0
        shown_mu = f"{mu:.3f}" if head is BITS_PER_BYTE else f"{mu:.1f}"
        ax.axhspan(mu - sd, mu + sd, color="0.85", label=f"student alone (CE) {shown_mu}")
        ax.axhline(mu, color="0.5", lw=1)
    markers = "osD^v<>p*h"
    for k, m in enumerate(shown):
        line = [(teachers[j][size_key], p) for j in ladder if (p := point(teachers[j]["teacher"], m))]
        marker = markers[k // 10 % len(markers)]
        handle = None
        if line:
            handle = ax.errorbar(
                [x for x, _ in line],
                [p[0] for _, p in line],
                yerr=[p[1] for _, p in line],
                label=m,
                marker=marker,
                capsize=3,
            )
        for j, x in variants:  # beside the ladder point of the same size
            if p := point(teachers[j]["teacher"], m):
                color = handle[0].get_color() if handle else None
                ax.errorbar([x], [p[0]], yerr=[p[1]], fmt="x", color=color, capsize=3, label=None if handle else m)
                ax.annotate(teachers[j]["teacher"], (x, p[0]), fontsize=6, xytext=(3, -3), textcoords="offset points")
    ax.set_xscale("log")
    sizes = [t[size_key] for t in teachers]
    ax.set_xlim(min(sizes) / 1.4, max(sizes) * (1.4 + 0.1 * len(variants)))
    ax.set_xlabel(size_label)
    ax.set_ylabel(f"student {head.title}, last epoch")
    ax.set_title(f"student {sweep.spec.student.model} vs teacher capacity")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def publish_diagnostics(sweep: Sweep) -> str | None:
    """Copy the report of the ladder's diagnose stage (when it ran here) to ``<sweep>/diagnostics``;
    return its path relative to the sweep directory."""
    node = next(iter(sweep.graph.of_kind(Kind.DIAGNOSE)), None)
    if node is None or sweep.state(node) != "done":
        return None
    source = sweep.store.files_dir(node)
    if not (source / DIAGNOSE_REPORT).is_file():
        return None
    target = sweep.out / "diagnostics"
    staging = sweep.out / ".diagnostics.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("stage.json", "result.json", "log.txt", ".lock"))
    if target.is_dir():
        shutil.rmtree(target)
    staging.rename(target)
    return f"diagnostics/{DIAGNOSE_REPORT}"


def card_checks_of(sweep: Sweep, students: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The diagnostics' report cards (from the diagnose stage, here or in its record) checked
    against the measured KD students (needs a method labelled ``kd``)."""
    node = next(iter(sweep.graph.of_kind(Kind.DIAGNOSE)), None)
    if node is None or sweep.state(node) not in FINISHED or not any(m.label == "kd" for m in sweep.spec.methods):
        return []
    cards = (sweep.store.summary(node) or {}).get("cards") or []
    plain = sorted(
        (m for m in sweep.spec.methods if not (m.assistant or m.adapt or m.teachers)), key=lambda m: m.label != m.name
    )
    methods = [(m.label, m.name, {k: v for k, v in m.params().items() if k != "name"}) for m in plain]
    return card_checks(cards, students, methods)


def write_results(sweep: Sweep) -> dict[str, Any]:
    """Write every results file of the sweep from its stages (directories and records); return
    their paths. Refuses a directory that is not the sweep's, like a run does."""
    sweep.prepare_out_dir()
    sweep.write_records()
    teachers = teacher_rows(sweep)
    students = student_rows(sweep, teachers)
    out = sweep.out
    report = publish_diagnostics(sweep)
    lm = headline_of(students, teachers) is BITS_PER_BYTE
    atomic_write_text(out / "results.csv", _csv(students, RESULT_COLUMNS + (LM_RESULT_COLUMNS if lm else [])))
    atomic_write_text(
        out / "teachers.csv",
        _csv(teachers + intermediate_rows(sweep), TEACHER_COLUMNS + (LM_TEACHER_COLUMNS if lm else [])),
    )
    table = markdown_table(sweep, teachers, students, report)
    files = {
        "results_csv": str(out / "results.csv"),
        "teachers_csv": str(out / "teachers.csv"),
        "results_md": str(out / "results.md"),
    }
    checks = card_checks_of(sweep, students)
    if checks:
        table += "\n" + checks_markdown(checks)
        atomic_write_text(
            out / "card_check.csv",
            _csv(
                [{**r, "card_method_params": json.dumps(r["card_method_params"], sort_keys=True)} for r in checks],
                CALIBRATION_COLUMNS,
            ),
        )
        files["card_check_csv"] = str(out / "card_check.csv")
    atomic_write_text(out / "results.md", table)
    if plot(sweep, teachers, students, out / "student_vs_teacher.png"):
        files["plot"] = str(out / "student_vs_teacher.png")
    if report:
        files["diagnostics"] = str(out / report)
    return {"files": files, "table": table, "teachers": teachers, "students": students}
