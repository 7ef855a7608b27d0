"""Can a report-card rule predict capacity mismatch out of sample? Leave-one-ladder-out over the
recorded teacher ladders.

A *pair* is two adjacent teachers of a ladder; it shows a measured mismatch when KD from the larger
teacher is worse than KD from the smaller one by more than one standard error (paired by seed;
``measured_mismatch`` of a sweep's card_check.csv). A rule sees only the teachers' diagnostics
(teacher_stats.csv): here every single-feature threshold rule — feature, direction and threshold —
fitted on the other ladders by balanced accuracy. The constant "no mismatch" is the baseline.

    .venv/bin/python benchmarks/card_rule_loo.py \\
        --ladder protocol=docs/capacity/diagnostics/teacher_stats.csv,docs/capacity/card_check.csv \\
        --ladder explore2=docs/capacity/explore2_teacher_stats.csv,docs/capacity/explore2_card_check.csv \\
        --ladder explore4=docs/capacity/explore4_teacher_stats.csv,docs/capacity/explore4_card_check.csv \\
        --out docs/capacity/card_rule_loo
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

TEMPERATURE = 4.0  # the KD temperature of the measured students
FEATURES = {
    "variance_ratio_T4": "non-target variance at T = 4, larger / smaller teacher",
    "target_prob_T1": "mean target probability of the larger teacher at T = 1",
    "target_prob_gain_T1": "its mean target probability minus the smaller teacher's, at T = 1",
}


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _stat(stats: list[dict[str, str]], model: str, column: str, temperature: float) -> float:
    rows = [r for r in stats if r["model"] == model and r.get("role", "teacher") == "teacher"]
    if not rows:
        raise SystemExit(f"error: no teacher {model!r} in the statistics")
    row = min(rows, key=lambda r: abs(float(r["temperature"]) - temperature))
    return float(row[column])


def ladder_pairs(name: str, stats_csv: str, check_csv: str) -> list[dict[str, Any]]:
    stats = _rows(stats_csv)
    pairs = []
    for check in _rows(check_csv):
        big, small = check["teacher"], check["reference"]
        pairs.append(
            {
                "ladder": name,
                "teacher": big,
                "reference": small,
                "mismatch": check["measured_mismatch"] == "True",
                "kd_minus_reference": float(check["kd_minus_reference"]),
                "variance_ratio_T4": _stat(stats, big, "nt_var", TEMPERATURE)
                / _stat(stats, small, "nt_var", TEMPERATURE),
                "target_prob_T1": _stat(stats, big, "target_prob", 1.0),
                "target_prob_gain_T1": _stat(stats, big, "target_prob", 1.0) - _stat(stats, small, "target_prob", 1.0),
            }
        )
    return pairs


def scores(truth: list[bool], predicted: list[bool]) -> dict[str, float]:
    """Agreement and balanced accuracy (mean of the recall on each class; a class absent from
    ``truth`` leaves the other's recall)."""
    agree = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
    recalls = []
    for cls in (True, False):
        idx = [i for i, t in enumerate(truth) if t == cls]
        if idx:
            recalls.append(sum(predicted[i] == cls for i in idx) / len(idx))
    return {"agreement": agree, "balanced_accuracy": sum(recalls) / len(recalls)}


def fit_rule(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The single-feature threshold rule with the best balanced accuracy on ``pairs`` (ties: the
    higher agreement, then the feature listed first, then the smaller threshold)."""
    truth = [p["mismatch"] for p in pairs]
    best: tuple[tuple[float, float], dict[str, Any]] | None = None
    for feature in FEATURES:
        values = sorted({p[feature] for p in pairs})
        cuts = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]
        for direction in ("below", "above"):
            for cut in cuts:
                predicted = [(p[feature] < cut) if direction == "below" else (p[feature] > cut) for p in pairs]
                s = scores(truth, predicted)
                key = (s["balanced_accuracy"], s["agreement"])
                if best is None or key > best[0]:
                    best = (key, {"feature": feature, "direction": direction, "threshold": cut, **s})
    assert best is not None
    return best[1]


def predict(rule: dict[str, Any], pair: dict[str, Any]) -> bool:
    value = pair[rule["feature"]]
    return value < rule["threshold"] if rule["direction"] == "below" else value > rule["threshold"]


def leave_one_ladder_out(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    ladders = sorted({p["ladder"] for p in pairs})
    rows, fitted, constant = [], [], []
    for held in ladders:
        train = [p for p in pairs if p["ladder"] != held]
        rule = fit_rule(train)
        for p in (p for p in pairs if p["ladder"] == held):
            rows.append(
                {
                    **p,
                    "rule": f"{rule['feature']} {rule['direction']} {rule['threshold']:.4g}",
                    "predicted": predict(rule, p),
                }
            )
            fitted.append(rows[-1]["predicted"])
            constant.append(False)
    truth = [r["mismatch"] for r in rows]
    return {
        "ladders": ladders,
        "pairs": len(rows),
        "mismatches": sum(truth),
        "fitted_rule": scores(truth, fitted),
        "constant_no_mismatch": scores(truth, constant),
        "in_sample_rule": fit_rule(pairs),
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    f, c, r = result["fitted_rule"], result["constant_no_mismatch"], result["in_sample_rule"]
    lines = [
        "# Does a report-card rule predict capacity mismatch? (leave one ladder out)",
        "",
        "Generated by `benchmarks/card_rule_loo.py` (its docstring has the command).",
        f"Ladders: {', '.join(result['ladders'])}; {result['pairs']} adjacent teacher pairs, "
        f"{result['mismatches']} with a measured mismatch.",
        "",
        "| rule | agreement | balanced accuracy |",
        "|---|---:|---:|",
        f"| best single-feature threshold, fitted on the other ladders | {f['agreement']:.2f} | {f['balanced_accuracy']:.2f} |",
        f'| constant "no mismatch" | {c["agreement"]:.2f} | {c["balanced_accuracy"]:.2f} |',
        "",
        f"Fitted on all ladders (in sample, for reference): `{r['feature']} {r['direction']} {r['threshold']:.4g}`, "
        f"agreement {r['agreement']:.2f}, balanced accuracy {r['balanced_accuracy']:.2f}.",
        "",
        "| ladder | teacher / reference | measured | KD(teacher) − KD(reference) | variance ratio T=4 | "
        "p_target T=1 | rule fitted without this ladder | predicted |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['ladder']} | {row['teacher']} / {row['reference']} | {'mismatch' if row['mismatch'] else 'none'} | "
            f"{row['kd_minus_reference']:+.2f} | {row['variance_ratio_T4']:.2f} | {row['target_prob_T1']:.2f} | "
            f"`{row['rule']}` | {'mismatch' if row['predicted'] else 'none'} |"
        )
    beats = f["balanced_accuracy"] > c["balanced_accuracy"] and f["agreement"] >= c["agreement"]
    lines += [
        "",
        "Verdict for the card: "
        + (
            "the fitted rule beats the constant out of sample."
            if beats
            else "no fitted rule beats the constant out of sample, so the card gives no verdict: it reports the "
            "measurements and points to `darkknowledge tune`."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ladder", action="append", required=True, metavar="NAME=STATS_CSV,CHECK_CSV")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    pairs = []
    for item in args.ladder:
        name, _, files = item.partition("=")
        stats_csv, _, check_csv = files.partition(",")
        pairs += ladder_pairs(name, stats_csv, check_csv)
    result = leave_one_ladder_out(pairs)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    assert all(math.isfinite(p["variance_ratio_T4"]) for p in pairs)


if __name__ == "__main__":
    main()
