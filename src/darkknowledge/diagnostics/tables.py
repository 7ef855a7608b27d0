"""The diagnostics' CSV tables (``model_summary.csv``, ``teacher_stats.csv``,
``tau_star_hist.csv``, ``rank_<metric>.csv``, ``angles.csv``, ``decompositions.csv``)
and the number formatting shared with the HTML page."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from darkknowledge.diagnostics.result import DiagnosticsResult
from darkknowledge.diagnostics.stats import PER_TEMPERATURE_KEYS, TeacherStats

# the per-temperature statistics, in the order of the CSV columns
STAT_COLUMNS = PER_TEMPERATURE_KEYS


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (_num(v) if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else repr(float(x))


def format_value(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


def model_roles(result: DiagnosticsResult) -> list[tuple[str, TeacherStats]]:
    return [("teacher", s) for s in result.teachers] + [("student", s) for s in result.students]


def summary_rows(result: DiagnosticsResult) -> tuple[list[str], list[list[Any]]]:
    header = [
        "model", "role", "num_params", "num_samples", "num_classes", "top1", "top5", "logit_std",
        "tau_star_mean", "tau_star_median", "tau_star_q05", "tau_star_q95", "tau_star_frac_at_min",
        "tau_star_frac_at_max", "tau_star_undefined", "tau_star_median_correct", "tau_star_frac_at_min_correct",
        "intra_angle_deg", "inter_angle_deg",
    ]  # fmt: skip
    rows = []
    for role, s in model_roles(result):
        t = s.tau_star or {}
        g = result.geometry.get(s.name)
        rows.append(
            [
                s.name,
                role,
                s.num_params,
                s.num_samples,
                s.num_classes,
                s.top1,
                s.top5,
                s.logit_std,
                t.get("mean"),
                t.get("median"),
                t.get("q05"),
                t.get("q95"),
                t.get("frac_at_min"),
                t.get("frac_at_max"),
                t.get("num_undefined"),
                t.get("median_correct"),
                t.get("frac_at_min_correct"),
                g.intra_angle if g else None,
                g.inter_angle if g else None,
            ]  # fmt: skip
        )
    return header, rows


def stats_rows(result: DiagnosticsResult) -> tuple[list[str], list[list[Any]]]:
    header = ["model", "role", "num_params", "temperature", *STAT_COLUMNS]
    rows = []
    for role, s in model_roles(result):
        for r in s.per_temperature:
            rows.append([s.name, role, s.num_params, r["temperature"], *[r[k] for k in STAT_COLUMNS]])
    return header, rows


def decomposition_rows(result: DiagnosticsResult) -> tuple[list[str], list[list[Any]]]:
    header = [
        "teacher", "student", "temperature", "student_temperature_ats", "num_samples",
        "ats_correct_guidance", "ats_smoothing", "ats_discriminability", "ats_soft_ce",
        "dkd_tckd", "dkd_nckd", "dkd_weight", "dkd_weighted_nckd", "dkd_kd",
        "aid_inter", "aid_intra", "aid_kd", "aid_batch_size",
    ]  # fmt: skip
    rows = []
    for d in result.decompositions:
        rows.append(
            [
                d.teacher,
                d.student,
                d.temperature,
                d.student_temperature,
                d.num_samples,
                d.ats["correct_guidance"],
                d.ats["smoothing"],
                d.ats["discriminability"],
                d.ats["soft_ce"],
                d.dkd["tckd"],
                d.dkd["nckd"],
                d.dkd["weight"],
                d.dkd["weighted_nckd"],
                d.dkd["kd"],
                d.aid["inter"],
                d.aid["intra"],
                d.aid["kd"],
                d.aid_batch_size,
            ]  # fmt: skip
        )
    return header, rows


def csv_tables(result: DiagnosticsResult) -> dict[str, tuple[str, str]]:
    """The CSV tables of ``result``: ``{key: (file name, text)}``."""
    tables: dict[str, tuple[str, str]] = {}

    def put(key: str, name: str, text: str) -> None:
        tables[key] = (name, text)

    h, rows = summary_rows(result)
    put("model_summary_csv", "model_summary.csv", _csv_text(h, rows))
    h, rows = stats_rows(result)
    put("teacher_stats_csv", "teacher_stats.csv", _csv_text(h, rows))
    hist_rows = []
    for _, s in model_roles(result):
        if s.tau_star:
            e, cnt = s.tau_star["hist_edges"], s.tau_star["hist_counts"]
            hist_rows += [[s.name, e[i], e[i + 1], cnt[i]] for i in range(len(cnt))]
    if hist_rows:
        put("tau_star_hist_csv", "tau_star_hist.csv", _csv_text(["model", "bin_low", "bin_high", "count"], hist_rows))
    if result.ranks is not None:
        for metric, mat in result.ranks.matrices.items():
            put(f"rank_{metric}_csv", f"rank_{metric}.csv", _csv_text(["model", *result.ranks.names],
                [[nm, *row] for nm, row in zip(result.ranks.names, mat)]))  # fmt: skip
    if result.geometry:
        params = {s.name: s.num_params for _, s in model_roles(result)}
        put("angles_csv", "angles.csv", _csv_text(
            ["model", "num_params", "intra_angle_deg", "inter_angle_deg", "num_samples", "num_zero_features"],
            [[k, params.get(k), g.intra_angle, g.inter_angle, g.num_samples, g.num_zero_features]
             for k, g in result.geometry.items()]))  # fmt: skip
    if result.decompositions:
        h, rows = decomposition_rows(result)
        put("decompositions_csv", "decompositions.csv", _csv_text(h, rows))
    return tables
