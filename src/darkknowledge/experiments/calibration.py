"""The teacher report card checked against what a sweep measured.

For every card with a smaller reference teacher, the card's verdict (capacity mismatch
or not) is compared with the measured one: KD from the teacher minus KD from the
reference, paired by student seed (same initial weights and batches). The measured
verdict is "mismatch" when that difference is negative by more than its standard error
(one seed: when it is negative). The card's recommendation (method and parameters) is
checked against plain KD from the same teacher when the sweep ran it. Definitions and
the agreement rate found so far: docs/diagnostics.md ("Calibration").
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from darkknowledge.methods import METHODS

CALIBRATION_COLUMNS = [
    "teacher",
    "reference",
    "card_mismatch",
    "kd_minus_reference",
    "kd_minus_reference_std",
    "seeds",
    "measured_mismatch",
    "agree",
    "card_method",
    "card_method_params",
    "card_label",
    "card_minus_kd",
    "card_minus_kd_std",
    "card_seeds",
]


def paired(
    rows: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str], column: str = "last_top1"
) -> list[float]:
    """Per-seed differences ``a - b`` of ``column``, for (teacher, method) pairs ``a`` and ``b``."""

    def by_seed(teacher: str, method: str) -> dict[Any, float]:
        return {
            r["seed"]: float(r[column])
            for r in rows
            if r["teacher"] == teacher and r["method"] == method and r.get(column) not in (None, "")
        }

    va, vb = by_seed(*a), by_seed(*b)
    return [va[s] - vb[s] for s in sorted(va, key=str) if s in vb]


def measured_mismatch(diffs: list[float]) -> bool | None:
    """Worse than the reference by more than one standard error (None: no paired seeds)."""
    if not diffs:
        return None
    mean = statistics.mean(diffs)
    if len(diffs) == 1:
        return mean < 0
    return mean < 0 and -mean > statistics.stdev(diffs) / math.sqrt(len(diffs))


def resolved_params(name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """A method's full parameters (defaults filled in); None for an unknown method or bad parameters."""
    if name not in METHODS:
        return None
    try:
        return METHODS.get(name).Params(**params).model_dump()
    except Exception:
        return None


def matching_label(methods: list[tuple[str, str, dict[str, Any]]], name: str, params: dict[str, Any]) -> str | None:
    """The first method label (``(label, name, params)``) that runs ``name`` with ``params``
    (after defaults are filled in on both sides)."""
    want = resolved_params(name, params)
    if want is None:
        return None
    for label, m_name, m_params in methods:
        have = resolved_params(m_name, m_params) if m_name == name else None
        if have is not None and all(
            math.isclose(float(v), float(have[k]))
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            else v == have[k]
            for k, v in want.items()
        ):
            return label
    return None


def _mean_std(values: list[float]) -> tuple[float | str, float | str]:
    if not values:
        return "", ""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else "")


def card_checks(
    cards: list[dict[str, Any]],
    students: list[dict[str, Any]],
    methods: list[tuple[str, str, dict[str, Any]]],
    kd_label: str = "kd",
) -> list[dict[str, Any]]:
    """One row per card that has a reference teacher and measured KD students from both."""
    rows = []
    for card in cards:
        teacher, reference = str(card.get("teacher")), card.get("reference")
        if not reference:
            continue
        diffs = paired(students, (teacher, kd_label), (reference, kd_label))
        if not diffs:
            continue
        measured = measured_mismatch(diffs)
        label = matching_label(methods, card["method"], card.get("method_params") or {}) if card.get("method") else None
        gain = paired(students, (teacher, label), (teacher, kd_label)) if label else []
        mean, std = _mean_std(diffs)
        g_mean, g_std = _mean_std(gain)
        rows.append(
            {
                "teacher": teacher,
                "reference": reference,
                "card_mismatch": card.get("mismatch"),
                "kd_minus_reference": mean,
                "kd_minus_reference_std": std,
                "seeds": len(diffs),
                "measured_mismatch": measured,
                "agree": None if card.get("mismatch") is None else card.get("mismatch") == measured,
                "card_method": card["method"],
                "card_method_params": card.get("method_params") or {},
                "card_label": label or "",
                "card_minus_kd": g_mean,
                "card_minus_kd_std": g_std,
                "card_seeds": len(gain),
            }
        )
    return rows


def _signed(mean: float | str, std: float | str, n: int) -> str:
    if mean == "":
        return "not run"
    return f"{mean:+.2f}" + (f" ± {std:.2f}" if std != "" else "") + f" ({n} seed{'s' if n != 1 else ''})"


def checks_markdown(rows: list[dict[str, Any]], kd_label: str = "kd") -> str:
    """The section of results.md: the table and the agreement rate."""
    if not rows:
        return ""
    yes_no = {True: "mismatch", False: "no mismatch", None: "no verdict"}
    lines = [
        "## The report card against the measurements",
        "",
        f"Each teacher's card (diagnostics on the training split) against the sweep: `{kd_label}` from the teacher minus "
        f"`{kd_label}` from the card's smaller reference teacher, paired by seed (last epoch, test top-1). Measured "
        "mismatch: negative by more than one standard error. The card's recommendation is compared with "
        f"`{kd_label}` from the same teacher where the sweep ran it.",
        "",
        f"| teacher | reference | card says | {kd_label}(teacher) − {kd_label}(reference) | measured | agree | card recommends | recommendation − {kd_label} |",
        "|---|---|---|---:|---|---|---|---:|",
    ]
    for r in rows:
        rec = (r["card_method"] or "none (tune)") + (f" ({r['card_label']})" if r["card_label"] else "")
        lines.append(
            f"| {r['teacher']} | {r['reference']} | {yes_no[r['card_mismatch']]} | "
            f"{_signed(r['kd_minus_reference'], r['kd_minus_reference_std'], r['seeds'])} | {yes_no[r['measured_mismatch']]} | "
            f"{ {True: 'yes', False: 'no', None: 'n/a'}[r['agree']] } | {rec} | {_signed(r['card_minus_kd'], r['card_minus_kd_std'], r['card_seeds'])} |"
        )
    judged = [r for r in rows if r["agree"] is not None]
    agree = sum(r["agree"] for r in judged)
    lines += ["", f"Verdicts agreeing with the measurement: **{agree} of {len(judged)}** cards that gave one.", ""]
    return "\n".join(lines)
